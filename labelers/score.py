"""Direct RLAIF (d-RLAIF): the labeler rates one response from 1 to 10.

    P(i) = softmax over the ten ratings' summed log-probs,  E = Σ i·P(i),  reward = (E − 1)/4.5 − 1

so E = 1 → −1 and E = 10 → +1. The ratings are scored as the strings " 1/10" … " 10/10":
a bare "1" is a prefix of "10" (the digits are separate tokens for many tokenizers), so its
probability would include every "10"; the "/10" ending makes the ten answers disjoint. " 10/10"
is several tokens; score_options sums their log-probs. Under a principle with ``invert: true``
the template asks for 10 = worst, so E is mirrored (11 − E).

:func:`score_responses` is the reusable reward function (PPO imports it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from constitution.schema import Constitution
from generators.engines.base import normalize_logprobs
from generators.rundir import RunDir

from .binary import Standard, single_context, single_identity, standard_for
from .inputs import Single, as_messages, load_singles
from .preference import require_scoring
from .prompts import template_spec

DEFAULT_STANDARD = "Is the reply helpful, honest and harmless?"


def expected_rating(logprobs: Sequence[float], invert: bool = False) -> float:
    """Σ i·P(i) over the normalized probabilities of ratings 1..len(logprobs)."""
    probs = normalize_logprobs(list(logprobs))
    e = sum((i + 1) * p for i, p in enumerate(probs))
    return (len(probs) + 1) - e if invert else e


def rating_to_reward(expected: float) -> float:
    """Map an expected 1–10 rating to [-1, 1]."""
    return (expected - 1.0) / 4.5 - 1.0


def score_details(engine, prompts: Sequence, responses: Sequence[str], standards: Sequence[Standard], *,
                  constitution: Constitution | None = None, template: str = "score") -> list[dict]:
    """For each (prompt, response, standard): logprobs, expected rating, reward; one score_options call."""
    require_scoring(engine)
    spec = template_spec(template, "score")
    if not (len(prompts) == len(responses) == len(standards)):
        raise ValueError(f"got {len(prompts)} prompts, {len(responses)} responses and {len(standards)} standards")
    contexts = [single_context(spec, constitution, engine, as_messages(p, f"prompt {i}"), r, st)
                for i, (p, r, st) in enumerate(zip(prompts, responses, standards))]
    out = []
    for lp, st in zip(engine.score_options(contexts, list(spec.options)), standards):
        e = expected_rating(lp, st.invert)
        out.append({"logprobs": lp, "expected_rating": e, "score": rating_to_reward(e)})
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
) -> dict:
    """Score every single response; write records, exports/scores.* and a summary."""
    from tqdm import tqdm

    from .exports import export_scores

    require_scoring(engine)
    spec = template_spec(template, "score")
    items = load_singles(inputs) if isinstance(inputs, (str, Path)) else list(inputs)
    run = RunDir(run_dir, single_identity("score", spec, constitution, engine, question, seed),
                 overwrite=overwrite, kind="label-score")
    done = run.done_ids()
    todo = [s for s in items if s.id not in done]
    stamp = constitution.stamp() if constitution is not None and not question else {}
    bar = tqdm(total=len(todo), unit="response", desc="scores", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        standards = [standard_for(constitution, question, s.id, seed) for s in batch]
        details = score_details(engine, [s.prompt for s in batch], [s.response for s in batch], standards,
                                constitution=constitution, template=template)
        run.append([{
            "id": s.id, "source_id": s.source_id, "prompt": s.prompt, "response": s.response, **d,
            "principle_ids": [st.id], "inverted": [st.invert], "options": list(spec.options), "template": template,
            "labeler_model": engine.model_id, "engine": engine.name, **stamp, "seed": seed, "source": s.meta,
        } for s, st, d in zip(batch, standards, details)])
        bar.update(len(batch))
    bar.close()
    records = list(run.records())
    summary = {
        "responses": len(records),
        "mean_score": sum(r["score"] for r in records) / len(records) if records else None,
        "exports": export_scores(run.path),
    }
    (run.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
