"""The step plan: which rows each optimizer step reads, identical on every rerun (what makes resume exact)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from trainers.config import ConfigError, TrainConfig


@dataclass(frozen=True)
class StepPlan:
    """Which rows each optimizer step uses: a pure function of (n_rows, batch sizes, seed, step).

    Epoch ``e`` visits the rows in the order of a permutation seeded by ``(seed, e)``; step ``k`` of
    the epoch takes the next ``batch_size × grad_accum`` rows, split into ``grad_accum`` micro-batches
    (the last step of an epoch may be smaller). Because the order is recomputed, not iterated, the
    data position of a checkpoint is just its step number.
    """

    n_rows: int
    batch_size: int
    grad_accum: int
    seed: int
    steps_per_epoch: int
    total_steps: int

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def micro_batches(self, step: int) -> list[list[int]]:
        import numpy as np

        epoch, within = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)
        rows_per_step = self.batch_size * self.grad_accum
        chosen = order[within * rows_per_step : (within + 1) * rows_per_step].tolist()
        return [chosen[i : i + self.batch_size] for i in range(0, len(chosen), self.batch_size)]


def plan_steps(n_rows: int, config: TrainConfig) -> StepPlan:
    """The StepPlan for ``n_rows`` training rows: ``ceil(n_rows / (batch_size × grad_accum))`` steps
    per epoch; total = ``max_steps`` if given, else ``ceil(epochs × steps_per_epoch)``."""
    if n_rows == 0:
        raise ConfigError("no training rows left (after the eval split and --on-long filtering)")
    per_epoch = math.ceil(n_rows / (config.batch_size * config.grad_accum))
    total = config.max_steps if config.max_steps else max(1, math.ceil(config.epochs * per_epoch))
    return StepPlan(n_rows, config.batch_size, config.grad_accum, config.seed, per_epoch, total)
