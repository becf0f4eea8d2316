"""Binary AI feedback for KTO: does one response meet a principle?

    p_yes = exp(lp(" Yes")) / (exp(lp(" Yes")) + exp(lp(" No")))

For an ordinary principle the question is "is the reply a good one by this standard?", so
p_desirable = p_yes; for a principle with ``invert: true`` (it asks for the worse response) the
question is "is the reply a bad one?", so p_desirable = 1 − p_yes. label = p_desirable ≥ 0.5,
confidence = max(p_desirable, 1 − p_desirable).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from constitution.schema import Constitution
from engines.base import normalize_logprobs
from jobs.rundir import RunDir
from jobs.runner import EngineSpec, EngineTask, Executor, run_job

from .inputs import Single, load_singles
from .preference import draw_principles, require_scoring, template_identity
from .prompts import TemplateSpec, conversation_text, render_context, template_spec
from .records import BinaryRecord


@dataclass(frozen=True)
class Standard:
    """What a single response is judged against: a constitution principle or the user's own question."""

    id: str
    text: str
    invert: bool = False


def standard_for(constitution: Constitution | None, question: str | None, key: str, seed: int) -> Standard:
    if question:
        return Standard("custom", question, False)
    if constitution is None:
        raise ValueError("pass a constitution or a question to judge responses against")
    p = draw_principles(constitution, key, 1, seed)[0]
    return Standard(p.id, p.text, p.invert)


def single_context(spec: TemplateSpec, constitution, engine, prompt: list[dict], response: str, standard: Standard) -> str:
    return render_context(spec, constitution, engine, conversation=conversation_text(prompt), response=response,
                          principle=standard.text, asks_for_worse=standard.invert, cot=False)


def check_renders(spec: TemplateSpec, constitution, engine, items: Sequence[Single], question, seed: int) -> None:
    """Render the first item: a template that cannot render fails here, before the run directory exists."""
    if items:
        first = items[0]
        single_context(spec, constitution, engine, first.prompt, first.response, standard_for(constitution, question, first.id, seed))


def desirable_probability(logprobs: Sequence[float], invert: bool = False) -> tuple[float, float]:
    """(p_yes, p_desirable) from the log-probs of (" Yes", " No")."""
    p_yes = normalize_logprobs(list(logprobs))[0]
    return p_yes, (1.0 - p_yes if invert else p_yes)


def single_identity(kind: str, spec: TemplateSpec, constitution, engine, question, seed) -> dict:
    return {
        **(constitution.stamp() if constitution is not None and not question else {}),
        "kind": kind, "labeler_model": engine.model_id, "engine": engine.name, "template": spec.name,
        "template_hash": template_identity(spec, constitution), "question": question, "seed": seed,
    }


def label_binary_batch(engine, batch: list[Single], *, constitution: Constitution | None, question: str | None, spec: TemplateSpec,
                       template: str, seed: int) -> list[dict]:
    """One batch of single responses → records. Top-level (picklable with ``functools.partial``): it runs
    wherever the engine lives (``executor``/``engine_spec`` of the label function)."""
    stamp = constitution.stamp() if constitution is not None and not question else {}
    standards = [standard_for(constitution, question, s.id, seed) for s in batch]
    contexts = [single_context(spec, constitution, engine, s.prompt, s.response, st) for s, st in zip(batch, standards)]
    records = []
    for s, st, lp in zip(batch, standards, engine.score_options(contexts, list(spec.options))):
        p_yes, p_good = desirable_probability(lp, st.invert)
        records.append(BinaryRecord(
            id=s.id, source_id=s.source_id, prompt=s.prompt, response=s.response,
            p_yes=p_yes, p_desirable=p_good, label=p_good >= 0.5, confidence=max(p_good, 1 - p_good),
            principle_ids=[st.id], inverted=[st.invert], logprobs=lp, options=list(spec.options),
            template=template, labeler_model=engine.model_id, engine=engine.name, **stamp,
            seed=seed, source=s.meta,
        ).dump())
    return records


def label_binary(
    constitution: Constitution | None,
    inputs: str | Path | Sequence[Single],
    engine,
    run_dir: str | Path,
    *,
    question: str | None = None,
    template: str = "binary",
    seed: int = 0,
    batch_size: int = 32,
    min_margin: float = 0.0,
    overwrite: bool = False,
    progress: bool = True,
    config: dict | None = None,
    executor: Executor | None = None,
    engine_spec: EngineSpec | None = None,
) -> dict:
    """Label every single response desirable/undesirable; write records, exports/kto.* and a summary
    (``config``, the resolved command config, is saved as RUN_DIR/config.yaml). ``executor`` runs the batches (default: here, on
    ``engine``); a Ray executor builds one engine per worker from ``engine_spec``."""
    from .exports import export_kto

    require_scoring(engine)
    spec = template_spec(template, "binary")
    items = load_singles(inputs) if isinstance(inputs, (str, Path)) else list(inputs)
    check_renders(spec, constitution, engine, items, question, seed)

    task = EngineTask(functools.partial(label_binary_batch, constitution=constitution, question=question, spec=spec,
                                        template=template, seed=seed), engine_spec, engine=engine)

    run = RunDir(run_dir, single_identity("binary", spec, constitution, engine, question, seed), overwrite=overwrite,
                 kind="label-binary", inputs=[inputs] if isinstance(inputs, (str, Path)) else (), config=config)
    try:
        run_job(run, items, task, chunk_size=batch_size, executor=executor, progress=progress, desc="binary labels", unit="response", close=False)
        records = list(run.records(BinaryRecord))
        summary = {
            "responses": len(records),
            "desirable": sum(r["label"] for r in records),
            "mean_confidence": sum(r["confidence"] for r in records) / len(records) if records else None,
            "exports": export_kto(run.path, min_margin=min_margin),
        }
        (run.path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        run.close()
    return summary
