"""Pair sampling: N responses per prompt from one policy, the input of AI preference labeling.

All requests of a chunk (every prompt × N) go to the engine in ONE ``generate`` call; the N copies
of a prompt sit in different rows of the batch, so sampling (temperature > 0) draws them
independently. The seed of each call is derived from (run seed, the chunk's prompt ids), so a rerun
of the same command over the same prompts reproduces the responses for a given engine and batch
size. Finished chunks are appended to ``records.jsonl``; a killed run resumes where it stopped.

Record: ``{"id", "prompt_id", "messages", "responses": [str × N], "finish_reasons", "prompt_truncated",
"model", "engine", "params", "seed", "tokens"}`` — ``messages`` is the prompt conversation;
``prompt_truncated`` says the engine cut its first tokens to fit the model's context (engine option
``on_long="truncate"``). With ``on_long="skip"`` such a prompt gets no record and is listed in
``skipped.jsonl`` and the summary (a rerun tries it again); with ``"error"`` the run stops, naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Sequence

from engines.base import Engine, GenerationParams, PromptTooLongError
from jobs.rundir import RunDir, stable_id
from jobs.runner import BatchResult, EngineSpec, EngineTask, Executor, Progress, note, run_job

from .critique_revision import CHUNK_BATCHES, sampling_identity
from .inputs import PromptItem
from .records import PairRecord

RUN_KIND = "pairs"
log = logging.getLogger(__name__)


def pair_id(prompt_id: str, n: int) -> str:
    return stable_id("pairs", prompt_id, n)


def sample_pairs(engine: Engine, chunk: list[PromptItem], *, n: int, seed: int, params: GenerationParams,
                 system_prompt: str | None) -> BatchResult:
    """One chunk: ``n`` responses for every prompt in ONE ``engine.generate`` call → its pair records.
    Top-level (picklable with ``functools.partial``): it runs wherever the engine lives."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    requests = [system + item.messages for item in chunk for _ in range(n)]
    call_params = dataclasses.replace(params, seed=int(stable_id("pairs-call", seed, [p.id for p in chunk]), 16) % (2**31))
    note(f"sampling {len(requests)} responses")
    try:
        completions = engine.generate(requests, call_params)
    except PromptTooLongError as e:
        raise PromptTooLongError(f"prompt {chunk[e.index // n].id}: {e}", e.index) from None
    if len(completions) != len(requests):
        raise RuntimeError(f"engine {engine.name!r} returned {len(completions)} completions for {len(requests)} requests")
    result = BatchResult([], counts={"completion_tokens": sum(c.completion_tokens for c in completions)})
    for i, item in enumerate(chunk):
        mine = completions[i * n : (i + 1) * n]
        if any(c.finish_reason == "skipped" for c in mine):
            result.skipped.append({"id": item.id, "prompt_tokens": mine[0].prompt_tokens,
                                   "reason": f"too long for the model's context with max_new_tokens={params.max_new_tokens}"})
            continue
        result.records.append(PairRecord(
            id=pair_id(item.id, n),
            prompt_id=item.id,
            messages=item.messages,
            responses=[c.text.strip() for c in mine],
            finish_reasons=[c.finish_reason for c in mine],
            prompt_truncated=any(c.prompt_truncated for c in mine),
            model=engine.model_id,
            engine=engine.name,
            params=sampling_identity(params),
            seed=seed,
            system_prompt=system_prompt,
            tokens={"prompt_tokens": sum(c.prompt_tokens for c in mine),
                    "completion_tokens": sum(c.completion_tokens for c in mine)},
            meta=item.meta or None,
        ).dump())
    return result


def run_pairs(
    prompts: Sequence[PromptItem],
    engine: Engine,
    run_dir,
    *,
    n: int = 2,
    seed: int = 0,
    params: GenerationParams | None = None,
    batch_size: int = 8,
    chunk_size: int | None = None,
    system_prompt: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    input_files: Sequence[str | Path] = (),
    config: dict | None = None,
    executor: Executor | None = None,
    engine_spec: EngineSpec | None = None,
) -> dict:
    """Sample ``n`` responses per prompt into ``run_dir`` (resumable); returns a summary dict.

    ``chunk_size`` prompts (default ``batch_size * 4 // n``, at least 1) make one engine call of
    ``chunk_size * n`` requests. ``system_prompt``, when given, is put before every prompt and
    recorded in the run identity. ``input_files`` (the file(s) the prompts were read from) are
    fingerprinted: a resume after an edit of them is refused. ``config`` (the resolved command
    config) is saved as RUN_DIR/config.yaml. ``executor`` runs the chunks (default: here, on
    ``engine``); a Ray executor builds one engine per worker from ``engine_spec``, and ``engine`` then
    only has to say ``name`` and ``model_id`` (the run identity).
    """
    if n < 2:
        raise ValueError(f"n must be ≥ 2 (a pair needs two responses), got {n}")
    params = params or GenerationParams()
    if params.temperature == 0:
        log.warning("temperature 0 is greedy decoding: the %d responses of a prompt will be identical", n)
    chunk_size = chunk_size or max(1, max(1, batch_size) * CHUNK_BATCHES // n)
    identity = {"model": engine.model_id, "engine": engine.name, "n": n, "seed": seed, "params": sampling_identity(params), "system_prompt": system_prompt}
    rd = RunDir(run_dir, identity, overwrite=overwrite, kind=RUN_KIND, inputs=input_files, config=config)
    start_time = time.monotonic()
    bar = Progress(progress, desc="pairs", unit="prompt")
    task = EngineTask(functools.partial(sample_pairs, n=n, seed=seed, params=params, system_prompt=system_prompt),
                      engine_spec, engine=engine)

    def status(counts: dict) -> str:
        return f"{counts.get('completion_tokens', 0) / max(time.monotonic() - start_time, 1e-9):.1f} tok/s"

    job = run_job(rd, prompts, task, id_of=lambda p: pair_id(p.id, n), chunk_size=chunk_size, progress=bar,
                  status=status, executor=executor, skipped_file=True)
    elapsed = time.monotonic() - start_time
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
