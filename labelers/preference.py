"""AI preference labels from normalized option log-probabilities (RL-CAI / RLAIF).

For one comparison (prompt, response_a, response_b) and one feedback principle, the labeler sees
the template with the two responses as options and scores the option continuations; the label is

    p(first option) = exp(lp_1) / (exp(lp_1) + exp(lp_2))      (lp = summed option log-prob)

Position bias: by default each comparison is scored in both orders —
order AB lists response_a first, order BA lists response_b first — and

    p_a = mean( p_a|AB , p_a|BA ),   p_a|AB = p_ab,   p_a|BA = 1 − p_ba

where ``p_ab`` / ``p_ba`` are the labeler's RAW probabilities of the first-listed option in each
order (so ``p_ba`` is its probability of response_b, which came first in BA). A principle with
``invert: true`` asks for the WORSE response, so its per-order values are 1 − p_ab and p_ba.
``position_flip`` is set when the preferred response changes with the order (the labeler picked
the same position both times). With ``ensemble=K``, K distinct principles are drawn per comparison
(seeded by its id) and the per-order values are averaged over them. With ``cot``, a rationale is
generated first and each per-order value is clamped to ``cot_clamp`` before averaging.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from pathlib import Path
from typing import Sequence

from constitution.schema import Constitution, FeedbackPrinciple
from engines.base import EngineCapabilityError, GenerationParams, normalize_logprobs
from jobs.rundir import RunDir, stable_id
from jobs.runner import EngineSpec, EngineTask, Executor, run_job

from .inputs import Comparison, load_comparisons
from .prompts import TemplateSpec, conversation_text, render_context, template_spec, template_text
from .records import PreferenceRecord

ORDERS = ("ab", "ba")


# ---- pure arithmetic ------------------------------------------------------------------------------


def first_option_probability(logprobs: Sequence[float]) -> float:
    """Normalized probability of the first of two options."""
    return normalize_logprobs(list(logprobs))[0]


def combine_orders(
    p_ab: Sequence[float],
    p_ba: Sequence[float] | None,
    inverted: Sequence[bool],
    clamp: tuple[float, float] | None = None,
) -> dict:
    """Per-principle raw first-option probabilities → the probability that response_a is better.

    Returns p_a_order_ab, p_a_order_ba (None with one order), p_a and position_flip (None with
    one order). ``clamp`` (CoT) bounds every per-principle, per-order value before averaging."""

    def bound(p: float) -> float:
        return min(max(p, clamp[0]), clamp[1]) if clamp else p

    a_ab = [bound(1.0 - p if inv else p) for p, inv in zip(p_ab, inverted, strict=True)]
    p_a_ab = sum(a_ab) / len(a_ab)
    if p_ba is None:
        return {"p_a": p_a_ab, "p_a_order_ab": p_a_ab, "p_a_order_ba": None, "position_flip": None}
    a_ba = [bound(p if inv else 1.0 - p) for p, inv in zip(p_ba, inverted, strict=True)]
    p_a_ba = sum(a_ba) / len(a_ba)
    return {
        "p_a": (p_a_ab + p_a_ba) / 2,
        "p_a_order_ab": p_a_ab,
        "p_a_order_ba": p_a_ba,
        "position_flip": (p_a_ab >= 0.5) != (p_a_ba >= 0.5),
    }


# ---- principles and few-shot examples --------------------------------------------------------------


def _rng(*parts) -> random.Random:
    return random.Random(int(stable_id(*parts), 16))


def draw_principles(constitution: Constitution, key: str, k: int, seed: int) -> list[FeedbackPrinciple]:
    """k distinct feedback principles, drawn by weight without replacement, seeded by ``key``."""
    pool = list(constitution.feedback)
    if not pool:
        raise ValueError(f"constitution {constitution.ref} has no feedback principles to label with")
    if not 1 <= k <= len(pool):
        raise ValueError(f"ensemble={k}, but constitution {constitution.ref} has {len(pool)} feedback principles")
    rng = _rng("principles", seed, key)
    drawn = []
    for _ in range(k):
        pick = rng.choices(range(len(pool)), weights=[p.weight for p in pool])[0]
        drawn.append(pool.pop(pick))
    return drawn


def few_shot_examples(constitution: Constitution | None, key: str, seed: int) -> list[dict]:
    """The constitution's labeling examples, ready for a template. An example without a principle
    gets one drawn for it; its ``answer`` names the better response, so it flips under a drawn
    principle that asks for the worse one (a named principle's answer is taken as written)."""
    if constitution is None:
        return []
    out = []
    for i, ex in enumerate(constitution.labeling_examples):
        answer = ex.answer
        if ex.principle is not None:
            principle = constitution.feedback_principle(ex.principle)
        else:
            principle = draw_principles(constitution, f"{key}/example{i}", 1, seed)[0]
            if principle.invert:
                answer = "B" if answer == "A" else "A"
        out.append({
            "conversation": conversation_text([{"role": "user", "content": ex.prompt}]),
            "principle": principle.text,
            "principle_id": principle.id,
            "response_a": ex.response_a,
            "response_b": ex.response_b,
            "answer": answer,
        })
    return out


def comparison_context(spec: TemplateSpec, constitution: Constitution | None, engine, *, prompt, first: str,
                       second: str, principle_text: str, examples: list[dict], cot: bool = False) -> str:
    return render_context(
        spec, constitution, engine, conversation=conversation_text(prompt), principle=principle_text,
        response_a=first, response_b=second, examples=examples, cot=cot,
    )


# ---- scoring ---------------------------------------------------------------------------------------


def require_scoring(engine) -> None:
    if not getattr(engine, "can_score", False):
        raise EngineCapabilityError(
            f"engine {getattr(engine, 'name', '?')!r} cannot give log-probabilities for {getattr(engine, 'model_id', '?')!r}; "
            "labeling needs them. Use --engine transformers (or vllm), or an OpenAI-compatible server whose "
            "completions endpoint returns logprobs (vLLM, SGLang, llama.cpp server)."
        )


def score_contexts(engine, spec: TemplateSpec, contexts: list[str], *, cot: bool, cot_max_tokens: int,
                   seed: int) -> tuple[list[list[float]], list[str] | None]:
    """Option log-probs for every context (one score_options call); with ``cot``, a greedy
    rationale is generated first and the answer cue appended after it."""
    rationales = None
    if cot:
        stop = [spec.answer_cue.strip()] if spec.answer_cue.strip() else []
        params = GenerationParams(max_new_tokens=cot_max_tokens, temperature=0.0, stop=stop, seed=seed)
        rationales = [c.text.rstrip() for c in engine.generate(contexts, params)]
        contexts = [c + r + spec.answer_cue for c, r in zip(contexts, rationales)]
    return engine.score_options(contexts, list(spec.options)), rationales


def template_identity(spec: TemplateSpec, constitution: Constitution | None) -> str:
    text, _ = template_text(spec.name, constitution)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def label_preference_batch(engine, batch: list[Comparison], *, constitution: Constitution, spec: TemplateSpec, template: str,
                           ensemble: int, orders: Sequence[str], cot: bool, cot_clamp: tuple[float, float],
                           cot_max_tokens: int, seed: int) -> list[dict]:
    """One batch of comparisons → preference records (one score_options call). Top-level (picklable with
    ``functools.partial``): it runs wherever the engine lives."""
    per_pair = ensemble * len(orders)
    contexts, plan = [], []
    for comp in batch:
        principles = draw_principles(constitution, comp.id, ensemble, seed)
        examples = few_shot_examples(constitution, comp.id, seed)
        plan.append(principles)
        for p in principles:
            for order in orders:
                first, second = (comp.response_a, comp.response_b) if order == "ab" else (comp.response_b, comp.response_a)
                contexts.append(comparison_context(spec, constitution, engine, prompt=comp.prompt, first=first,
                                                   second=second, principle_text=p.text, examples=examples, cot=cot))
    logprobs, rationales = score_contexts(engine, spec, contexts, cot=cot, cot_max_tokens=cot_max_tokens, seed=seed)
    records = []
    for n, (comp, principles) in enumerate(zip(batch, plan)):
        rows = range(n * per_pair, (n + 1) * per_pair)
        by_order = {o: [logprobs[r] for r in rows][i :: len(orders)] for i, o in enumerate(orders)}
        raw = {o: [first_option_probability(lp) for lp in by_order[o]] for o in orders}
        inverted = [p.invert for p in principles]
        result = combine_orders(raw["ab"], raw.get("ba"), inverted, cot_clamp if cot else None)
        extra = {}
        if cot:
            chosen_rows = [rationales[r] for r in rows]
            extra = {"cot_rationales": {o: chosen_rows[i :: len(orders)] for i, o in enumerate(orders)},
                     "cot_clamp": list(cot_clamp)}
        records.append(PreferenceRecord(
            id=comp.id, source_id=comp.source_id, prompt=comp.prompt,
            response_a=comp.response_a, response_b=comp.response_b,
            response_indices=list(comp.indices) if comp.indices else None, input_chosen=comp.input_chosen,
            **result, p_ab=raw["ab"], p_ba=raw.get("ba"),
            principle_ids=[p.id for p in principles], inverted=inverted,
            logprobs={o: by_order[o] for o in orders}, options=list(spec.options),
            template=template, labeler_model=engine.model_id, engine=engine.name,
            **constitution.stamp(), seed=seed, source=comp.meta, **extra,
        ).dump())
    return records


def label_preferences(
    constitution: Constitution,
    pairs: str | Path | Sequence[Comparison],
    engine,
    run_dir: str | Path,
    *,
    template: str = "cai_mc",
    ensemble: int = 1,
    both_orders: bool = True,
    cot: bool = False,
    cot_clamp: tuple[float, float] = (0.4, 0.6),
    cot_max_tokens: int = 128,
    seed: int = 0,
    batch_size: int = 32,
    all_pairs: bool = False,
    min_margin: float = 0.0,
    overwrite: bool = False,
    progress: bool = True,
    config: dict | None = None,
    executor: Executor | None = None,
    engine_spec: EngineSpec | None = None,
) -> dict:
    """Label every comparison, append records to RUN_DIR/records.jsonl (resumable), write the
    exports and RUN_DIR/summary.json, and return the summary. ``config`` (the resolved command
    config) is saved as RUN_DIR/config.yaml. ``executor`` runs the batches (default: here, on
    ``engine``); a Ray executor builds one engine per worker from ``engine_spec``."""
    from .exports import export_preferences, preference_summary

    require_scoring(engine)
    spec = template_spec(template, "comparison")
    if not 0.0 <= cot_clamp[0] <= cot_clamp[1] <= 1.0:
        raise ValueError(f"cot_clamp must be two probabilities low ≤ high, got {cot_clamp}")
    draw_principles(constitution, "check", ensemble, seed)  # fails early on a bad ensemble size
    comparisons = load_comparisons(pairs, all_pairs=all_pairs) if isinstance(pairs, (str, Path)) else list(pairs)
    if comparisons:  # a template that cannot render fails here, before the run directory exists
        c = comparisons[0]
        comparison_context(spec, constitution, engine, prompt=c.prompt, first=c.response_a, second=c.response_b,
                           principle_text=constitution.feedback[0].text, examples=few_shot_examples(constitution, c.id, seed),
                           cot=cot)
    identity = {
        **constitution.stamp(), "labeler_model": engine.model_id, "engine": engine.name, "template": template,
        "template_hash": template_identity(spec, constitution), "ensemble": ensemble, "both_orders": both_orders,
        "cot": cot, "cot_clamp": list(cot_clamp) if cot else None, "cot_max_tokens": cot_max_tokens if cot else None,
        "seed": seed,
    }
    orders = ORDERS if both_orders else ORDERS[:1]
    per_pair = ensemble * len(orders)

    task = EngineTask(functools.partial(label_preference_batch, constitution=constitution, spec=spec, template=template,
                                        ensemble=ensemble, orders=orders, cot=cot, cot_clamp=cot_clamp,
                                        cot_max_tokens=cot_max_tokens, seed=seed), engine_spec, engine=engine)

    run = RunDir(run_dir, identity, overwrite=overwrite, kind="label-preference",
                 inputs=[pairs] if isinstance(pairs, (str, Path)) else (), config=config)
    try:
        run_job(run, comparisons, task, chunk_size=max(1, batch_size // per_pair), progress=progress,
                desc="labeling", unit="pair", executor=executor, close=False)
        summary = preference_summary(run.records(PreferenceRecord))
        summary["exports"] = export_preferences(run.path, min_margin=min_margin)
        (run.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        run.close()
    return summary
