"""Shared plumbing the trainers call (there is no base Trainer class): configs, model loading, the
accelerator, optimizer + schedule, the step plan, metrics, progress and exact-resume checkpoints.

torch / transformers / accelerate are imported inside the functions that need them, so that the
config dataclasses (and therefore ``cai --help``) import in a fraction of a second.

A trainer's life, top to bottom (see trainers/sft.py for the full example)::

    config = load_config(SFTConfig, yaml_path, **cli_values)      # validated dataclass
    set_seed(config.seed)
    model, tokenizer = load_model_and_tokenizer(config.model, **model_options(config))
    accelerator = make_accelerator(config)
    plan = plan_steps(len(train_rows), config)                     # steps per epoch, total steps
    optimizer, scheduler = make_optimizer_and_scheduler(model, config, plan.total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    start = 0
    if (ckpt := resume_checkpoint(config)) is not None:
        start = load_checkpoint(ckpt, accelerator, model, optimizer, scheduler, plan)["step"]
    logger = MetricsLogger(config.out, config, resume_step=start)
    for step in range(start, plan.total_steps):
        micro_batches = plan.micro_batches(step)                  # lists of row indices
        ... forward / accelerator.backward / clip / optimizer.step / scheduler.step / zero_grad ...
        logger.log(step + 1, {...})
        if (step + 1) % config.save_every == 0: save_checkpoint(config.out, step + 1, ...)
    save_final_model(config.out, accelerator, model, tokenizer)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
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


# ---------------------------------------------------------------- model, accelerator, optimizer


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
    from generators.engines.embedded import resolve_model

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
    that a step is the same set of examples whatever the device count, and resume is exact."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # Accelerator state is a process-wide singleton; a second trainer in the same process (tests,
    # notebooks) may ask for another precision.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    mixed = "bf16" if config.bf16 and torch.cuda.is_available() else "no"
    return Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())


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


# ---------------------------------------------------------------- the step plan (data order)


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


# ---------------------------------------------------------------- metrics and progress


class MetricsLogger:
    """Appends ``{"step": k, **metrics}`` lines to OUT/metrics.jsonl (flushed each time), and to
    TensorBoard or wandb when ``config.log_with`` asks and the package is installed. Resuming from step
    K first drops the lines after K, so the file holds one consistent curve."""

    def __init__(self, out: str | Path, config: TrainConfig, resume_step: int = 0):
        self.path = Path(out) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and _step_of(line) is not None and _step_of(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self._file = self.path.open("a", encoding="utf-8")
        self._tensorboard = self._wandb = None
        if config.log_with == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._tensorboard = SummaryWriter(str(Path(out) / "tensorboard"))
        elif config.log_with == "wandb":
            import wandb

            self._wandb = wandb.init(config=config_to_dict(config), dir=str(out), resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                if self._tensorboard is not None:
                    self._tensorboard.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(record, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    """The records of OUT/metrics.jsonl, in order."""
    path = Path(out) / METRICS_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def progress_bar(total: int, initial: int = 0, desc: str = "train", quiet: bool = False):
    """A tqdm bar over optimizer steps (rate and ETA shown; set postfix for loss / tokens per second)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=quiet, dynamic_ncols=True)


# ---------------------------------------------------------------- checkpoints (exact resume)


def checkpoint_dir(out: str | Path, step: int) -> Path:
    return Path(out) / CHECKPOINTS_DIR / f"step-{step}"


