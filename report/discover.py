"""Find the runs under the folders given to ``cai report`` and say what kind each one is.

A folder is a run when it holds one of the files the stages write:

- ``run.json`` (generate / label runs, and any run made by the job runner): its ``kind``;
- ``summary.json`` with a ``kind`` (e.g. ``eval-winrate``, ``label-eval``), a ``trainer`` (sft, pm, dpo,
  kto) or an ``algo`` (ppo, rloo, grpo);
- ``metrics.jsonl`` of a training run still in progress (no summary yet): the kind is told by its keys;
- a ``cai label eval`` output: a JSON file of its metrics (``agreement_avg``) or a JSONL of its rows
  (``p_first_avg``, ``gold_first``).

A root may itself be a run, a ``cai run`` root (``ROOT/<stage>/``) or any folder of runs; folders are
searched a few levels deep, and a run's own sub-folders (checkpoints, exports) are not searched.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

MAX_DEPTH = 4
SKIP_DIRS = {"checkpoints", "exports", "tensorboard", "wandb", "__pycache__", "node_modules"}
TRAIN_KINDS = ("train-sft", "train-pm", "train-dpo", "train-kto", "train-ppo", "train-rloo", "train-grpo")
ONLINE_ALGOS = ("ppo", "rloo", "grpo")  # `cai train ppo --algo`
EVAL_METRIC_KEYS = ("agreement_avg", "comparisons")


class ReportError(ValueError):
    """Input the report cannot use; the message names the file (and line or key)."""


@dataclass
class Run:
    kind: str
    path: Path
    name: str
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # role → file (label-eval: "metrics", "rows")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ReportError(f"{path}: not UTF-8 (byte {e.start})") from None
    except ValueError as e:
        where = f":{e.lineno}" if hasattr(e, "lineno") else ""
        raise ReportError(f"{path}{where}: not valid JSON: {getattr(e, 'msg', e)}") from None


def read_config(path: Path) -> dict:
    """OUT/config.yaml (the resolved command config) as a dict; {} when absent or unreadable as a mapping."""
    import yaml

    file = path / "config.yaml"
    if not file.exists():
        return {}
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _first_json_line(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    obj = json.loads(line)
                    return obj if isinstance(obj, dict) else None
    except (OSError, ValueError):
        return None
    return None


def _training_kind(path: Path, summary: dict, config: dict) -> str | None:
    if summary.get("trainer") in ("sft", "pm", "dpo", "kto"):
        return "train-" + summary["trainer"]
    if summary.get("algo") in ONLINE_ALGOS:
        return "train-" + summary["algo"]
    metrics = path / "metrics.jsonl"
    if not metrics.exists():
        return None
    keys: set[str] = set()
    with open(metrics, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f):
            if n > 50:
                break
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                keys |= {k.removeprefix("eval_") for k in obj}
    if "reward" in keys and "kl" in keys:
        return "train-" + config["algo"] if config.get("algo") in ONLINE_ALGOS else "train-ppo"
    if keys & {"rewards/desirable", "rewards/undesirable"}:
        return "train-kto"
    if "rewards/chosen" in keys or "rewards/margins" in keys:
        return "train-dpo"
    if keys & {"accuracy", "margin", "mean_margin"}:
        return "train-pm"
    if "loss" in keys:
        return "train-sft"
    return None


def _label_eval_files(path: Path) -> dict[str, Path]:
    """A ``cai label eval`` output in ``path``: its metrics JSON and rows JSONL (either may be absent)."""
    found: dict[str, Path] = {}
    for file in sorted(path.iterdir())[:200]:
        if not file.is_file() or file.stat().st_size > 50_000_000:
            continue
        if file.suffix == ".json" and "metrics" not in found:
            try:
                obj = json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict) and all(k in obj for k in EVAL_METRIC_KEYS):
                found["metrics"] = file
        elif file.suffix == ".jsonl" and "rows" not in found:
            first = _first_json_line(file)
            if first and "p_first_avg" in first and "gold_first" in first:
                found["rows"] = file
    return found


def classify(path: Path, name: str) -> Run | None:
    """The run in ``path`` (None when the folder holds none)."""
    path = Path(path)
    summary_file, manifest = path / "summary.json", path / "run.json"
    summary = read_json(summary_file) if summary_file.exists() else {}
    if not isinstance(summary, dict):
        raise ReportError(f"{summary_file}: expected a JSON object, got {type(summary).__name__}")
    config = read_config(path)
    kind = summary.get("kind") if isinstance(summary.get("kind"), str) else None
    if kind is None and manifest.exists():
        data = read_json(manifest)
        if isinstance(data, dict) and isinstance(data.get("kind"), str):
            kind = data["kind"]
    kind = kind or _training_kind(path, summary, config)
    files: dict[str, Path] = {}
    if kind in (None, "label-eval"):
        files = _label_eval_files(path)
        if files:
            kind = "label-eval"
            if not summary and "metrics" in files:
                summary = read_json(files["metrics"])
    if kind is None:
        return None
    return Run(kind, path, name, summary, config, files)


def discover(roots: Iterable[str | os.PathLike]) -> list[Run]:
    """Every run in or under ``roots`` (each a run, a ``cai run`` root or a folder of runs), in path order."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise ReportError(f"{root}: not a folder (give run directories or a folder holding them)")

        def walk(folder: Path, depth: int) -> None:
            resolved = folder.resolve()
            if resolved in seen:
                return
            seen.add(resolved)
            rel = folder.relative_to(root)
            name = root.name if str(rel) == "." else f"{root.name}/{rel.as_posix()}"
            run = classify(folder, name)
            if run is not None:
                runs.append(run)
                return
            if depth >= MAX_DEPTH:
                return
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir())
            except OSError:
                return
            for child in children:
                if child.name not in SKIP_DIRS and not child.name.startswith("."):
                    walk(child, depth + 1)

        walk(root, 0)
    return runs
