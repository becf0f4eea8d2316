"""Direct RLAIF (d-RLAIF): the labeler rates one response from 1 to 10.

    P(i) = softmax over the ten ratings' log-probs,  E = Σ i·P(i),  reward = (E − 1)/4.5 − 1

so E = 1 → −1 and E = 10 → +1. A rating is the number the labeler writes after "Rating:", and only
the number is scored: " 1" … " 10" (scoring " 8/10" would weigh each rating by P("/10" | digits),
which the template never asks for and which varies by digit). " 1" is a prefix of " 10" when digits
are separate tokens (SmolLM2, Llama 2, Qwen), so rating 1 is " 1" not followed by "0":

    P(1) = P(" 1") · (1 − P("0" | context + " 1")),   P(i) = P(" i") for i = 2 … 10

When the engine's tokenizer spells " 10" as the tokens of " 1" then "0" (digits as single tokens),
P("0" | context + " 1") = P(" 10") / P(" 1") and costs nothing more; otherwise (a "10" token, after
which "1" + "0" is an unlikely spelling, or an engine without a local tokenizer) "0" is scored after
the context plus " 1", one more row per response. Under a principle with ``invert: true`` the
template asks for 10 = worst, so E is mirrored (11 − E).

:func:`score_responses` is the reusable reward function (PPO imports it).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Sequence

from constitution.schema import Constitution
from engines.base import normalize_logprobs
from jobs.rundir import RunDir
from jobs.runner import EngineSpec, EngineTask, Executor, run_job

from .binary import Standard, check_renders, single_context, single_identity, standard_for
from .inputs import Single, as_messages, load_singles
from .preference import require_scoring
from .prompts import TEMPLATES, TemplateSpec, template_spec
from .records import ScoreRecord

DEFAULT_STANDARD = "Is the reply helpful, honest and harmless?"
RATING_OPTIONS = TEMPLATES["score"].options  # " 1" … " 10", scored right after the template's "Rating:"


def expected_rating(logprobs: Sequence[float], invert: bool = False) -> float:
    """Σ i·P(i) over the normalized probabilities of ratings 1..len(logprobs)."""
    probs = normalize_logprobs(list(logprobs))
    e = sum((i + 1) * p for i, p in enumerate(probs))
    return (len(probs) + 1) - e if invert else e


def rating_logprobs(option_logprobs: Sequence[float], zero_after_one: float) -> list[float]:
    """log P(rating i), i = 1..10, from the log-probs of " 1" … " 10" and of "0" after " 1"."""
    ends = max(-math.expm1(zero_after_one), 1e-300)  # P(" 1" is not followed by "0")
    return [option_logprobs[0] + math.log(ends), *option_logprobs[1:]]


def _ten_is_one_then_zero(engine) -> bool:
    """Whether the engine's tokenizer (if it has one here) spells " 10" as " 1" followed by "0"."""
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is None:
        return False
    ids = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (" 10", " 1", "0")]
    return ids[0] == ids[1] + ids[2]


def rating_to_reward(expected: float) -> float:
    """Map an expected 1–10 rating to [-1, 1]."""
    return (expected - 1.0) / 4.5 - 1.0


def score_details(engine, prompts: Sequence, responses: Sequence[str], standards: Sequence[Standard], *,
                  constitution: Constitution | None = None, template: str = "score") -> list[dict]:
    """For each (prompt, response, standard): rating log-probs, expected rating, reward (one or two score_options calls)."""
    require_scoring(engine)
    spec = template_spec(template, "score")
    if not (len(prompts) == len(responses) == len(standards)):
        raise ValueError(f"got {len(prompts)} prompts, {len(responses)} responses and {len(standards)} standards")
    contexts = [single_context(spec, constitution, engine, as_messages(p, f"prompt {i}"), r, st)
                for i, (p, r, st) in enumerate(zip(prompts, responses, standards))]
    options = engine.score_options(contexts, list(RATING_OPTIONS))
    if _ten_is_one_then_zero(engine):
        zeros = [min(lp[9] - lp[0], 0.0) for lp in options]  # log P(" 10") − log P(" 1")
    else:
        zeros = [z for [z] in engine.score_options([c + RATING_OPTIONS[0] for c in contexts], ["0"])]
    out = []
    for lp, zero, st in zip(options, zeros, standards):
        rating_lp = rating_logprobs(lp, zero)
        e = expected_rating(rating_lp, st.invert)
        out.append({"logprobs": rating_lp, "expected_rating": e, "score": rating_to_reward(e),
                    "option_logprobs": lp, "p_zero_after_one": math.exp(zero)})
    return out


