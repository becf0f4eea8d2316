"""The commands a pipeline stage may run, each with its own config class (the one its CLI options are
generated from), the function that runs it in this process, what it produces (``outputs``: kind →
path inside the stage folder) and which kind of output each of its fields takes from a ``from:``
reference (``wants``)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from jobs.config import ConfigError, fail, save_config


@dataclass(frozen=True)
class Command:
    name: str
    config_cls: type
    run: Callable[[Any], Any]  # run(config); raises typer.Exit on a failure (after one `error:` line)
    outputs: dict[str, str]  # kind → path relative to the stage folder ("." = the folder itself)
    wants: dict[str, str] = field(default_factory=dict)  # config field → the output kind a `from:` gives it
    out_fields: dict[str, str] = field(default_factory=lambda: {"out": "."})  # fields the pipeline sets
    inputs: tuple[str, ...] = ()  # fields naming input files/folders (fingerprinted, checked to exist)
    fixed: dict[str, Any] = field(default_factory=dict)  # field values this command implies (rloo: algo=rloo)


MODEL_FIELDS = {"model": "model", "ref_model": "model"}
LABEL_OUTPUTS = {"run": "."}


def _trainer_run(target: str) -> Callable[[Any], None]:
    """Like `cai train X`: save OUT/config.yaml, call the trainer, turn its expected errors into one line."""

    def run(config: Any) -> None:
        import json

        import typer

        from trainers import cli as train_cli
        from trainers.config import CONFIG_FILE
        from trainers.data import DataError

        module_name, _, function_name = target.partition(":")
        try:
            save_config(config, Path(config.out) / CONFIG_FILE)
            summary = getattr(importlib.import_module(module_name), function_name)(config)
        except (ConfigError, DataError) as exc:
            raise fail(str(exc)) from None
        if not getattr(config, "quiet", False):
            brief = getattr(train_cli, "_brief", lambda v: v)  # what `cai train` prints: the summary less its bulky parts
            typer.echo(json.dumps(brief(summary), indent=2, default=str))

    return run


def _lazy(module: str, name: str) -> Callable[[Any], Any]:
    def run(config: Any) -> Any:
        return getattr(importlib.import_module(module), name)(config)

    return run


def commands() -> dict[str, Command]:
    """Every command a stage may name (config classes import no torch)."""
    from generators.config import PairsConfig, SLCAIConfig
    from labelers.config import BinaryConfig, EvalConfig, PreferenceConfig, ScoreConfig
    from trainers.cli import COMMANDS

    from .config import WinrateConfig

    table = [
        Command("sl-cai", SLCAIConfig, _lazy("generators.cli", "sl_cai"),
                {"run": ".", "sft": "exports/sft.jsonl", "prefs": "exports/prefs.jsonl"}, inputs=("prompts",)),
        Command("pairs", PairsConfig, _lazy("generators.cli", "pairs"), {"run": ".", "pairs": "exports/pairs.jsonl"},
                {"model": "model"}, inputs=("prompts",)),
        Command("label-preference", PreferenceConfig, _lazy("labelers.cli", "preference"), {"run": ".", "prefs": "exports/prefs.jsonl"},
                {"pairs": "run", "labeler_model": "model"}, inputs=("pairs",)),
        Command("label-binary", BinaryConfig, _lazy("labelers.cli", "binary"), {"run": ".", "kto": "exports/kto.jsonl"},
                {"inputs": "run", "labeler_model": "model"}, inputs=("inputs",)),
        Command("label-score", ScoreConfig, _lazy("labelers.cli", "score"), {"run": ".", "scores": "exports/scores.jsonl"},
                {"inputs": "run", "labeler_model": "model"}, inputs=("inputs",)),
        Command("label-eval", EvalConfig, _lazy("labelers.cli", "evaluate"),
                {"rows": "eval.jsonl", "metrics": "metrics.json", "plot": "calibration.png"}, {"labeler_model": "model"},
                out_fields={"out": "eval.jsonl", "metrics_out": "metrics.json", "plot": "calibration.png"}, inputs=("gold",)),
        Command("eval-winrate", WinrateConfig, _lazy("pipeline.cli", "winrate"), {"run": ".", "summary": "summary.json"},
                {"model_a": "model", "model_b": "model", "judge": "model", "judge_pm": "pm"}, inputs=("prompts",)),
    ]
    data_kind = {"sft": "sft", "pm": "prefs", "dpo": "prefs", "kto": "kto"}
    for name, cls, target, _help in COMMANDS:  # sft, pm, dpo, kto, ppo (and any trainer added there)
        wants = dict(MODEL_FIELDS)
        if name in data_kind:
            wants.update(data=data_kind[name], eval_data=data_kind[name])
        if "reward" in cls.model_fields:
            wants["reward"] = "pm"
        inputs = tuple(f for f in ("data", "eval_data", "prompts") if f in cls.model_fields)
        outputs = {"model": ".", "pm": "."} if name == "pm" else {"model": "."}
        table.append(Command(name, cls, _trainer_run(target), outputs, wants, inputs=inputs))
        if name == "ppo":
            table.append(Command("rloo", cls, _trainer_run(target), outputs, wants, inputs=inputs, fixed={"algo": "rloo"}))
    return {c.name: c for c in table}


def reference_value(command: Command, field_name: str, kind: str, path: Path, weight: Any = None) -> str:
    """What a `from:` reference becomes in a config: the output's path (``pm:PATH`` for a reward,
    ``PATH:WEIGHT`` for a weighted data source)."""
    text = str(path)
    if field_name == "reward":
        return f"pm:{text}"
    if weight is not None:
        return f"{text}:{weight}"
    return text
