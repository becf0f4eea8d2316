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
import logging
import time
from pathlib import Path
from typing import Sequence

from .critique_revision import CHUNK_BATCHES, sampling_identity, write_skipped
from engines.base import Engine, GenerationParams, PromptTooLongError
from .inputs import PromptItem
from jobs.rundir import RunDir, stable_id

RUN_KIND = "pairs"
log = logging.getLogger(__name__)


def pair_id(prompt_id: str, n: int) -> str:
    return stable_id("pairs", prompt_id, n)


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
) -> dict:
    """Sample ``n`` responses per prompt into ``run_dir`` (resumable); returns a summary dict.

    ``chunk_size`` prompts (default ``batch_size * 4 // n``, at least 1) make one engine call of
    ``chunk_size * n`` requests. ``system_prompt``, when given, is put before every prompt and
    recorded in the run identity. ``input_files`` (the file(s) the prompts were read from) are
    fingerprinted: a resume after an edit of them is refused.
    """
    from tqdm.auto import tqdm

    if n < 2:
        raise ValueError(f"n must be ≥ 2 (a pair needs two responses), got {n}")
    params = params or GenerationParams()
    if params.temperature == 0:
        log.warning("temperature 0 is greedy decoding: the %d responses of a prompt will be identical", n)
    chunk_size = chunk_size or max(1, max(1, batch_size) * CHUNK_BATCHES // n)
    identity = {"model": engine.model_id, "engine": engine.name, "n": n, "seed": seed, "params": sampling_identity(params), "system_prompt": system_prompt}
    rd = RunDir(run_dir, identity, overwrite=overwrite, kind=RUN_KIND, inputs=input_files)
    done = rd.done_ids()
    todo = [p for p in prompts if pair_id(p.id, n) not in done]
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    start_time = time.monotonic()
    completion_tokens = 0
    skipped: list[dict] = []

    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), unit="prompt", desc="pairs", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            requests = [system + item.messages for item in chunk for _ in range(n)]
            call_params = dataclasses.replace(params, seed=int(stable_id("pairs-call", seed, [p.id for p in chunk]), 16) % (2**31))
            bar.set_postfix_str(f"sampling {len(requests)} responses", refresh=True)
            try:
                completions = engine.generate(requests, call_params)
            except PromptTooLongError as e:
                raise PromptTooLongError(f"prompt {chunk[e.index // n].id}: {e}", e.index) from None
            if len(completions) != len(requests):
                raise RuntimeError(f"engine {engine.name!r} returned {len(completions)} completions for {len(requests)} requests")
            records = []
            for i, item in enumerate(chunk):
                mine = completions[i * n : (i + 1) * n]
                completion_tokens += sum(c.completion_tokens for c in mine)
                if any(c.finish_reason == "skipped" for c in mine):
                    skipped.append({"id": item.id, "prompt_tokens": mine[0].prompt_tokens,
                                    "reason": f"too long for the model's context with max_new_tokens={params.max_new_tokens}"})
                    continue
                rec = {
                    "id": pair_id(item.id, n),
                    "prompt_id": item.id,
                    "messages": item.messages,
                    "responses": [c.text.strip() for c in mine],
                    "finish_reasons": [c.finish_reason for c in mine],
                    "prompt_truncated": any(c.prompt_truncated for c in mine),
                    "model": engine.model_id,
                    "engine": engine.name,
                    "params": sampling_identity(params),
                    "seed": seed,
                    "system_prompt": system_prompt,
                    "tokens": {
                        "prompt_tokens": sum(c.prompt_tokens for c in mine),
                        "completion_tokens": sum(c.completion_tokens for c in mine),
                    },
                }
                if item.meta:
                    rec["meta"] = item.meta
                records.append(rec)
            rd.append(records)
            bar.update(len(chunk))
            bar.set_postfix_str(f"{completion_tokens / max(time.monotonic() - start_time, 1e-9):.1f} tok/s", refresh=True)
        rd.commit()  # an --overwrite run with nothing to do still replaces the old run (by an empty one)
    finally:
        bar.close()
        rd.close()
    write_skipped(run_dir, skipped)
    elapsed = time.monotonic() - start_time
    return {
        "run_dir": str(Path(run_dir)),
        "records": str(rd.records_path),
        "prompts": len(prompts),
        "already_done": len(prompts) - len(todo),
        "generated": len(todo) - len(skipped),
        "skipped": len(skipped),
        "seconds": round(elapsed, 2),
        "completion_tokens": completion_tokens,
        "tokens_per_s": round(completion_tokens / max(elapsed, 1e-9), 2),
    }
