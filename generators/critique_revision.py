"""SL-CAI: initial answer → K × (critique → revision), in one conversation, batched by stage.

For each prompt the model sees one growing conversation (Bai et al. 2022, §3):

    [system prompt]                                  (constitution.system_prompt, if any)
    few-shot exchanges, each as user/assistant turns: prompt, response, critique request, critique,
                                                      revision request, revision
    the real prompt                →  initial answer
    critique request (principle p₁) →  critique        (skipped with revision_only)
    revision request (p₁)           →  revision
    critique request (p₂)           →  critique         … K rounds

Few-shot examples are rendered exactly like the real exchange because small models otherwise lose
track of who is speaking. The principle of each round is drawn at random, weighted by
``principle.weight``, from an RNG seeded by (seed, prompt id, round): the draw is reproducible and
does not depend on batching, chunking or resuming.

Throughput comes from batching BY STAGE: a chunk of prompts goes through the engine one stage at a
time (all initial answers in one ``engine.generate`` call, then all critiques, …), so the number of
engine calls is stages × chunks, never × prompts. Each finished chunk is appended to the run
directory's ``records.jsonl`` (whole lines, fsynced), so a killed run resumes where it stopped.

A conversation too long for the model's context is handled by the engine's ``on_long`` option:
truncated (the record's ``truncated_stages`` names the stages, e.g. ``["critique 1"]``), skipped (no
record; the prompt is listed in ``skipped.jsonl`` and the summary, and tried again on a rerun) or an
error naming the prompt.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from constitution.schema import Constitution, CritiqueRevisionPrinciple
from engines.base import Engine, GenerationParams, PromptTooLongError
from jobs.rundir import RunDir, stable_id
from jobs.runner import (  # noqa: F401  (SKIPPED, write_skipped: re-exported)
    SKIPPED,
    BatchResult,
    EngineSpec,
    EngineTask,
    Executor,
    Progress,
    note,
    run_job,
    write_skipped,
)

from .inputs import PromptItem
from .records import SLCAIRecord

RUN_KIND = "sl-cai"
CHUNK_BATCHES = 4  # a chunk holds this many engine batches: bigger calls, still frequent saves


def draw_principle(constitution: Constitution, seed: int, prompt_id: str, round_index: int) -> CritiqueRevisionPrinciple:
    """The principle for (prompt, round): weighted random draw, seeded so reruns draw the same one."""
    principles = constitution.critique_revision
    rng = random.Random(int(stable_id("principle", seed, prompt_id, round_index), 16))
    return rng.choices(principles, weights=[p.weight for p in principles], k=1)[0]


def few_shot_messages(constitution: Constitution, *, revision_only: bool = False, limit: int | None = None) -> list[dict]:
    """The constitution's few-shot exchanges (the first ``limit``, default all) as earlier
    user/assistant turns, shaped like the real one.

    An example without a ``principle`` is shown with the first principle's requests (some request
    text must stand between the turns, and the first principle is the constitution's headline one).
    """
    messages: list[dict] = []
    for ex in constitution.few_shot[:limit]:
        principle = constitution.critique_principle(ex.principle) if ex.principle else constitution.critique_revision[0]
        messages += [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.response}]
        if not revision_only:
            messages += [{"role": "user", "content": principle.critique}, {"role": "assistant", "content": ex.critique}]
        messages += [{"role": "user", "content": principle.revision}, {"role": "assistant", "content": ex.revision}]
    return messages


def conversation_prefix(constitution: Constitution, *, revision_only: bool = False, few_shot: int | None = None) -> list[dict]:
    """What stands before every real prompt: the system prompt (if any), then the few-shot turns."""
    system = [{"role": "system", "content": constitution.system_prompt}] if constitution.system_prompt else []
    return system + few_shot_messages(constitution, revision_only=revision_only, limit=few_shot)


def sampling_identity(params: GenerationParams) -> dict:
    """The sampling settings that define a dataset (the per-call seed is derived, so it is left out)."""
    return {"max_new_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p, "stop": list(params.stop)}


def sl_cai_identity(constitution: Constitution, engine: Engine, *, rounds: int, revision_only: bool, seed: int,
                    params: GenerationParams, few_shot: int | None = None) -> dict:
    identity = {
        "constitution": constitution.ref,
        "constitution_hash": constitution.content_hash,
        "model": engine.model_id,
        "engine": engine.name,
        "rounds": rounds,
        "revision_only": revision_only,
        "seed": seed,
        "params": sampling_identity(params),
        "few_shot": len(constitution.few_shot[:few_shot]),  # how many examples each conversation shows
    }
    return identity


def stage_params(params: GenerationParams, seed: int, stage: str, ids: Sequence[str]) -> GenerationParams:
    """Params for one engine call, with a seed derived from (run seed, stage, the chunk's prompt ids)."""
    return dataclasses.replace(params, seed=int(stable_id("stage", seed, stage, list(ids)), 16) % (2**31))


@dataclass
class _InFlight:
    """One prompt's state while its chunk moves through the stages."""

    item: PromptItem
    conversation: list[dict]
    initial: str = ""
    initial_finish: str = ""
    rounds: list[dict] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)  # stages whose prompt the engine cut to fit
    skipped: dict | None = None  # why the engine left the prompt out, if it did
    tokens: dict = field(default_factory=lambda: {s: {"prompt_tokens": 0, "completion_tokens": 0} for s in ("initial", "critique", "revision")})


