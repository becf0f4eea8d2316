"""Several processes (torchrun / accelerate launch; gloo on CPU, NCCL on GPUs): which rows each rank
reads, cross-rank sums of metrics, and the optional record of the rows each rank used.

The step plan (``trainers.plan``) stays global — the same on any number of processes, so a checkpoint
resumes under another process count and a 2-process run matches a 1-process run. Each rank takes a
strided slice of every micro-batch (``rank_shares``): rank r of W reads rows ``batch[r::W]``. DDP
averages the gradients over the W ranks, so a rank weights its loss by ``W × (its share of the step's
examples or tokens)``; the step's token count comes from ``all_sum``. A micro-batch with fewer rows than
ranks gives some ranks no rows: they run the micro-batch's first row with weight 0, so that every rank
makes the same forward/backward calls (DDP's collectives must line up).

``CAI_DEBUG_ROWS_DIR``: when set, each rank appends ``{"step", "rank", "rows"}`` lines (the plan's row
indices it trained on) to ``DIR/rows-rank{R}.jsonl`` — a test hook that shows the ranks' rows are
disjoint. Nothing is written when it is unset.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path

DEBUG_ROWS_ENV = "CAI_DEBUG_ROWS_DIR"


def rank_shares(micro_batches: list[list[int]], accelerator) -> list[tuple[list[int], bool]]:
    """This rank's ``(indices, real)`` of each global micro-batch: ``batch[rank::world]``, or — when that
    is empty — ``(batch[:1], False)``: a stand-in to run with weight 0. One process: the batches as they are."""
    rank, world = accelerator.process_index, accelerator.num_processes
    shares = []
    for batch in micro_batches:
        mine = batch[rank::world]
        shares.append((mine, True) if mine else (batch[:1], False))
    return shares


def all_sum(accelerator, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all processes (float64; the values themselves with one process)."""
    if accelerator.num_processes == 1:
        return [float(v) for v in values]
    import torch

    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=accelerator.device)
    return [float(v) for v in accelerator.reduce(tensor, reduction="sum").tolist()]


def sync_unless_last(accelerator, model, index: int, count: int):
    """Context for micro-batch ``index`` of ``count``: DDP skips the gradient all-reduce (``no_sync``)
    except on the last micro-batch of the step, which reduces the accumulated gradients once."""
    return accelerator.no_sync(model) if index < count - 1 and accelerator.num_processes > 1 else nullcontext()


def record_rows(accelerator, step: int, shares: list[tuple[list[int], bool]]) -> None:
    """Append this rank's real rows of ``step`` to ``$CAI_DEBUG_ROWS_DIR/rows-rank{R}.jsonl`` (when set)."""
    folder = os.environ.get(DEBUG_ROWS_ENV)
    if not folder:
        return
    rows = [int(i) for indices, real in shares if real for i in indices]
    path = Path(folder) / f"rows-rank{accelerator.process_index}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, "rank": accelerator.process_index, "rows": rows}) + "\n")
