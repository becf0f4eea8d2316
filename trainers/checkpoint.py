"""Exact-resume checkpoints (model, optimizer, scheduler, RNG, data plan, input fingerprints) and the final model."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trainers.config import CHECKPOINTS_DIR, DATA_FIELDS, PATH_FIELDS, RESUME_NEUTRAL_FIELDS, ConfigError, TrainConfig, config_to_dict
from trainers.plan import StepPlan

# ---------------------------------------------------------------- where checkpoints are


def checkpoint_dir(out: str | Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS_DIR / f"step-{step}"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in OUT/checkpoints (temp dirs are ignored)."""
    root = Path(out) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    found = [(int(p.name[5:]), p) for p in root.iterdir()
             if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit() and (p / "trainer_state.json").exists()]
    return max(found)[1] if found else None


def resume_checkpoint(config: TrainConfig) -> Path | None:
    """The checkpoint to resume from: ``resume="auto"`` → latest in OUT (or None), ``"never"`` → None,
    anything else → that folder (it must exist)."""
    if config.resume == "never":
        return None
    if config.resume == "auto":
        return latest_checkpoint(config.out)
    path = Path(config.resume)
    if not (path / "trainer_state.json").exists():
        raise ConfigError(f"--resume {config.resume}: not a checkpoint folder (no trainer_state.json)")
    return path


# ---------------------------------------------------------------- save and load (exact resume)


def save_checkpoint(out: str | Path, step: int, accelerator, model, optimizer, scheduler, config: TrainConfig,
                    plan: StepPlan, extra: dict[str, Any] | None = None) -> Path | None:
    """Write OUT/checkpoints/step-K atomically (a temp dir renamed into place) and prune old ones.

    Contents: ``model.safetensors`` (the parameters that require grad: all of them, or the LoRA adapter
    and head), ``optimizer.pt`` and ``scheduler.pt`` (state dicts), ``rng.pt`` (python, numpy, torch
    and CUDA generator states; with several processes ``rng.pt`` is rank 0's and ``rng-R.pt`` rank R's),
    ``trainer_state.json`` (step, epoch, data-plan identity, config, ``extra``). Call it on every rank;
    only the main process writes the folder; returns it (None on other processes).
    """
    import torch
    from safetensors.torch import save_file

    target = checkpoint_dir(out, step)
    staging = target.parent / f".rng-step-{step}"  # the other ranks' RNG states, moved in by rank 0
    rank, world = accelerator.process_index, accelerator.num_processes
    if rank > 0:
        staging.mkdir(parents=True, exist_ok=True)
        torch.save(_rng_state(), staging / f"rng-{rank}.pt")
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step}-", dir=target.parent))
    try:
        unwrapped = accelerator.unwrap_model(model)
        weights = {name: p.detach().to("cpu").contiguous() for name, p in unwrapped.named_parameters() if p.requires_grad}
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(), tmp / "rng.pt")
        for other in range(1, world):
            os.replace(staging / f"rng-{other}.pt", tmp / f"rng-{other}.pt")
        state = {
            "step": step,
            "epoch": plan.epoch_of(step),
            "plan": dataclasses.asdict(plan),
            "config": config_to_dict(config),
            "paths": _path_spellings(config_to_dict(config)),
            "inputs": input_fingerprints(config),
            **(extra or {}),
        }
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
        if target.exists():  # a rerun that reached the same step again
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    _prune_checkpoints(Path(out), config.keep_checkpoints)
    return target


def _rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _prune_checkpoints(out: Path, keep: int) -> None:
    root = out / CHECKPOINTS_DIR
    steps = sorted((int(p.name[5:]), p) for p in root.iterdir() if p.name.startswith("step-") and p.name[5:].isdigit())
    for _, path in steps[: max(0, len(steps) - max(keep, 1))]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: str | Path, accelerator, model, optimizer, scheduler, config: TrainConfig,
                    plan: StepPlan) -> dict[str, Any]:
    """Restore a ``save_checkpoint`` folder into (prepared) model, optimizer and scheduler, restore the
    RNG states, and return its trainer_state (``state["step"]`` is the next step to run). Refuses a
    checkpoint whose data plan or training options differ from this run (it would not be a resume)."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    now = config_to_dict(config)
    now_paths, then_paths = _path_spellings(now), {**_path_spellings(state["config"]), **state.get("paths", {})}
    # an option that became repeatable (PPO's --reward: one string → a list) still matches its old one-string form
    then_paths = {k: [v] if isinstance(v, str) and isinstance(now_paths.get(k), list) else v for k, v in then_paths.items()}
    changed = sorted(k for k, v in state["config"].items() if k not in RESUME_NEUTRAL_FIELDS
                     and (then_paths[k] != now_paths[k] if k in now_paths else now.get(k) != v))
    if changed:
        raise ConfigError(f"{path}: options changed since this checkpoint: {', '.join(changed)}; use --no-resume or a new --out")
    inputs = input_fingerprints(config)
    for name, then in state.get("inputs", {}).items():  # old checkpoints have none: nothing to compare
        if name in inputs and inputs[name] != then:
            raise ConfigError(f"{path}: the data file {name} changed since this checkpoint (now {inputs[name]['size']} "
                              f"bytes, was {then['size']}; different content); use --no-resume or a new --out")
    if state["plan"] != dataclasses.asdict(plan):
        raise ConfigError(f"{path}: the training data or batch options changed since this checkpoint "
                         f"(checkpoint plan {state['plan']}, now {dataclasses.asdict(plan)}); use --no-resume or a new --out")
    unwrapped = accelerator.unwrap_model(model)
    weights = load_file(str(path / "model.safetensors"))
    trainable = {name for name, p in unwrapped.named_parameters() if p.requires_grad}
    if set(weights) != trainable:
        raise ConfigError(f"{path}/model.safetensors does not match the model's trainable parameters")
    unwrapped.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    # this rank's RNG states (rank 0's when the checkpoint was written by fewer processes)
    own = path / f"rng-{accelerator.process_index}.pt"
    rng = torch.load(own if accelerator.process_index > 0 and own.exists() else path / "rng.pt", weights_only=True)
    random.setstate(_tuples(rng["python"]))
    kind, keys, *rest = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


def _tuples(value: Any) -> Any:
    """random.setstate wants nested tuples; serialisation may hand back lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# ---------------------------------------------------------------- what a resume compares: path spellings, input fingerprints