class _Stats:
    def __init__(self):
        self.start = time.monotonic()
        self.completion_tokens = 0
        self.prompt_tokens = 0

    def tokens_per_s(self) -> float:
        return self.completion_tokens / max(time.monotonic() - self.start, 1e-9)


def _run_stage(engine: Engine, jobs: list[_InFlight], params: GenerationParams, stage: str, token_key: str, stats: _Stats, label: str):
    """One batched engine call over the chunk's conversations (the caller has appended the request).
    A prompt the engine truncated or skipped is noted on its job under ``label``."""
    try:
        completions = engine.generate([j.conversation for j in jobs], stage_params(params, params.seed or 0, stage, [j.item.id for j in jobs]))
    except PromptTooLongError as e:
        raise PromptTooLongError(f"prompt {jobs[e.index].item.id} ({label}): {e}", e.index) from None
    if len(completions) != len(jobs):
        raise RuntimeError(f"engine {engine.name!r} returned {len(completions)} completions for {len(jobs)} requests")
    for job, c in zip(jobs, completions):
        job.tokens[token_key]["prompt_tokens"] += c.prompt_tokens
        job.tokens[token_key]["completion_tokens"] += c.completion_tokens
        stats.prompt_tokens += c.prompt_tokens
        stats.completion_tokens += c.completion_tokens
        if c.prompt_truncated:
            job.truncated.append(label)
        if c.finish_reason == "skipped" and job.skipped is None:  # later stages, only longer, are skipped too
            job.skipped = {"id": job.item.id, "stage": label, "prompt_tokens": c.prompt_tokens,
                           "reason": f"too long for the model's context with max_new_tokens={params.max_new_tokens}"}
    return completions


def _process_chunk(constitution, chunk: list[PromptItem], engine, prefix, *, rounds, revision_only, seed, params, stats) -> list[_InFlight]:
    params = dataclasses.replace(params, seed=seed)
    on_stage = note
    jobs = [_InFlight(item=item, conversation=list(prefix) + [dict(m) for m in item.messages]) for item in chunk]

    on_stage("initial answers")
    for job, c in zip(jobs, _run_stage(engine, jobs, params, "initial", "initial", stats, "initial")):
        job.initial, job.initial_finish = c.text.strip(), c.finish_reason
        job.conversation.append({"role": "assistant", "content": job.initial})

    for r in range(rounds):
        principles = [draw_principle(constitution, seed, job.item.id, r) for job in jobs]
        entries = [{"round": r + 1, "principle_id": p.id} for p in principles]
        if not revision_only:
            on_stage(f"critiques (round {r + 1}/{rounds})")
            for job, p in zip(jobs, principles):
                job.conversation.append({"role": "user", "content": p.critique})
            for job, e, p, c in zip(jobs, entries, principles, _run_stage(engine, jobs, params, f"critique-{r}", "critique", stats, f"critique {r + 1}")):
                e.update(critique_request=p.critique, critique=c.text.strip(), critique_finish_reason=c.finish_reason)
                job.conversation.append({"role": "assistant", "content": e["critique"]})
        on_stage(f"revisions (round {r + 1}/{rounds})")
        for job, p in zip(jobs, principles):
            job.conversation.append({"role": "user", "content": p.revision})
        for job, e, p, c in zip(jobs, entries, principles, _run_stage(engine, jobs, params, f"revision-{r}", "revision", stats, f"revision {r + 1}")):
            e.update(revision_request=p.revision, revision=c.text.strip(), revision_finish_reason=c.finish_reason)
            job.conversation.append({"role": "assistant", "content": e["revision"]})
        for job, e in zip(jobs, entries):
            if revision_only:
                e.update(critique_request=None, critique=None, critique_finish_reason=None)
            job.rounds.append(e)
    return jobs


