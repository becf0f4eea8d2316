"""What the report says about training runs (``metrics.jsonl``, PPO's ``samples.jsonl``) and policy
evaluations (an ``eval-winrate`` run's ``summary.json``)."""

from __future__ import annotations

from typing import Any

from jobs.records import read_jsonl

from . import plots
from .discover import ReportError, Run

# panel title → metric keys drawn in it (the eval_ variant of each key is drawn beside it when logged)
PANELS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "offline": [
        ("loss", ("loss",)),
        ("accuracy", ("accuracy", "rewards/accuracy")),
        ("reward margin", ("margin", "mean_margin", "rewards/margins")),
        ("rewards", ("rewards/chosen", "rewards/rejected", "rewards/desirable", "rewards/undesirable")),
    ],
    "online": [
        ("reward", ("reward",)),
        ("KL(π‖π_ref)", ("kl",)),
        ("entropy", ("entropy",)),
        ("response length (tokens)", ("response_length",)),
    ],
}
SAMPLES_SHOWN = 3  # per logged step kept in the report
SAMPLE_STEPS = 4  # how many steps' samples: first, last and evenly between


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # not NaN


def training_section(run: Run) -> dict:
    metrics_file = run.path / "metrics.jsonl"
    rows = [obj for _, obj in read_jsonl(metrics_file, error=ReportError, torn_tail_ok=True)] if metrics_file.exists() else []
    for n, r in enumerate(rows, 1):
        if not isinstance(r.get("step"), int):
            raise ReportError(f"{metrics_file}:{n}: key 'step': expected an integer, got {r.get('step')!r}")
    online = run.kind in ("train-ppo", "train-rloo", "train-grpo")
    panels = []
    for title, keys in PANELS["online" if online else "offline"]:
        series = {}
        for key in keys:
            for name in (key, "eval_" + key):
                points = [(r["step"], r[name]) for r in rows if _number(r.get(name))]
                if points:
                    series[name] = ([s for s, _ in points], [v for _, v in points])
        if series:
            panels.append((title, series))
    last = {k: v for k, v in (rows[-1] if rows else {}).items() if _number(v)}
    highlights = {k: last[k] for k in ("loss", "accuracy", "rewards/accuracy", "rewards/margins", "margin", "reward", "kl", "entropy",
                                       "response_length") if k in last}
    return {"name": run.name, "kind": run.kind.removeprefix("train-"), "steps": rows[-1]["step"] if rows else 0,
            "model": run.summary.get("model") or run.config.get("model"), "finished": bool(run.summary),
            "chart": plots.curves(panels, title=f"{run.name} ({run.kind.removeprefix('train-')})") if panels else None,
            "last": highlights, "samples": _samples(run) if online else []}


def _samples(run: Run) -> list[dict]:
    """Sample responses over time from OUT/samples.jsonl: a few per step, for a few steps spread over the run."""
    file = run.path / "samples.jsonl"
    if not file.exists():
        return []
    by_step: dict[int, list[dict]] = {}
    for n, obj in read_jsonl(file, error=ReportError, torn_tail_ok=True):
        step = obj.get("step")
        if not isinstance(step, int) or not isinstance(obj.get("response"), str):
            raise ReportError(f"{file}:{n}: expected 'step' (integer) and 'response' (string)")
        by_step.setdefault(step, []).append(obj)
    steps = sorted(by_step)
    if len(steps) > SAMPLE_STEPS:
        steps = sorted({steps[round(i * (len(steps) - 1) / (SAMPLE_STEPS - 1))] for i in range(SAMPLE_STEPS)})
    out = []
    for step in steps:
        for s in by_step[step][:SAMPLES_SHOWN]:
            prompt = s.get("prompt")
            if isinstance(prompt, list):
                prompt = next((m.get("content", "") for m in reversed(prompt) if isinstance(m, dict) and m.get("role") == "user"), "")
            out.append({"step": step, "prompt": str(prompt or ""), "response": s["response"],
                        "score": s.get("score") if _number(s.get("score")) else None})
    return out


# ---- policy evaluation (eval-winrate summary.json) -------------------------------------------------


def _judge(data: Any, where: str, path: str) -> dict:
    if not isinstance(data, dict):
        raise ReportError(f"{where}: {path}: expected an object, got {type(data).__name__}")
    out = {}
    for k in ("win", "tie", "loss"):
        if not _number(data.get(k)):
            raise ReportError(f"{where}: {path}.{k}: expected a rate in [0, 1], got {data.get(k, 'nothing')!r:.60}")
        out[k] = float(data[k])
    ci = data.get("win_ci95")
    if not (isinstance(ci, list) and len(ci) == 2 and all(_number(x) for x in ci)):
        raise ReportError(f"{where}: {path}.win_ci95: expected [low, high], got {ci!r:.60}")
    out["win_ci95"] = [float(ci[0]), float(ci[1])]
    per = data.get("per_principle") or {}
    if not isinstance(per, dict):
        raise ReportError(f"{where}: {path}.per_principle: expected an object of principle id → counts")
    out["per_principle"] = []
    for pid, counts in sorted(per.items()):
        if not isinstance(counts, dict):
            raise ReportError(f"{where}: {path}.per_principle.{pid}: expected an object")
        row = {"principle": pid, "win_ci95": None}
        for k in ("win", "tie", "loss", "n"):
            if not _number(counts.get(k)):
                raise ReportError(f"{where}: {path}.per_principle.{pid}.{k}: expected a number, got {counts.get(k, 'nothing')!r:.40}")
            row[k] = counts[k]
        ci = counts.get("win_ci95")
        if isinstance(ci, list) and len(ci) == 2 and all(_number(x) for x in ci):
            row["win_ci95"] = ci
        out["per_principle"].append(row)
    out["judge"] = str(data.get("judge") or "")
    out["flip_rate"] = data.get("position_flip_rate") if _number(data.get("position_flip_rate")) else None
    return out


def eval_section(run: Run) -> dict:
    """Win / tie / loss of model B over model A per judge, with the 95 % interval, per principle, and lengths."""
    s, where = run.summary, str(run.path / "summary.json")
    judges = s.get("judges")
    if not isinstance(judges, dict) or not judges:
        raise ReportError(f"{where}: judges: expected an object with at least one judge (labeler, pm)")
    parsed = {name: _judge(j, where, f"judges.{name}") for name, j in judges.items()}
    length = s.get("length") if isinstance(s.get("length"), dict) else None
    if length is not None and not all(_number(length.get(k)) for k in ("a", "b")):
        length = None  # no answers compared (every prompt skipped): nothing to say about length
    return {"name": run.name, "n": s.get("n"), "model_a": str(s.get("model_a", "A")), "model_b": str(s.get("model_b", "B")),
            "judges": parsed, "length": length, "constitution": s.get("constitution"),
            "agreement": s.get("judge_agreement") if _number(s.get("judge_agreement")) else None,
            "skipped": s.get("prompts_skipped") if _number(s.get("prompts_skipped")) else 0,
            "chart": plots.win_rates(parsed, title=f"{run.name}: {s.get('model_b', 'B')} vs {s.get('model_a', 'A')}")}