def latest_checkpoint(out: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in OUT/checkpoints (temp dirs are ignored)."""
    root = Path(out) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    found = [(int(p.name[5:]), p) for p in root.iterdir()
             if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit() and (p / "trainer_state.json").exists()]
    return max(found)[1] if found else None


def resume_checkpoint(config: TrainConfig) -> Path | None:
    """The checkpoint to resume from: ``resume="auto"`` → latest in OUT (or None), ``"never"`` → None,
    anything else → that folder (it must exist)."""
    if config.resume == "never":
        return None
    if config.resume == "auto":
        return latest_checkpoint(config.out)
    path = Path(config.resume)
    if not (path / "trainer_state.json").exists():
        raise ConfigError(f"--resume {config.resume}: not a checkpoint folder (no trainer_state.json)")
    return path


def save_checkpoint(out: str | Path, step: int, accelerator, model, optimizer, scheduler, config: TrainConfig,
                    plan: StepPlan, extra: dict[str, Any] | None = None) -> Path | None:
    """Write OUT/checkpoints/step-K atomically (a temp dir renamed into place) and prune old ones.

    Contents: ``model.safetensors`` (the parameters that require grad: all of them, or the LoRA adapter
    and head), ``optimizer.pt`` and ``scheduler.pt`` (state dicts), ``rng.pt`` (python, numpy, torch
    and CUDA generator states), ``trainer_state.json`` (step, epoch, data-plan identity, config,
    ``extra``). Only the main process writes; returns the folder (None on other processes).
    """
    import numpy as np
    import torch
    from safetensors.torch import save_file

    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    target = checkpoint_dir(out, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step}-", dir=target.parent))
    try:
        unwrapped = accelerator.unwrap_model(model)
        weights = {name: p.detach().to("cpu").contiguous() for name, p in unwrapped.named_parameters() if p.requires_grad}
        save_file(weights, str(tmp / "model.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        np_state = np.random.get_state()
        rng = {
            "python": random.getstate(),
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        torch.save(rng, tmp / "rng.pt")
        state = {
            "step": step,
            "epoch": plan.epoch_of(step),
            "plan": dataclasses.asdict(plan),
            "config": config_to_dict(config),
            "paths": _path_spellings(config_to_dict(config)),
            "inputs": input_fingerprints(config),
            **(extra or {}),
        }
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
        if target.exists():  # a rerun that reached the same step again
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune_checkpoints(Path(out), config.keep_checkpoints)
    return target


def _prune_checkpoints(out: Path, keep: int) -> None:
    root = out / CHECKPOINTS_DIR
    steps = sorted((int(p.name[5:]), p) for p in root.iterdir() if p.name.startswith("step-") and p.name[5:].isdigit())
    for _, path in steps[: max(0, len(steps) - max(keep, 1))]:
        shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(path: str | Path, accelerator, model, optimizer, scheduler, config: TrainConfig,
                    plan: StepPlan) -> dict[str, Any]:
    """Restore a ``save_checkpoint`` folder into (prepared) model, optimizer and scheduler, restore the
    RNG states, and return its trainer_state (``state["step"]`` is the next step to run). Refuses a
    checkpoint whose data plan or training options differ from this run (it would not be a resume)."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    now = config_to_dict(config)
    now_paths, then_paths = _path_spellings(now), {**_path_spellings(state["config"]), **state.get("paths", {})}
    changed = sorted(k for k, v in state["config"].items() if k not in RESUME_NEUTRAL_FIELDS
                     and (then_paths[k] != now_paths[k] if k in now_paths else now.get(k) != v))
    if changed:
        raise ConfigError(f"{path}: options changed since this checkpoint: {', '.join(changed)}; use --no-resume or a new --out")
    inputs = input_fingerprints(config)
    for name, then in state.get("inputs", {}).items():  # old checkpoints have none: nothing to compare
        if name in inputs and inputs[name] != then:
            raise ConfigError(f"{path}: the data file {name} changed since this checkpoint (now {inputs[name]['size']} "
                              f"bytes, was {then['size']}; different content); use --no-resume or a new --out")
    if state["plan"] != dataclasses.asdict(plan):
        raise ConfigError(f"{path}: the training data or batch options changed since this checkpoint "
                         f"(checkpoint plan {state['plan']}, now {dataclasses.asdict(plan)}); use --no-resume or a new --out")
    unwrapped = accelerator.unwrap_model(model)
    weights = load_file(str(path / "model.safetensors"))
    trainable = {name for name, p in unwrapped.named_parameters() if p.requires_grad}
    if set(weights) != trainable:
        raise ConfigError(f"{path}/model.safetensors does not match the model's trainable parameters")
    unwrapped.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    random.setstate(_tuples(rng["python"]))
    kind, keys, *rest = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state


def _split_path(value: str) -> tuple[str, Path | None, str]:
    """``(prefix, existing path or None, suffix)`` of a path-valued option: ``pm:``/``ai:`` before the
    path (--reward), ``:WEIGHT`` after it (--data), both kept out of the path."""
    prefix = value[:3] if value[:3] in ("pm:", "ai:") else ""
    rest, suffix = value[len(prefix):], ""
    if not Path(rest).expanduser().exists() and ":" in rest:
        head, _, tail = rest.rpartition(":")
        rest, suffix = (head, ":" + tail) if Path(head).expanduser().exists() else (rest, "")
    path = Path(rest).expanduser()
    return prefix, (path if rest and path.exists() else None), suffix


def _spelling(value: Any) -> Any:
    """An option value with every existing path in it made absolute (symlinks resolved)."""
    if isinstance(value, list):
        return [_spelling(v) for v in value]
    if not isinstance(value, str):
        return value
    prefix, found, suffix = _split_path(value)
    return value if found is None else f"{prefix}{found.resolve()}{suffix}"


def _path_spellings(config: dict[str, Any]) -> dict[str, Any]:
    return {k: _spelling(config[k]) for k in PATH_FIELDS if k in config}


def input_fingerprints(config) -> dict[str, dict[str, Any]]:
    """``{resolved path: {"size", "sha256"}}`` of the input data files (and folders) of a config, so a
    resume can tell a data file edited in place from the one the run started with."""
    from trainers.data import DataError, resolve_source

    found: dict[str, dict[str, Any]] = {}
    for name in DATA_FIELDS:
        values = getattr(config, name, None) or []
        for value in values if isinstance(values, list) else [values]:
            path = _split_path(value)[1]
            if path is not None:
                try:  # an export folder: the file the trainer reads from it
                    path = resolve_source(path, config.data_kind) if path.is_dir() and getattr(config, "data_kind", None) else path
                except DataError:
                    pass
                resolved = path.resolve()
                found[str(resolved)] = _fingerprint(resolved, _stat_key(resolved))
    return found


def _stat_key(path: Path) -> tuple:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())


@functools.lru_cache(maxsize=64)
def _fingerprint(path: Path, stat_key: tuple) -> dict[str, Any]:
    """Size and sha256 of a file, or of a folder's files (names and contents); cached per (path, sizes, mtimes)."""
    digest, size = hashlib.sha256(), 0
    for name, _, _ in stat_key:
        file = Path(name)
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


def _tuples(value: Any) -> Any:
    """random.setstate wants nested tuples; serialisation may hand back lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_final_model(out: str | Path, accelerator, model, tokenizer, summary: dict[str, Any] | None = None) -> Path:
    """Save the trained model (LoRA merged into the base weights) and its tokenizer into OUT with
    ``save_pretrained`` (safetensors), so ``from_pretrained(OUT)`` loads it; plus ``summary.json``.
    Files are written to a temp dir first and moved in one by one (no half-written weights)."""
    out = Path(out)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if hasattr(unwrapped, "merge_and_unload"):  # peft
            unwrapped = unwrapped.merge_and_unload()
        tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=out))
        try:
            unwrapped.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if summary is not None:
                (tmp / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
            for item in tmp.iterdir():
                os.replace(item, out / item.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
