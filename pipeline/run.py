"""Carrying out a plan (:mod:`pipeline.state`): each stage's command runs in this process, in
ROOT/<stage>/, and ROOT/pipeline.json is updated before and after every stage, so an interruption at
any moment leaves a state the next `cai run` resumes from."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import typer

from .spec import Stage
from .state import STATE_FILE, Step, load_state, now, save_state, tree_digest

try:
    import fcntl
except ImportError:  # Windows: no locking
    fcntl = None

ACTIVE = ("run", "resume", "rerun")


class StageFailed(RuntimeError):
    def __init__(self, stage: Stage, code: int, message: str):
        super().__init__(message)
        self.stage, self.code = stage, code


def format_plan(steps: list[Step], pipeline: Path, root: Path) -> str:
    width = max(len(s.stage.name) for s in steps)
    cwidth = max(len(s.stage.command.name) for s in steps)
    lines = [f"plan for {pipeline} → {root} ({len(steps)} stages)"]
    for s in steps:
        lines.append(f"  {s.stage.name:<{width}}  {s.stage.command.name:<{cwidth}}  {s.action:<6}  {s.why}")
    return "\n".join(lines)


def lock(root: Path):
    """An exclusive lock on ROOT (ROOT/pipeline.lock) for as long as the returned file stays open."""
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / "pipeline.lock", "a+", encoding="utf-8")
    if fcntl is not None:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise RuntimeError(f"{root} is in use by another `cai run`; wait for it to end or use another --out") from None
    return f


def _clear(folder: Path) -> None:
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder)
    elif folder.exists():
        folder.unlink()


def run_stage(step: Step, root: Path, state: dict, quiet: bool) -> float:
    """Run one stage's command (seconds taken); raises StageFailed."""
    stage = step.stage
    folder = root / stage.name
    if step.action == "rerun":
        _clear(folder)  # the stage's own folder under ROOT: it starts over
    config = stage.config
    if quiet and "quiet" in type(config).model_fields:
        config = config.model_copy(update={"quiet": True})
    consumed = {u: state["stages"][u].get("output") for u in stage.upstream if u in state["stages"]}
    state["stages"][stage.name] = {"command": stage.command.name, "fingerprint": step.fingerprint, "parts": step.parts,
                                   "consumed": consumed, "done": False, "started": now()}
    save_state(root, state)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        stage.command.run(config)
    except typer.Exit as exc:
        if exc.exit_code:
            raise StageFailed(stage, exc.exit_code, f"stage {stage.name!r} ({stage.command.name}) failed") from None
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # an unexpected failure in a command: one line, the state says it resumes
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StageFailed(stage, 1, f"stage {stage.name!r} ({stage.command.name}) failed: {type(exc).__name__}: {first}") from None
    seconds = time.monotonic() - start
    entry = state["stages"][stage.name]
    entry.update(done=True, finished=now(), seconds=round(seconds, 1), output=tree_digest(folder))
    save_state(root, state)
    return seconds


def execute(steps: list[Step], root: Path, *, quiet: bool = False) -> dict:
    """Run the active steps in order; returns {stage: seconds} of those that ran."""
    state = load_state(root)
    timings: dict[str, float] = {}
    for step in steps:
        if step.action not in ACTIVE:
            continue
        typer.echo(f"=== stage {step.stage.name} ({step.stage.command.name}): {step.action} — {step.why}", err=True)
        timings[step.stage.name] = run_stage(step, root, state, quiet)
        typer.echo(f"=== stage {step.stage.name} done in {timings[step.stage.name]:.1f} s", err=True)
    state["last_run"] = {"finished": now(), "seconds": timings}
    save_state(root, state)
    return timings


__all__ = ["ACTIVE", "STATE_FILE", "StageFailed", "execute", "format_plan", "lock"]
