"""Seeding, model loading (safetensors only, optional LoRA), dropout off, the accelerator, optimizer and LR schedule."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from trainers.config import ConfigError, TrainConfig


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_options(config: TrainConfig) -> dict[str, Any]:
    """The keyword arguments of ``load_model_and_tokenizer`` taken from a config."""
    return {
        "lora_r": config.lora_r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "lora_target_modules": config.lora_target_modules or None,
        "gradient_checkpointing": config.gradient_checkpointing,
        "trust_remote_code": config.trust_remote_code,
    }


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


def model_source(model: str, what: str | None = None) -> str:
    """What ``from_pretrained`` should load for a model argument (``resolve_model``), checked first so
    that a bad argument is one ConfigError naming it and the reason instead of an OSError traceback:
    a folder that does not exist, a folder without safetensors weights (pickle weights are refused),
    a Hub id that is not in the local cache while downloads are off. ``what`` starts the message."""
    from engines.embedded import resolve_model

    what = what or f"--model {model}"
    try:
        path = resolve_model(model)
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"{what}: {exc}") from None
    folder = Path(path)
    if not folder.is_dir():
        if folder.exists():
            raise ConfigError(f"{what}: {path} is a file, not a model folder")
        if not _downloads_off():
            return path  # from_pretrained fetches what the cache lacks (safetensors only)
        folder = _hub_snapshot(path)
        if folder is None:
            raise ConfigError(f"{what}: model id {model!r} is not in the local Hugging Face cache and downloads "
                              f"are off (HF_HUB_OFFLINE); there is no folder {model} either")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted({p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern)} - {"training_args.bin"})
        if pickles:
            raise ConfigError(f"{what}: {folder} has no safetensors weights (only {', '.join(pickles)}); pickle weights "
                              f"are refused — convert with `from_pretrained('{folder}', use_safetensors=False)"
                              f".save_pretrained('{folder}')` if you trust the file")
        raise ConfigError(f"{what}: {folder} has no model weights (no *.safetensors file)")
    return path


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local cache folder of a Hub model id (None when it is not cached, or not a valid id)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def _downloads_off() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get(name, "").strip().upper() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(flag in ("1", "ON", "YES", "TRUE") for flag in flags)


def load_model_and_tokenizer(
    model: str,
    *,
    head: str = "causal_lm",
    lora_r: int = 0,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    lora_target_modules: list[str] | None = None,
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    what: str | None = None,
):
    """Load ``(model, tokenizer)`` in float32 from safetensors only (no pickle weights).

    ``model`` goes through ``model_source`` (``smollm2-135m`` → cache folder; a missing folder, pickle
    weights or an uncached Hub id while offline are a ConfigError starting with ``what``, default
    ``--model MODEL``). ``head="causal_lm"`` gives AutoModelForCausalLM; ``head="score"`` gives
    AutoModelForSequenceClassification with ``num_labels=1`` (a new scalar head on the backbone, with
    ``config.pad_token_id`` set so the reward is read at the last non-pad token). A tokenizer without a
    pad token gets its eos token as pad. ``lora_r > 0`` wraps the model with a peft LoRA adapter (the
    score head stays fully trainable); only the adapter (and head) then require grad.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if head not in ("causal_lm", "score"):
        raise ConfigError(f"head must be 'causal_lm' or 'score', got {head!r}")
    what = what or f"--model {model}"
    path = model_source(model, what)
    common = {"dtype": torch.float32, "use_safetensors": True, "trust_remote_code": trust_remote_code}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if head == "causal_lm":
            network = AutoModelForCausalLM.from_pretrained(path, **common)
        else:
            network = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, pad_token_id=tokenizer.pad_token_id, **common
            )
            network.config.pad_token_id = tokenizer.pad_token_id
    except OSError as exc:  # a broken folder, or a Hub id that does not exist
        raise ConfigError(f"{what}: cannot load the model ({str(exc).strip().splitlines()[0]})") from None
    if gradient_checkpointing:
        network.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        network.config.use_cache = False
    if lora_r > 0:
        try:
            from peft import LoraConfig, TaskType, get_peft_model
        except ImportError as exc:  # pragma: no cover - peft is a dev dependency
            raise RuntimeError("--lora-r needs the peft package: pip install 'cai-toolkit[peft]'") from exc
        lora = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=lora_target_modules or "all-linear",
            task_type=TaskType.CAUSAL_LM if head == "causal_lm" else TaskType.SEQ_CLS,
        )
        if gradient_checkpointing:
            network.enable_input_require_grads()
        network = get_peft_model(network, lora)
    return network, tokenizer


def disable_dropout(model) -> None:
    """Zero every dropout probability (``nn.Dropout`` modules, LoRA dropout included, and the
    ``attention_dropout`` rate attention layers apply functionally). DPO and KTO compare the policy
    with a reference that runs without dropout, and PPO compares log-probs taken in eval mode with
    the update's: with dropout on, those differences would be noise at step 0. The model stays in
    train mode (gradient checkpointing needs it)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), (int, float)):
            module.attention_dropout = 0.0


def make_accelerator(config: TrainConfig):
    """An ``accelerate.Accelerator``: bf16 autocast when ``config.bf16`` and CUDA is available, fp32
    otherwise. Gradient accumulation is done by the trainers themselves (``plan.micro_batches``), so
    that a step is the same set of examples whatever the device count, and resume is exact. Under
    torchrun / ``accelerate launch`` the processes are taken from the environment (trainers/distributed.py).

    accelerate keeps one state per process: a second trainer in the same process must ask for the
    same precision (a ConfigError otherwise; run each trainer in its own process)."""
    import torch
    from accelerate import Accelerator

    mixed = "bf16" if config.bf16 and torch.cuda.is_available() else "no"
    try:
        return Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
    except ValueError as exc:
        if "already been initialized" not in str(exc):
            raise
        raise ConfigError(f"accelerate was already set up in this process with another precision; run this trainer "
                          f"(mixed precision {mixed!r}) in a process of its own") from None


def make_optimizer_and_scheduler(model, config: TrainConfig, total_steps: int):
    """AdamW over the parameters that require grad (no weight decay on biases and norms) and a
    ``transformers.get_scheduler`` schedule (cosine/linear/constant) with linear warm-up of
    ``round(warmup_ratio × total_steps)`` steps. Call ``scheduler.step()`` once per optimizer step."""
    import torch
    from transformers import get_scheduler

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    name = {"constant": "constant_with_warmup"}.get(config.lr_schedule, config.lr_schedule)
    warmup = round(config.warmup_ratio * total_steps)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1))
    return optimizer, scheduler