def _split_path(value: str) -> tuple[str, Path | None, str]:
    """``(prefix, existing path or None, suffix)`` of a path-valued option: ``pm:``/``ai:`` before the
    path (--reward), ``:WEIGHT`` after it (--data), both kept out of the path."""
    prefix = value[:3] if value[:3] in ("pm:", "ai:") else ""
    rest, suffix = value[len(prefix):], ""
    if not Path(rest).expanduser().exists() and ":" in rest:
        head, _, tail = rest.rpartition(":")
        rest, suffix = (head, ":" + tail) if Path(head).expanduser().exists() else (rest, "")
    path = Path(rest).expanduser()
    return prefix, (path if rest and path.exists() else None), suffix


def _spelling(value: Any) -> Any:
    """An option value with every existing path in it made absolute (symlinks resolved)."""
    if isinstance(value, list):
        return [_spelling(v) for v in value]
    if not isinstance(value, str):
        return value
    prefix, found, suffix = _split_path(value)
    return value if found is None else f"{prefix}{found.resolve()}{suffix}"


def _path_spellings(config: dict[str, Any]) -> dict[str, Any]:
    """The path-valued options of a config dict (PATH_FIELDS) with existing paths made absolute: what a
    resume compares, so ``./d.jsonl`` and ``/abs/d.jsonl`` are the same option."""
    return {k: _spelling(config[k]) for k in PATH_FIELDS if k in config}


def input_fingerprints(config) -> dict[str, dict[str, Any]]:
    """``{resolved path: {"size", "sha256"}}`` of the input data files (and folders) of a config, so a
    resume can tell a data file edited in place from the one the run started with."""
    from trainers.data import DataError, resolve_source

    found: dict[str, dict[str, Any]] = {}
    for name in DATA_FIELDS:
        values = getattr(config, name, None) or []
        for value in values if isinstance(values, list) else [values]:
            path = _split_path(value)[1]
            if path is not None:
                try:  # an export folder: the file the trainer reads from it
                    path = resolve_source(path, config.data_kind) if path.is_dir() and getattr(config, "data_kind", None) else path
                except DataError:
                    pass
                resolved = path.resolve()
                found[str(resolved)] = _fingerprint(resolved, _stat_key(resolved))
    return found


def _stat_key(path: Path) -> tuple:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())


@functools.lru_cache(maxsize=64)
def _fingerprint(path: Path, stat_key: tuple) -> dict[str, Any]:
    """Size and sha256 of a file, or of a folder's files (names and contents); cached per (path, sizes, mtimes)."""
    digest, size = hashlib.sha256(), 0
    for name, _, _ in stat_key:
        file = Path(name)
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


# ---------------------------------------------------------------- the final model


def save_final_model(out: str | Path, accelerator, model, tokenizer, summary: dict[str, Any] | None = None) -> Path:
    """Save the trained model (LoRA merged into the base weights) and its tokenizer into OUT with
    ``save_pretrained`` (safetensors), so ``from_pretrained(OUT)`` loads it; plus ``summary.json``.
    Files are written to a temp dir first and moved in one by one (no half-written weights). Call it on
    every rank; only the main process writes."""
    from accelerate.utils import DistributedType

    out = Path(out)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    # FSDP: the full weights are gathered from the shards (a collective: every rank calls it). Not run here.
    full = accelerator.get_state_dict(model) if accelerator.distributed_type == DistributedType.FSDP else None
    if accelerator.is_main_process:
        if hasattr(unwrapped, "merge_and_unload"):  # peft
            unwrapped = unwrapped.merge_and_unload()
        tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
        try:
            unwrapped.save_pretrained(tmp, safe_serialization=True, state_dict=full)
            tokenizer.save_pretrained(tmp)
            if summary is not None:
                (tmp / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
            for item in tmp.iterdir():
                os.replace(item, out / item.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
