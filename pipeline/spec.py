"""Reading a pipeline file: every stage's config validated (the command's own config class) before
anything runs; every problem is one line ``file:line: stages[3].config.lr: …``.

    stages:
      - name: sft                      # the stage runs in ROOT/sft/
        command: sft                   # sl-cai, pairs, sft, label-preference, pm, dpo, ppo, eval-winrate, …
        config:                        # exactly the command's options (YAML keys = option names)
          data: {from: sl-cai}         # an earlier stage's output instead of a path
          model: smollm2-135m

A reference is ``{from: STAGE}``; ``output: KIND`` picks another output of that stage (e.g. ``prefs`` of
an sl-cai stage) and ``weight: W`` makes a weighted data source (``PATH:W``). Paths are relative to the
directory ``cai run`` runs in, like the commands' ``--config`` files.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from constitution.loader import format_key_path
from jobs.config import _LOADING, ConfigError, read_yaml_config  # _LOADING: errors come back unrendered, we add file:line

from .commands import Command, commands, reference_value

TOP_KEYS = ("name", "description", "stages")
STAGE_KEYS = ("name", "command", "config", "description")
REF_KEYS = ("from", "output", "weight")
MANAGED = ("overwrite", "resume")  # how a stage resumes or starts over is decided by cai run
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class PipelineError(ValueError):
    """A pipeline file that cannot run; the message is one ``file:line: key.path: problem`` line."""


@dataclass(frozen=True)
class Ref:
    stage: str
    kind: str
    path: str  # relative to the stage folder


@dataclass
class Stage:
    index: int
    name: str
    command: Command
    config: Any  # the command's config, paths under ROOT filled in
    line: int
    refs: dict[str, Ref] = field(default_factory=dict)  # "data[0]" → reference
    upstream: list[str] = field(default_factory=list)  # stages referenced, in order
    inputs: dict[str, str] = field(default_factory=dict)  # field → external input path (fingerprinted)
    constitution_hash: str | None = None

    @property
    def folder(self) -> str:
        return self.name


class _Where:
    def __init__(self, path: Path, lines: dict):
        self.path, self.lines = path, lines

    def line(self, loc: tuple) -> int:
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return 1

    def error(self, loc: tuple, message: str) -> PipelineError:
        key = format_key_path(loc)
        return PipelineError(f"{self.path}:{self.line(loc)}: {key}: {message}" if key else f"{self.path}:{self.line(loc)}: {message}")


def _unknown(key: str, known) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=3, cutoff=0.6)
    return "unknown key" + (f" (did you mean {', '.join(close)}?)" if close else f" (known keys: {', '.join(known)})")


def load_pipeline(path: str | Path, root: str | Path) -> list[Stage]:
    """The stages of the pipeline file ``path`` with their configs (stage outputs under ``root``)."""
    path, root = Path(path), Path(root).resolve()
    try:
        data, lines = read_yaml_config(path, "pipeline files")
    except ConfigError as exc:
        raise PipelineError(str(exc).replace("--config ", "", 1)) from None
    at = _Where(path, lines)
    for key in data:
        if key not in TOP_KEYS:
            raise at.error((key,), _unknown(key, TOP_KEYS))
    stages_raw = data.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise at.error(("stages",), "expected a non-empty list of stages ({name, command, config})")
    table = commands()
    stages: list[Stage] = []
    for i, raw in enumerate(stages_raw):
        stages.append(_stage(at, i, raw, table, {s.name: s for s in stages}, root))
    return stages


def _stage(at: _Where, i: int, raw: Any, table: dict[str, Command], earlier: dict[str, Stage], root: Path) -> Stage:
    loc = ("stages", i)
    if not isinstance(raw, dict):
        raise at.error(loc, "expected a mapping {name, command, config}")
    for key in raw:
        if key not in STAGE_KEYS:
            raise at.error(loc + (key,), _unknown(key, STAGE_KEYS))
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise at.error(loc + ("name",), f"expected a stage name of letters, digits, '-', '_' or '.' (it names ROOT/<name>/), got {name!r}")
    if name in earlier:
        raise at.error(loc + ("name",), f"a stage named {name!r} is already defined (line {earlier[name].line})")
    command_name = raw.get("command")
    if command_name not in table:
        raise at.error(loc + ("command",), f"unknown command {command_name!r}; choose one of: {', '.join(table)}")
    command = table[command_name]
    config = raw.get("config", {}) or {}
    if not isinstance(config, dict):
        raise at.error(loc + ("config",), f"expected a mapping of {command_name} options, got {type(config).__name__}")
    stage = Stage(i, name, command, None, at.line(loc))
    cls, folder = command.config_cls, root / name
    values: dict[str, Any] = {}
    for key, value in config.items():
        key_loc = loc + ("config", key)
        field_name = str(key).replace("-", "_")
        if field_name not in cls.model_fields:
            raise at.error(key_loc, _unknown(key, list(cls.model_fields)))
        if field_name in command.out_fields:
            raise at.error(key_loc, f"set by cai run: the stage writes to ROOT/{name}/")
        if field_name in MANAGED:
            raise at.error(key_loc, "managed by cai run (a changed stage starts over, an interrupted one resumes)")
        if field_name in command.fixed and value != command.fixed[field_name]:
            raise at.error(key_loc, f"the {command_name} command means {field_name}: {command.fixed[field_name]}")
        values[field_name] = _resolve_refs(at, key_loc, field_name, value, command, stage, earlier, root)
        if isinstance(value, dict) and typing.get_origin(cls.model_fields[field_name].annotation) is list:
            values[field_name] = [values[field_name]]  # `reward: {from: pm}` where the option is repeatable
    for field_name, rel in command.out_fields.items():
        values[field_name] = str(folder / rel) if rel != "." else str(folder)
    values.update(command.fixed)
    for field_name, extra in ((n, f.json_schema_extra or {}) for n, f in cls.model_fields.items()):
        if isinstance(extra, dict) and extra.get("required") and values.get(field_name) in (None, "", []):
            raise at.error(loc + ("config",), f"missing required option {field_name} of {command_name}")
    stage.config = _validate(at, loc + ("config",), cls, values, config)
    _check_inputs(at, loc + ("config",), stage, config)
    return stage


def _resolve_refs(at, key_loc, field_name, value, command: Command, stage: Stage, earlier: dict[str, Stage], root: Path):
    if isinstance(value, list):
        return [_resolve_refs(at, key_loc + (j,), field_name, v, command, stage, earlier, root) for j, v in enumerate(value)]
    if not (isinstance(value, dict) and "from" in value):
        return value
    for key in value:
        if key not in REF_KEYS:
            raise at.error(key_loc + (key,), _unknown(key, REF_KEYS))
    source = value["from"]
    if source == stage.name:
        raise at.error(key_loc + ("from",), "a stage cannot take its own output")
    if source not in earlier:
        raise at.error(key_loc + ("from",), f"no earlier stage named {source!r}"
                       + (f"; earlier stages: {', '.join(earlier)}" if earlier else " (it is the first stage)"))
    producer = earlier[source]
    kind = value.get("output") or command.wants.get(field_name)
    if kind is None:
        raise at.error(key_loc, f"say which output of {source!r} to use: {{from: {source}, output: KIND}} with KIND one of "
                       f"{', '.join(producer.command.outputs)}")
    if kind not in producer.command.outputs:
        raise at.error(key_loc, f"stage {source!r} ({producer.command.name}) has no {kind!r} output; it has: "
                       f"{', '.join(producer.command.outputs)}")
    rel = producer.command.outputs[kind]
    stage.refs[format_key_path((field_name,) + key_loc[4:])] = Ref(source, kind, rel)
    if source not in stage.upstream:
        stage.upstream.append(source)
    out = root / source if rel == "." else root / source / rel
    return reference_value(command, field_name, kind, out, value.get("weight"))


def _validate(at: _Where, loc: tuple, cls, values: dict, written: dict):
    spelled = {str(k).replace("-", "_"): k for k in written}
    token = _LOADING.set(True)
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        original = (first.get("ctx") or {}).get("error")
        where = tuple(first.get("loc") or ())
        name = where[0] if where else None
        if isinstance(original, ConfigError):  # a cross-field check: "--batch-size must be ≥ 1" points at batch_size
            flag = re.match(r"--([a-z0-9-]+)", str(original))
            name = flag.group(1).replace("-", "_") if flag and flag.group(1).replace("-", "_") in spelled else None
            raise at.error(loc + ((spelled[name],) if name else ()), str(original)) from None
        key_loc = loc + ((spelled.get(name, name),) + where[1:] if name else ())
        kind, got = first.get("type", ""), first.get("input")
        if kind == "literal_error":
            message = f"{first.get('msg')}; got {got!r}"
        else:
            message = f"{first.get('msg', kind)} (got {got!r})"
        raise at.error(key_loc, message) from None
    except ConfigError as exc:
        raise at.error(loc, str(exc)) from None
    finally:
        _LOADING.reset(token)


def _check_inputs(at: _Where, loc: tuple, stage: Stage, written: dict) -> None:
    """External input files must exist now (an upstream stage's output appears when it runs); the
    constitution must load. Both are fingerprinted, so editing them reruns the stage."""
    from constitution.loader import ConstitutionError, resolve_constitution

    spelled = {str(k).replace("-", "_"): k for k in written}
    for field_name in stage.command.inputs:
        value = getattr(stage.config, field_name, None)
        items = value if isinstance(value, list) else [value]
        for j, item in enumerate(items):
            if item in (None, "") or format_key_path((field_name,) + ((j,) if isinstance(value, list) else ())) in stage.refs \
                    or (field_name in stage.refs):
                continue
            text = str(item)
            if not Path(text).exists() and ":" in text and Path(text.rsplit(":", 1)[0]).exists():
                text = text.rsplit(":", 1)[0]  # PATH:WEIGHT
            if not Path(text).exists():
                raise at.error(loc + (spelled.get(field_name, field_name),) + ((j,) if isinstance(value, list) else ()),
                               f"no such file or folder: {text}")
            stage.inputs[f"{field_name}[{j}]" if isinstance(value, list) else field_name] = text
    constitution = getattr(stage.config, "constitution", None)
    question = getattr(stage.config, "question", None)
    if constitution and not question:
        try:
            stage.constitution_hash = resolve_constitution(constitution).content_hash
        except ConstitutionError as exc:
            raise at.error(loc + (spelled.get("constitution", "constitution"),), str(exc).splitlines()[0]) from None