def _record(job: _InFlight, constitution: Constitution, engine: Engine, *, seed: int, params: GenerationParams, revision_only: bool, few_shot: int) -> dict:
    totals = {k: sum(t[k] for t in job.tokens.values()) for k in ("prompt_tokens", "completion_tokens")}
    return SLCAIRecord(
        id=job.item.id,
        prompt=job.item.messages,
        initial_response=job.initial,
        initial_finish_reason=job.initial_finish,
        rounds=job.rounds,
        final_revision=job.rounds[-1]["revision"] if job.rounds else job.initial,
        principle_ids=[r["principle_id"] for r in job.rounds],
        revision_only=revision_only,
        truncated_stages=job.truncated,
        few_shot=few_shot,
        model=engine.model_id,
        engine=engine.name,
        **constitution.stamp(),
        params=sampling_identity(params),
        seed=seed,
        tokens={**job.tokens, "total": totals},
        meta=job.item.meta or None,
    ).dump()


def sl_cai_chunk(engine: Engine, chunk: list[PromptItem], *, constitution: Constitution, prefix: list[dict], rounds: int,
                 revision_only: bool, seed: int, params: GenerationParams, few_shot: int) -> BatchResult:
    """One chunk through every stage → its SL-CAI records (and the prompts the engine skipped).
    Top-level (picklable with ``functools.partial``): it runs wherever the engine lives."""
    stats = _Stats()
    jobs = _process_chunk(constitution, chunk, engine, prefix, rounds=rounds, revision_only=revision_only, seed=seed,
                          params=params, stats=stats)
    return BatchResult([_record(j, constitution, engine, seed=seed, params=params, revision_only=revision_only,
                                few_shot=few_shot) for j in jobs if not j.skipped],
                       [j.skipped for j in jobs if j.skipped],
                       counts={"completion_tokens": stats.completion_tokens, "prompt_tokens": stats.prompt_tokens})


def run_sl_cai(
    constitution: Constitution,
    prompts: Sequence[PromptItem],
    engine: Engine,
    run_dir,
    *,
    rounds: int = 1,
    revision_only: bool = False,
    seed: int = 0,
    params: GenerationParams | None = None,
    batch_size: int = 8,
    chunk_size: int | None = None,
    few_shot: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    input_files: Sequence[str | Path] = (),
    config: dict | None = None,
    executor: Executor | None = None,
    engine_spec: EngineSpec | None = None,
) -> dict:
    """Generate SL-CAI records for ``prompts`` into ``run_dir`` (resumable); returns a summary dict.

    ``chunk_size`` prompts (default ``batch_size * 4``) go through all stages together and are then
    saved; an interrupted run loses at most the chunk in progress. ``few_shot`` uses only the first
    N few-shot examples of the constitution (default all; each costs prompt tokens in every request
    of every stage). ``input_files`` (the file(s) the prompts were read from) are fingerprinted:
    a resume after an edit of them is refused. ``config`` (the resolved command config) is saved as
    RUN_DIR/config.yaml. ``executor`` runs the chunks (default: here, on ``engine``); a Ray executor
    builds one engine per worker from ``engine_spec``, and ``engine`` then only has to say ``name`` and
    ``model_id`` (the run identity). Raises :class:`jobs.rundir.RunDirError` when ``run_dir`` was started with
    other settings or inputs, or is in use by another run.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be ≥ 1, got {rounds}")
    if not constitution.critique_revision:
        raise ValueError(f"constitution {constitution.ref} has no critique_revision principles; SL-CAI needs at least one")
    params = params or GenerationParams()
    chunk_size = chunk_size or max(1, batch_size) * CHUNK_BATCHES
    if few_shot is not None and few_shot < 0:
        raise ValueError(f"few_shot must be ≥ 0, got {few_shot}")
    identity = sl_cai_identity(constitution, engine, rounds=rounds, revision_only=revision_only, seed=seed, params=params, few_shot=few_shot)
    rd = RunDir(run_dir, identity, overwrite=overwrite, kind=RUN_KIND, inputs=input_files, config=config)
    prefix = conversation_prefix(constitution, revision_only=revision_only, few_shot=few_shot)
    start = time.monotonic()
    bar = Progress(progress, desc="sl-cai", unit="prompt")
    task = EngineTask(functools.partial(sl_cai_chunk, constitution=constitution, prefix=prefix, rounds=rounds,
                                        revision_only=revision_only, seed=seed, params=params, few_shot=identity["few_shot"]),
                      engine_spec, engine=engine)

    def status(counts: dict) -> str:
        return f"saved · {counts.get('completion_tokens', 0) / max(time.monotonic() - start, 1e-9):.1f} tok/s"

    job = run_job(rd, prompts, task, chunk_size=chunk_size, progress=bar, status=status, executor=executor, skipped_file=True)
    elapsed = time.monotonic() - start
    completion = job.counts.get("completion_tokens", 0)
    return {
        "run_dir": str(Path(run_dir)),
        "records": str(rd.records_path),
        "prompts": job.items,
        "already_done": job.already_done,
        "generated": job.todo - len(job.skipped),
        "skipped": len(job.skipped),
        "seconds": round(elapsed, 2),
        "completion_tokens": completion,
        "tokens_per_s": round(completion / max(elapsed, 1e-9), 2),
    }
