"""Model back ends, registered lazily by name so optional dependencies stay unimported.

    engine = load_engine("transformers", model="smollm2-135m")
"""

from __future__ import annotations

import importlib

from .base import Completion, Engine, EngineCapabilityError, GenerationParams, Request, normalize_logprobs

# name -> "module:Class"; the module is imported only when the engine is asked for.
ENGINES: dict[str, str] = {
    "transformers": "generators.engines.transformers_engine:TransformersEngine",
    "openai": "generators.engines.openai_engine:OpenAIEngine",
    "vllm": "generators.engines.vllm_engine:VLLMEngine",
}


def load_engine(name: str, model: str, **options) -> Engine:
    """Build the engine ``name`` for ``model``; options are passed to the back end's constructor."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(sorted(ENGINES))}")
    module_name, cls_name = ENGINES[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(model, **options)


__all__ = [
    "ENGINES",
    "Completion",
    "Engine",
    "EngineCapabilityError",
    "GenerationParams",
    "Request",
    "load_engine",
    "normalize_logprobs",
]
