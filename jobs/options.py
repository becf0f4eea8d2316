"""The options every generate / label command shares: which engine (``EngineOptions``, checked and
built by ``engine_spec_from`` / ``load_engine_from``) and where the batches run (``ExecutorOptions``)."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from engines import ENGINE_OPT_HELP
from jobs.config import CommandConfig, ConfigError, opt

# ---- engine options shared by every generate / label command ---------------------------------------

ENGINE_HELP = "Back end: transformers (local), openai (any OpenAI-compatible server) or vllm."
# config fields passed to engine_options (each only to back ends that take it)
ENGINE_FLAGS = ("batch_size", "base_url", "tokenizer", "device", "dtype", "trust_remote_code", "on_long")


class EngineOptions(CommandConfig):
    """The engine fields of every `cai generate` / `cai label` command; ``model_field`` names the field
    holding the model (``model`` for generators, ``labeler_model`` for labelers)."""

    model_field: ClassVar[str] = "model"

    engine: str = opt("transformers", ENGINE_HELP)
    base_url: Optional[str] = opt(None, "Server URL for --engine openai (default $OPENAI_BASE_URL or http://localhost:8000/v1).",
                                  redact="url")
    engine_opt: list[str] = opt([], ENGINE_OPT_HELP, redact="options")
    device: Optional[str] = opt(None, "--engine transformers: cpu, cuda, cuda:1 … (default: cuda if available, else cpu).")


def engine_spec_from(config: EngineOptions):
    """The :class:`jobs.runner.EngineSpec` a config names (back end, model, constructor options), checked
    without loading the model: an unknown engine, a missing optional dependency or a bad --engine-opt is a
    ``ConfigError`` with one clear message. ``--engine module:Class`` names a back end outside the registry."""
    from engines import ENGINES, engine_options
    from jobs.runner import EngineSpec

    engine, model = config.engine, getattr(config, config.model_field)
    if engine not in ENGINES and ":" not in engine:
        raise ConfigError(f"unknown --engine {engine!r}; choose one of: {', '.join(sorted(ENGINES))}")
    flags = {k: getattr(config, k) for k in ENGINE_FLAGS if k in type(config).model_fields}
    if "trust_remote_code" in flags:
        flags["trust_remote_code"] = flags["trust_remote_code"] or None
    try:  # engine_options imports the back end, so a missing optional dependency shows here
        options = engine_options(engine, flags, config.engine_opt)
    except ImportError as exc:
        raise ConfigError(f"the {engine!r} engine is not available: {exc}") from None
    except (ValueError, AttributeError) as exc:
        raise ConfigError(str(exc)) from None
    return EngineSpec(engine, model, options)


def load_engine_from(config: EngineOptions):
    """Build the engine a config names, passing each option only to back ends that take it; any failure
    (unknown engine, missing optional dependency, bad --engine-opt, model that does not load) is a
    ``ConfigError`` with one clear message."""
    spec = engine_spec_from(config)
    try:
        return spec.load()
    except (ImportError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise ConfigError(f"cannot load model {spec.model!r} with the {spec.name!r} engine: {exc}") from None


# ---- where the batches run: the executor options of every generate / label run command -------------


class ExecutorOptions(CommandConfig):
    """``--executor local|ray``, ``--num-workers``, ``--ray-address``: how a run is executed, not what it
    produces, so never part of a run's identity (a run may resume with other values); saved in config.yaml."""

    executor: Literal["local", "ray"] = opt("local", "Where the batches run: local (this process) or ray (sharded over Ray "
                                                     "workers, each with its own engine; pip install 'cai-toolkit[ray]').")
    num_workers: Optional[int] = opt(None, "--executor ray: number of workers, each loading the model once (default: one per CPU of "
                                           "the cluster).")
    ray_address: Optional[str] = opt(None, "--executor ray: cluster to join: auto (started with `ray start --head`), "
                                           "ray://host:10001 (default: $RAY_ADDRESS, else a local cluster on this machine).",
                                     redact="url")

    def __post_init__(self) -> None:
        if self.num_workers is not None and self.num_workers < 1:
            raise ConfigError(f"--num-workers must be ≥ 1, got {self.num_workers}")
