"""An engine as seen by a process that runs no model: the driver of a ``--executor ray`` run.

The driver of a sharded run checks things before any worker starts (can the back end score, does the
template render with the model's chat template) and stamps the run's identity (back end, model). For
that it needs the engine's name, model id, ``can_score`` flag and ``render_chat`` — not the model: on a
cluster the head node may have no GPU, and loading a vLLM engine there would fail or waste one.
``EngineView`` gives exactly that, from the back-end class and the model's tokenizer (loaded on first use).
"""

from __future__ import annotations

from typing import Sequence

from .base import EngineCapabilityError, GenerationParams, Message, Request


class EngineView:
    """``name``, ``model_id``, ``can_score`` and ``render_chat`` of the engine ``name`` for ``model``,
    without loading the model; ``generate`` and ``score_options`` refuse (they run in the workers)."""

    def __init__(self, name: str, model: str, **options):
        from . import ENGINES, engine_class
        from .embedded import resolve_model

        cls = engine_class(name)
        self.name = getattr(cls, "name", name)
        self.model_id = model
        self.can_score = bool(getattr(cls, "can_score", False))
        self.trust_remote_code = bool(options.get("trust_remote_code") or False)
        self.tokenizer_id = options.get("tokenizer") or model
        if name in ENGINES and self.tokenizer_id == model:
            resolve_model(model)  # a folder that does not exist fails here, in one line, not in every worker
        self._tokenizer = None

    def __repr__(self) -> str:
        return f"EngineView({self.name!r}, {self.model_id!r})"

    def render_chat(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from .embedded import resolve_model

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.tokenizer_id),
                                                            trust_remote_code=self.trust_remote_code)
        if not getattr(self._tokenizer, "chat_template", None):
            raise EngineCapabilityError(f"tokenizer {self.tokenizer_id!r} has no chat template")
        return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def generate(self, requests: Sequence[Request], params: GenerationParams):
        raise RuntimeError(f"{self!r} runs no model: generation happens in the workers")

    def score_options(self, contexts: Sequence[str], options: Sequence[str]):
        raise RuntimeError(f"{self!r} runs no model: scoring happens in the workers")
