"""`cai eval winrate`: policy B against policy A on the same held-out prompts, judged by the AI labeler
(and optionally a preference model); the arithmetic is in :mod:`pipeline.stats`.

OUT holds one resumable run directory per step (each filled by :func:`jobs.runner.run_job`, so a rerun
continues where it stopped and every input gets exactly one record):

    OUT/a/, OUT/b/   the answers of model A and model B (records: one answer per prompt, with its token count)
    OUT/labels/      a `label preference` run over (prompt, answer A, answer B), both orders
                     (labelers.preference.label_preferences, unchanged)
    OUT/pm/          with --judge-pm: the preference model's scores r_A, r_B (trainers.rewards.PreferenceModelReward)
    OUT/comparisons.jsonl  one line per prompt: both answers and each judge's p = P(B better) and outcome
    OUT/summary.json       win / tie / loss rates with 95 % Wilson intervals, per principle, lengths
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import time
from pathlib import Path

from engines.base import GenerationParams
from jobs.config import ConfigError, save_config
from jobs.rundir import RunDir, RunDirError, stable_id
from jobs.runner import BatchResult, EngineTask, run_job

from .config import WinrateConfig
from .stats import agreement, judge_summary, sigmoid

KIND = "eval-winrate"
OWN = {"a", "b", "labels", "pm", "summary.json", "config.yaml", "comparisons.jsonl"}  # what OUT may hold
TIE_RULE = "tie when |p - 0.5| < tie_margin, p = P(B better than A); win when p > 0.5 otherwise, loss when p < 0.5"


def answer_batch(engine, chunk: list, *, params: GenerationParams, seed: int) -> BatchResult:
    """One greedy (or seeded) answer per prompt of ``chunk`` in one ``engine.generate`` call. Top-level
    so a :class:`~jobs.runner.EngineTask` can carry it."""
    call = dataclasses.replace(params, seed=int(stable_id("eval-answer", seed, [p.id for p in chunk]), 16) % (2**31))
    completions = engine.generate([p.messages for p in chunk], call)
    result = BatchResult([], counts={"completion_tokens": sum(c.completion_tokens for c in completions)})
    for item, comp in zip(chunk, completions, strict=True):
        if comp.finish_reason == "skipped":
            result.skipped.append({"id": item.id, "reason": "too long for the model's context"})
            continue
        result.records.append({"id": item.id, "messages": item.messages, "response": comp.text.strip(),
                               "finish_reason": comp.finish_reason, "prompt_truncated": comp.prompt_truncated,
                               "completion_tokens": comp.completion_tokens, "model": engine.model_id, "engine": engine.name})
    return result


def _policy_engine(c: WinrateConfig, model: str):
    from generators.config import GenerateEngineOptions
    from jobs.options import load_engine_from

    class Policy(GenerateEngineOptions):
        batch_size: int = 8

    return load_engine_from(Policy(model=model, engine=c.engine, base_url=c.base_url, engine_opt=c.engine_opt, device=c.device,
                                   dtype=c.dtype, on_long=c.on_long, trust_remote_code=c.trust_remote_code, batch_size=c.batch_size))


def _judge_engine(c: WinrateConfig):
    from jobs.options import load_engine_from
    from labelers.config import LabelEngineOptions

    return load_engine_from(LabelEngineOptions(labeler_model=c.judge, engine=c.judge_engine, base_url=c.judge_base_url,
                                               engine_opt=c.judge_engine_opt, device=c.device, batch_size=c.judge_batch_size))


def answer(c: WinrateConfig, side: str, model: str, items: list, params: GenerationParams) -> dict[str, dict]:
    """The answers of ``model`` to every prompt, in OUT/<side>/ (resumable); {prompt id: record}."""
    from generators.critique_revision import sampling_identity

    identity = {"side": side, "model": model, "model_digest": _digest(model), "engine": c.engine, "params": sampling_identity(params),
                "seed": c.seed}
    RunDir.check(c.out / side, identity, kind="eval-answers", overwrite=c.overwrite)  # before a model loads
    run = RunDir(c.out / side, identity, overwrite=c.overwrite, kind="eval-answers", inputs=[c.prompts])
    try:
        if run.done_ids() >= {p.id for p in items}:
            return {r["id"]: r for r in run.records()}
    except BaseException:
        run.close()
        raise
    engine = _policy_engine(c, model)
    task = EngineTask(functools.partial(answer_batch, params=params, seed=c.seed), None, engine=engine)
    run_job(run, items, task, chunk_size=c.batch_size, progress=not c.quiet, desc=f"answers {side}", unit="prompt",
            skipped_file=True, close=False)
    try:
        return {r["id"]: r for r in run.records()}
    finally:
        run.close()
        del engine, task
        gc.collect()


def pm_scores(c: WinrateConfig, comparisons: list) -> dict[str, dict]:
    """r_A, r_B and p = σ(r_B − r_A) of the preference model for every comparison, in OUT/pm/ (resumable)."""
    from trainers.rewards import PreferenceModelReward

    identity = {"judge_pm": c.judge_pm, "pm_digest": _digest(c.judge_pm)}
    RunDir.check(c.out / "pm", identity, kind="eval-pm-scores", overwrite=c.overwrite)
    run = RunDir(c.out / "pm", identity, overwrite=c.overwrite, kind="eval-pm-scores")
    state: dict = {}

    def score(batch: list) -> list[dict]:
        if "pm" not in state:
            import torch

            state["pm"] = PreferenceModelReward(c.judge_pm, device="cuda" if torch.cuda.is_available() else "cpu",
                                                batch_size=c.judge_batch_size, trust_remote_code=c.trust_remote_code)
        convs = [x.prompt for x in batch]
        r = state["pm"](convs + convs, [x.response_a for x in batch] + [x.response_b for x in batch])
        n = len(batch)
        return [{"id": x.id, "r_a": r[i], "r_b": r[n + i], "p_b": sigmoid(r[n + i] - r[i]), "pm": c.judge_pm}
                for i, x in enumerate(batch)]

    run_job(run, comparisons, score, chunk_size=c.judge_batch_size, progress=not c.quiet, desc="pm scores", unit="pair", close=False)
    try:
        return {r["id"]: r for r in run.records()}
    finally:
        run.close()


def _digest(model: str) -> str | None:
    """A local model folder's digest (a model retrained at the same path is not mistaken for the old one)."""
    from .state import tree_digest

    return tree_digest(Path(model)) if Path(model).is_dir() else None


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out} is a file, not a folder; use another --out")
    if out.exists():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OWN)
        if foreign:
            raise RunDirError(f"{out} is not empty and is not an eval-winrate folder (it holds {', '.join(foreign[:3])}); "
                              "nothing was changed — use a new or empty --out")


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def run_winrate(c: WinrateConfig) -> dict:
    """Answers of A and B, the labeler's (and PM's) verdicts, OUT/comparisons.jsonl and OUT/summary.json."""
    from constitution.loader import resolve_constitution
    from generators.inputs import read_prompts
    from labelers.inputs import Comparison
    from labelers.preference import combine_orders, label_preferences
    from labelers.records import PreferenceRecord

    start = time.monotonic()
    const = resolve_constitution(c.constitution)
    if not const.feedback:
        raise ConfigError(f"constitution {const.ref} has no feedback principles to judge with")
    ensemble = c.ensemble or len(const.feedback)
    if ensemble > len(const.feedback):
        raise ConfigError(f"--ensemble {ensemble}, but constitution {const.ref} has {len(const.feedback)} feedback principles")
    items = read_prompts(c.prompts)[: c.limit]
    if not items:
        raise ConfigError(f"{c.prompts}: no prompts")
    params = GenerationParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p, seed=c.seed)
    _check_out(c.out)
    c.out.mkdir(parents=True, exist_ok=True)
    save_config(c, c.out / "config.yaml")
    answers = {side: answer(c, side, model, items, params) for side, model in (("a", c.model_a), ("b", c.model_b))}
    both = [p for p in items if p.id in answers["a"] and p.id in answers["b"]]
    comparisons = [Comparison(stable_id("eval-winrate", p.id), p.id, p.messages, answers["a"][p.id]["response"],
                              answers["b"][p.id]["response"]) for p in both]
    judge = _judge_engine(c)
    label_preferences(const, comparisons, judge, c.out / "labels", template=c.template, ensemble=ensemble, seed=c.seed,
                      batch_size=c.judge_batch_size, overwrite=c.overwrite, progress=not c.quiet)
    del judge
    gc.collect()
    labels = _records(c.out / "labels", PreferenceRecord)
    pm = pm_scores(c, comparisons) if c.judge_pm else {}

    rows, lab_p, lab_groups, lab_group_p, pm_p = [], [], [], [], []
    for comp in comparisons:
        rec = labels[comp.id]
        p_b = 1.0 - rec["p_a"]
        per = [1.0 - combine_orders([rec["p_ab"][j]], [rec["p_ba"][j]] if rec.get("p_ba") else None, [rec["inverted"][j]])["p_a"]
               for j in range(len(rec["principle_ids"]))]
        lab_p.append(p_b)
        lab_groups.append(rec["principle_ids"])
        lab_group_p.append(per)
        row = {"id": comp.id, "prompt_id": comp.source_id, "prompt": comp.prompt, "response_a": comp.response_a,
               "response_b": comp.response_b, "principle_ids": rec["principle_ids"], "labeler_p_b": p_b,
               "position_flip": rec.get("position_flip")}
        if pm:
            row.update(pm_r_a=pm[comp.id]["r_a"], pm_r_b=pm[comp.id]["r_b"], pm_p_b=pm[comp.id]["p_b"])
            pm_p.append(pm[comp.id]["p_b"])
        rows.append(row)
    with open(c.out / "comparisons.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    labeler = judge_summary(lab_p, lab_groups, c.tie_margin, lab_group_p)
    flips = [r["position_flip"] for r in rows if r["position_flip"] is not None]
    labeler.update(judge=c.judge, engine=c.judge_engine, template=c.template, ensemble=ensemble,
                   position_flip_rate=_mean([float(x) for x in flips]))
    judges = {"labeler": labeler}
    if pm:
        judges["pm"] = {**judge_summary(pm_p, lab_groups, c.tie_margin), "judge": c.judge_pm,
                        "per_principle_note": "PM verdicts grouped by the principle(s) the labeler used on each comparison"}
    a_rows, b_rows = [answers["a"][p.id] for p in both], [answers["b"][p.id] for p in both]
    summary = {
        "kind": KIND, "n": len(comparisons), "model_a": c.model_a, "model_b": c.model_b, "prompts": str(c.prompts),
        "constitution": const.ref, "constitution_hash": const.content_hash, "tie_margin": c.tie_margin, "tie_rule": TIE_RULE,
        "judges": judges, "judge_agreement": agreement(lab_p, pm_p, c.tie_margin) if pm else None,
        "length": {"a": _mean([r["completion_tokens"] for r in a_rows]), "b": _mean([r["completion_tokens"] for r in b_rows]),
                   "unit": "tokens", "a_chars": _mean([len(r["response"]) for r in a_rows]),
                   "b_chars": _mean([len(r["response"]) for r in b_rows]),
                   "note": "mean completion tokens, each model counted with its own tokenizer; *_chars in characters"},
        "prompts_total": len(items), "prompts_skipped": len(items) - len(both), "seconds": round(time.monotonic() - start, 2),
    }
    (c.out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def _records(run_dir: Path, model) -> dict[str, dict]:
    from jobs.records import read_jsonl, validate

    path = run_dir / RunDir.RECORDS
    out: dict[str, dict] = {}
    for n, rec in read_jsonl(path, error=RunDirError):
        validate(model, rec, f"{path}:{n}", RunDirError)
        out.setdefault(rec["id"], rec)
    return out


def format_summary(s: dict) -> str:
    """A few lines for the terminal."""
    def pct(x):
        return f"{100 * x:.1f}%"

    lines = [f"B = {s['model_b']}  vs  A = {s['model_a']}  on {s['n']} prompts ({s['constitution']})"]
    for name, j in s["judges"].items():
        lo, hi = j["win_ci95"]
        lines.append(f"  {name:8s} ({j['judge']}): B wins {pct(j['win'])} [95% CI {pct(lo)}–{pct(hi)}], "
                     f"ties {pct(j['tie'])}, loses {pct(j['loss'])}")
    if s.get("judge_agreement") is not None:
        lines.append(f"  labeler and PM agree on {pct(s['judge_agreement'])} of the comparisons")
    ln = s["length"]
    if ln["a"] is not None:
        lines.append(f"  mean answer length: A {ln['a']:.1f} tokens ({ln['a_chars']:.0f} chars), B {ln['b']:.1f} tokens "
                     f"({ln['b_chars']:.0f} chars)")
    return "\n".join(lines)
