"""Trainer configs: the options every trainer shares (``TrainConfig``), ``opt`` fields carrying their CLI
help, and loading defaults < YAML file < CLI values with errors that name the key and file."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
# Config fields that may differ between a run and its resumption (they do not change the numbers;
# `out` and `resume` are where the run lives, which may move).
RESUME_NEUTRAL_FIELDS = {"out", "resume", "stop_after_steps", "quiet", "save_every", "keep_checkpoints", "log_with", "config"}
# Path-valued config fields: compared by resolved path on resume (`./d.jsonl` = `/abs/d.jsonl`).
PATH_FIELDS = ("data", "eval_data", "model", "ref_model", "prompts", "reward", "constitution")
# Input data fields whose files are fingerprinted (size + sha256) in each checkpoint.
DATA_FIELDS = ("data", "eval_data", "prompts")


class ConfigError(ValueError):
    """A bad option, config file or checkpoint choice; the message names the key or file."""


def opt(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field carrying its CLI help text: ``lr: float = opt(1e-5, "peak learning rate")``."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """Options every trainer shares. A trainer's config subclasses this and adds its own fields."""

    data: list[str] = opt([], "training data: a JSONL file, a `datasets` folder (save_to_disk) or an export dir; PATH:WEIGHT mixes several", required=True)
    model: str = opt("", "model to start from: `smollm2-135m` (embedded), a local folder or a Hub id already in the cache", required=True)
    out: str = opt("", "output folder: final model, metrics.jsonl, checkpoints/", required=True)
    eval_data: str | None = opt(None, "separate evaluation data (same formats as --data); default: split --eval-fraction off the training data")
    eval_fraction: float = opt(0.1, "fraction of the training rows held out for evaluation when --eval-data is not given (0 = no eval)")
    max_length: int = opt(1024, "maximum tokens per example (prompt + response)")
    on_long: str = opt("error", "what to do with examples longer than --max-length: skip | truncate | error (always reported)")
    epochs: float = opt(1.0, "passes over the training data (fractions allowed)")
    max_steps: int | None = opt(None, "total optimizer steps (overrides --epochs; sets the LR schedule length)")
    batch_size: int = opt(8, "examples per micro-batch")
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step (effective batch = batch-size × grad-accum)")
    lr: float = opt(1e-5, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    lr_schedule: str = opt("cosine", "learning-rate schedule after warm-up: cosine | linear | constant")
    warmup_ratio: float = opt(0.05, "fraction of the total steps used for linear warm-up")
    max_grad_norm: float = opt(1.0, "clip the gradient norm to this value (0 = no clipping)")
    seed: int = opt(0, "seed for initialisation, data order and eval split")
    save_every: int = opt(100, "save a resumable checkpoint to OUT/checkpoints/step-K every this many optimizer steps")
    keep_checkpoints: int = opt(2, "how many recent checkpoints to keep")
    resume: str = opt("auto", "auto (continue from the latest checkpoint in OUT if any) | never | PATH of a checkpoint")
    stop_after_steps: int | None = opt(None, "end this run after this many optimizer steps, as if interrupted (schedule unchanged; rerun to continue)")
    eval_every: int | None = opt(None, "evaluate every this many steps (default: only at the end)")
    lora_r: int = opt(0, "LoRA rank (0 = full fine-tuning); needs the `peft` package")
    lora_alpha: int = opt(16, "LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = opt(0.0, "LoRA dropout")
    lora_target_modules: list[str] = opt([], "module names LoRA adapts (default: all linear layers)")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass (less memory, ~30% slower)")
    bf16: bool = opt(True, "bf16 mixed precision when a CUDA GPU is present (ignored on CPU)")
    log_with: str = opt("none", "also log to: none | tensorboard | wandb (metrics.jsonl is always written)")
    trust_remote_code: bool = opt(False, "allow model code from the model folder / Hub repo to run")
    quiet: bool = opt(False, "no progress bar")

    def __post_init__(self) -> None:
        if isinstance(self.data, str):
            self.data = [self.data]
        choices = {"on_long": ("skip", "truncate", "error"), "lr_schedule": ("cosine", "linear", "constant"),
                   "log_with": ("none", "tensorboard", "wandb")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ConfigError(f"--eval-fraction must be in [0, 1); got {self.eval_fraction}")
        for name in ("batch_size", "grad_accum", "max_length", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be ≥ 1; got {getattr(self, name)}")


# ---------------------------------------------------------------- config loading


def load_config(cls: type, yaml_path: str | Path | None = None, **overrides: Any):
    """Build a ``cls`` dataclass from defaults < YAML file < keyword overrides (``None`` overrides are
    ignored, so CLI options left unset fall through). YAML keys may use ``-`` or ``_``; an unknown key,
    a wrongly typed value or a missing required field raises ``ConfigError`` naming the key and file.
    YAML anchors/aliases are refused (a "billion laughs" file would otherwise expand before any check)."""
    import yaml

    from constitution.loader import StrictLoader, YAMLRefused

    class ConfigLoader(StrictLoader):
        kind = "training configs"

    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    if yaml_path is not None:
        try:
            loaded = yaml.load(Path(yaml_path).read_text(encoding="utf-8"), Loader=ConfigLoader) or {}
        except OSError as exc:
            raise ConfigError(f"--config {yaml_path}: cannot read ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--config {yaml_path}: not UTF-8 text") from None
        except YAMLRefused as exc:
            raise ConfigError(f"{yaml_path}:{exc.line}: {exc.message}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {yaml_path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_path}: expected a mapping of option: value at the top level")
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            if name not in fields:
                close = [f for f in fields if f.startswith(name[:4])]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(f"{yaml_path}: unknown key {key!r} for {cls.__name__}{hint}")
            values[name] = _coerce(value, hints[name], f"{yaml_path}: key {key!r}")
    for name, value in overrides.items():
        if name not in fields:
            raise ConfigError(f"unknown option {name!r} for {cls.__name__}")
        if value is None or (isinstance(value, (list, tuple)) and len(value) == 0 and name in values):
            continue
        values[name] = _coerce(value, hints[name], f"option --{name.replace('_', '-')}")
    for name, f in fields.items():
        if f.metadata.get("required") and not values.get(name):
            raise ConfigError(f"missing required option --{name.replace('_', '-')} (or `{name}:` in the config file)")
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a value against a field's type hint (str, int, float, bool, list[str], X | None)."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is list:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(item, args[0] if args else str, where) for item in items]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


