"""What `cai run` remembers between runs (ROOT/pipeline.json) and the plan it makes from it.

Each stage's **fingerprint** is a hash of: its command, its resolved config (transient options such as
``quiet`` left out, paths under ROOT written as ``$ROOT``), the constitution's content hash, the
contents of its external input files, and the fingerprints of the stages it takes outputs from. A
stage is

- ``run``     never started;
- ``skip``    finished with the same fingerprint, and the upstream outputs it read are unchanged on disk;
- ``resume``  started with the same fingerprint but not finished (interrupted): the command resumes
              (generators and labelers from records.jsonl, trainers from their checkpoints);
- ``rerun``   its fingerprint changed (config, constitution, input file, an upstream stage), an
              upstream output changed on disk since it was read, an upstream stage (re)runs, or ``--from``:
              its folder is cleared and it starts over;
- ``keep``    before ``--from`` (used as it is), ``hold`` after ``--until`` (not run).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from jobs.config import config_to_dict

from .spec import Stage

STATE_FILE = "pipeline.json"
_BIG = 16 << 20  # files larger than this are digested by size and mtime, not read


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    st = path.stat()
    if st.st_size > _BIG:
        return f"{st.st_size}:{st.st_mtime_ns}"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def tree_digest(path: Path) -> str | None:
    """Digest of a file, or of every file in a folder (hidden files, locks and checkpoints left out);
    None when it does not exist."""
    if not path.exists():
        return None
    if path.is_file():
        return file_digest(path)
    parts = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if p.is_file() and not any(s.startswith(".") or s in ("lock", "checkpoints", "__pycache__") for s in rel.parts):
            parts.append(f"{rel.as_posix()}={file_digest(p)}")
    return _sha("\n".join(parts).encode())


def canonical_config(stage: Stage, root: Path) -> dict:
    data = config_to_dict(stage.config, resolved=True)
    prefix = str(root.resolve()) + os.sep

    def swap(v):
        if isinstance(v, str):
            return v.replace(prefix, "$ROOT/")
        if isinstance(v, list):
            return [swap(x) for x in v]
        return v

    return {k: swap(v) for k, v in data.items()}


def fingerprint(stage: Stage, root: Path, upstream: dict[str, str]) -> tuple[str, dict]:
    """(fingerprint, what it was made of)."""
    parts = {
        "command": stage.command.name,
        "config": canonical_config(stage, root),
        "constitution_hash": stage.constitution_hash,
        "inputs": {k: tree_digest(Path(v)) for k, v in sorted(stage.inputs.items())},
        "upstream": {name: upstream[name] for name in stage.upstream},
    }
    return _sha(json.dumps(parts, sort_keys=True).encode())[:16], parts


def load_state(root: Path) -> dict:
    path = root / STATE_FILE
    if not path.exists():
        return {"stages": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete it to start the pipeline over") from None
    if not isinstance(state, dict) or not isinstance(state.get("stages"), dict):
        raise ValueError(f"{path} is not a cai run state file; use another --out")
    return state


def save_state(root: Path, state: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, root / STATE_FILE)


@dataclass
class Step:
    stage: Stage
    action: str  # run | skip | resume | rerun | keep | hold
    why: str
    fingerprint: str
    parts: dict


def _changes(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints' parts, in words."""
    out = []
    old_cfg, new_cfg = old.get("config", {}), new.get("config", {})
    keys = [k for k in sorted(set(old_cfg) | set(new_cfg)) if old_cfg.get(k) != new_cfg.get(k)]
    if keys:
        shown = ", ".join(f"{k} {old_cfg.get(k)!r} → {new_cfg.get(k)!r}" for k in keys[:3])
        out.append(f"config changed: {shown}" + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""))
    if old.get("command") != new.get("command"):
        out.append(f"command changed: {old.get('command')} → {new.get('command')}")
    if old.get("constitution_hash") != new.get("constitution_hash"):
        out.append("constitution changed")
    changed = [k for k in set(old.get("inputs", {})) | set(new.get("inputs", {})) if old.get("inputs", {}).get(k) != new.get("inputs", {}).get(k)]
    if changed:
        out.append(f"input changed: {', '.join(sorted(changed))}")
    ups = [k for k in new.get("upstream", {}) if old.get("upstream", {}).get(k) != new["upstream"][k]]
    if ups:
        out.append(f"upstream {', '.join(ups)} changed")
    return out or ["fingerprint changed"]


def plan(stages: list[Stage], root: Path, state: dict, *, from_stage: str | None = None, until: str | None = None) -> list[Step]:
    """One step per stage, in file order (see the module docstring)."""
    names = [s.name for s in stages]
    start = names.index(from_stage) if from_stage else 0
    stop = names.index(until) if until else len(stages) - 1
    fps: dict[str, str] = {}
    digests: dict[str, str | None] = {}  # current digest of each stage folder, computed once
    moving: set[str] = set()  # stages that (re)run in this plan
    steps = []
    for i, stage in enumerate(stages):
        fp, parts = fingerprint(stage, root, fps)
        fps[stage.name] = fp
        old = state["stages"].get(stage.name)
        folder = root / stage.name
        if i < start:
            if not (old and old.get("done")):
                raise ValueError(f"--from {from_stage}: the earlier stage {stage.name!r} has not finished; run without --from first")
            stale = "" if old.get("fingerprint") == fp else " (out of date, kept because of --from)"
            steps.append(Step(stage, "keep", f"before --from {from_stage}{stale}", fp, parts))
            fps[stage.name] = old["fingerprint"]
            continue
        if i > stop:
            steps.append(Step(stage, "hold", f"after --until {until}", fp, parts))
            continue
        upstream_moving = [u for u in stage.upstream if u in moving]
        if i == start and from_stage:
            action, why = ("rerun" if old else "run"), f"--from {from_stage}"
        elif old is None:
            if folder.is_dir() and any(folder.iterdir()):
                raise ValueError(f"{folder} exists but was not made by this pipeline (no entry in {root / STATE_FILE}); "
                                 "move it away or use another --out")
            action, why = "run", "not run yet"
        elif upstream_moving or old.get("fingerprint") != fp:
            reasons = _changes(old.get("parts", {}), parts) if old.get("fingerprint") != fp else []
            if upstream_moving:  # its own changes first, then the upstream stages that run again
                reasons = [r for r in reasons if not r.startswith(("upstream ", "fingerprint "))]
                reasons.append(f"upstream {', '.join(upstream_moving)} (re)runs")
            action, why = "rerun", "; ".join(reasons)
        elif not folder.exists():
            action, why = "run", f"{folder} is missing"
        else:
            consumed = old.get("consumed", {})
            for u in stage.upstream:
                if u not in digests:
                    digests[u] = tree_digest(root / u)
            changed = [u for u in stage.upstream if consumed.get(u) != digests[u]]
            if changed:
                action, why = "rerun", f"output of {', '.join(changed)} changed since this stage read it"
            elif old.get("done"):
                action, why = "skip", f"finished {old.get('finished', '')}, nothing changed".replace(" ,", ",")
            else:
                action, why = "resume", "interrupted; same config"
        if action != "skip":
            moving.add(stage.name)
        steps.append(Step(stage, action, why, fp, parts))
    return steps


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")
