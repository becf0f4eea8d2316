"""A scripted generating engine the Ray tests name as ``--engine ray_fakes:EchoEngine`` (this folder is on the
workers' PYTHONPATH): cheap to build in every worker, deterministic, and able to fail on purpose.

- ``fail_on`` + ``fail_marker``: while the marker file exists, a batch with a request containing ``fail_on``
  raises ValueError (the run stops, as an interrupted run would; delete the marker to let a rerun pass).
- ``die_on`` + ``die_marker``: the first batch with a request containing ``die_on`` creates the marker and
  kills its worker process (``os._exit``) — the retry, in a restarted worker, finds the marker and succeeds.
"""

from __future__ import annotations

import os
from pathlib import Path

from engines.base import Completion


class EchoEngine:
    name = "ray_fakes:EchoEngine"  # as --engine names it: the run identity is the same from every executor
    can_score = False

    def __init__(self, model: str, fail_on: str | None = None, fail_marker: str | None = None,
                 die_on: str | None = None, die_marker: str | None = None, batch_size: int | None = None):
        self.model_id = model
        self.fail_on, self.fail_marker, self.die_on, self.die_marker = fail_on, fail_marker, die_on, die_marker

    def generate(self, requests, params):
        texts = [r[-1]["content"] if isinstance(r, list) else str(r) for r in requests]
        if self.die_on and any(self.die_on in t for t in texts) and not Path(self.die_marker).exists():
            Path(self.die_marker).write_text(str(os.getpid()))
            os._exit(1)
        if self.fail_on and any(self.fail_on in t for t in texts) and Path(self.fail_marker).exists():
            raise ValueError(f"scripted failure on {self.fail_on}")
        return [Completion(f"echo[{params.seed}]: {t[:40]}", 3, 2, "stop") for t in texts]

    def render_chat(self, messages, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages)


class ScoringEngine(EchoEngine):
    """A labeler whose option log-probs are a fixed arithmetic function of (context, option): the same in every process."""

    name = "ray_fakes:ScoringEngine"
    can_score = True

    def __init__(self, model: str, batch_size: int | None = None, tokenizer: str | None = None):
        super().__init__(model)

    def score_options(self, contexts, options):
        return [[-((len(c) * 31 + sum(map(ord, o)) * 17) % 10) / 3 - 0.1 for o in options] for c in contexts]
