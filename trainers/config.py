"""Trainer configs: the options every trainer shares, on the common config base (``jobs/config.py``):
``TrainBase`` (model, output, optimiser, LoRA, checkpoints: also PPO's) and ``TrainConfig`` (plus the
data options of the offline trainers). Loading is defaults < YAML file < CLI values, errors name the key."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Optional

from pydantic import field_validator

from jobs.config import CommandConfig, ConfigError, config_to_dict, dump_config, load_config, opt, save_config

CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"  # the resolved config of a run, in OUT (loads back with --config)
# Config fields that may differ between a run and its resumption (they do not change the numbers;
# `out` and `resume` are where the run lives, which may move).
RESUME_NEUTRAL_FIELDS = {"out", "resume", "stop_after_steps", "quiet", "save_every", "keep_checkpoints", "log_with", "config"}
# Path-valued config fields: compared by resolved path on resume (`./d.jsonl` = `/abs/d.jsonl`).
PATH_FIELDS = ("data", "eval_data", "model", "ref_model", "prompts", "reward", "constitution")
# Input data fields whose files are fingerprinted (size + sha256) in each checkpoint.
DATA_FIELDS = ("data", "eval_data", "prompts")


class TrainBase(CommandConfig):
    """Options every trainer shares, PPO included."""

    yaml_kind: ClassVar[str] = "training configs"
    data_kind: ClassVar[str] = ""  # which rows --data holds (set by a trainer; not an option)

    model: str = opt("", "model to start from: `smollm2-135m` (embedded), a local folder or a Hub id already in the cache", required=True)
    out: str = opt("", "output folder: final model, metrics.jsonl, checkpoints/", required=True)
    batch_size: int = opt(8, "examples per micro-batch")
    lr: float = opt(1e-5, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    lr_schedule: Literal["cosine", "linear", "constant"] = opt("cosine", "learning-rate schedule after warm-up: cosine | linear | constant")
    warmup_ratio: float = opt(0.05, "fraction of the total steps used for linear warm-up")
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this value (0 = no clipping)")
    seed: int = opt(0, "seed for initialisation, data order and eval split")
    save_every: int = opt(100, "save a resumable checkpoint to OUT/checkpoints/step-K every this many optimizer steps")
    keep_checkpoints: int = opt(2, "how many recent checkpoints to keep")
    resume: str = opt("auto", "auto (continue from the latest checkpoint in OUT if any) | never | PATH of a checkpoint", transient=True)
    stop_after_steps: Optional[int] = opt(None, "end this run after this many optimizer steps, as if interrupted (schedule unchanged; rerun to continue)", transient=True)
    lora_r: int = opt(0, "LoRA rank (0 = full fine-tuning); needs the `peft` package")
    lora_alpha: int = opt(16, "LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = opt(0.0, "LoRA dropout")
    lora_target_modules: list[str] = opt([], "module names LoRA adapts (default: all linear layers)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass (less memory, ~30% slower)")
    bf16: bool = opt(True, "bf16 mixed precision when a CUDA GPU is present (ignored on CPU)")
    log_with: Literal["none", "tensorboard", "wandb"] = opt("none", "also log to: none | tensorboard | wandb (metrics.jsonl is always written)")
    trust_remote_code: bool = opt(False, "allow model code from the model folder / Hub repo to run")
    quiet: bool = opt(False, "no progress bar", transient=True)

    def __post_init__(self) -> None:
        for name in ("batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be ≥ 1; got {getattr(self, name)}")


class TrainConfig(TrainBase):
    """Options of the offline trainers (sft, pm, dpo, kto): TrainBase plus the training data. A trainer's
    config subclasses this and adds its own fields."""

    data: list[str] = opt([], "training data: a JSONL file, a `datasets` folder (save_to_disk) or an export dir; PATH:WEIGHT mixes several", required=True)
    eval_data: Optional[str] = opt(None, "separate evaluation data (same formats as --data); default: split --eval-fraction off the training data")
    eval_fraction: float = opt(0.1, "fraction of the training rows held out for evaluation when --eval-data is not given (0 = no eval)")
    max_length: int = opt(1024, "maximum tokens per example (prompt + response)")
    on_long: Literal["skip", "truncate", "error"] = opt("error", "what to do with examples longer than --max-length: skip | truncate | error (always reported)")
    epochs: float = opt(1.0, "passes over the training data (fractions allowed)")
    max_steps: Optional[int] = opt(None, "total optimizer steps (overrides --epochs; sets the LR schedule length)")
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step (effective batch = batch-size × grad-accum)")
    eval_every: Optional[int] = opt(None, "evaluate every this many steps (default: only at the end)")

    @field_validator("data", mode="before")
    @classmethod
    def _one_path_is_a_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"--eval-fraction must be in [0, 1); got {self.eval_fraction}")
        for name in ("grad_accum", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be ≥ 1; got {getattr(self, name)}")


__all__ = ["CHECKPOINTS_DIR", "CONFIG_FILE", "METRICS_FILE", "PATH_FIELDS", "DATA_FIELDS", "RESUME_NEUTRAL_FIELDS",
           "ConfigError", "TrainBase", "TrainConfig", "config_to_dict", "dump_config", "load_config", "opt", "save_config"]