def score_responses(engine, prompts: Sequence, responses: Sequence[str], *, principle: str | None = None,
                    constitution: Constitution | None = None, template: str = "score",
                    batch_size: int = 32) -> list[float]:
    """Rewards in [-1, 1], one per (prompt, response). A prompt is a string or a list of messages.

    The standard is ``principle`` if given, else (with a constitution) its first feedback principle,
    else a generic helpful/honest/harmless question: a reward must not change between calls."""
    if principle is not None:
        standard = Standard("custom", principle)
    elif constitution is not None and constitution.feedback:
        p = constitution.feedback[0]
        standard = Standard(p.id, p.text, p.invert)
    else:
        standard = Standard("default", DEFAULT_STANDARD)
    rewards: list[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        n = len(prompts[chunk])
        rewards += [d["score"] for d in score_details(engine, prompts[chunk], responses[chunk], [standard] * n,
                                                       constitution=constitution, template=template)]
    return rewards


def label_score_batch(engine, batch: list[Single], *, constitution: Constitution | None, question: str | None, spec: TemplateSpec,
                      template: str, seed: int) -> list[dict]:
    """One batch of single responses → records. Top-level (picklable with ``functools.partial``): it runs
    wherever the engine lives (``executor``/``engine_spec`` of the label function)."""
    stamp = constitution.stamp() if constitution is not None and not question else {}
    standards = [standard_for(constitution, question, s.id, seed) for s in batch]
    details = score_details(engine, [s.prompt for s in batch], [s.response for s in batch], standards,
                            constitution=constitution, template=template)
    return [ScoreRecord(
        id=s.id, source_id=s.source_id, prompt=s.prompt, response=s.response, **d,
        principle_ids=[st.id], inverted=[st.invert], options=list(RATING_OPTIONS), template=template,
        labeler_model=engine.model_id, engine=engine.name, **stamp, seed=seed, source=s.meta,
    ).dump() for s, st, d in zip(batch, standards, details)]


def label_scores(
    constitution: Constitution | None,
    inputs: str | Path | Sequence[Single],
    engine,
    run_dir: str | Path,
    *,
    question: str | None = None,
    template: str = "score",
    seed: int = 0,
    batch_size: int = 32,
    overwrite: bool = False,
    progress: bool = True,
    config: dict | None = None,
    executor: Executor | None = None,
    engine_spec: EngineSpec | None = None,
) -> dict:
    """Score every single response; write records, exports/scores.* and a summary (``config``, the
    resolved command config, is saved as RUN_DIR/config.yaml). ``executor`` runs the batches (default: here, on
    ``engine``); a Ray executor builds one engine per worker from ``engine_spec``."""
    from .exports import export_scores

    require_scoring(engine)
    spec = template_spec(template, "score")
    items = load_singles(inputs) if isinstance(inputs, (str, Path)) else list(inputs)
    check_renders(spec, constitution, engine, items, question, seed)

    task = EngineTask(functools.partial(label_score_batch, constitution=constitution, question=question, spec=spec,
                                        template=template, seed=seed), engine_spec, engine=engine)

    run = RunDir(run_dir, {**single_identity("score", spec, constitution, engine, question, seed), "rating": "digits"},
                 overwrite=overwrite, kind="label-score", inputs=[inputs] if isinstance(inputs, (str, Path)) else (),
                 config=config)
    try:
        run_job(run, items, task, chunk_size=batch_size, executor=executor, progress=progress, desc="scores", unit="response", close=False)
        records = list(run.records(ScoreRecord))
        summary = {
            "responses": len(records),
            "mean_score": sum(r["score"] for r in records) / len(records) if records else None,
            "exports": export_scores(run.path),
        }
        (run.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        run.close()
    return summary
