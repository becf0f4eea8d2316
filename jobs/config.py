"""One config system for every command: a pydantic model per command, its CLI options generated from it.

    class PairsConfig(CommandConfig):
        prompts: Path = opt(..., "Prompt file …", short="-p", required=True)
        n: int = opt(2, "Responses sampled per prompt.")

    pairs_command = config_command(PairsConfig, run)   # typer command: --prompts/-p, --n, --config FILE

Values resolve as defaults < ``--config`` YAML file < options given on the command line. Unknown keys
and wrongly typed values are one ``ConfigError`` naming ``file:line: key.path``; the resolved config
is saved beside the run (``dump_config``/``save_config``) and loads back with ``--config``.
Ground floor: imports no stage package (generators, labelers, trainers).
"""

from __future__ import annotations

import contextvars
import difflib
import inspect
import os
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Optional

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A bad option or config file; the message names the option, or the file, line and key."""


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one ``error: …`` line to stderr; ``raise fail(...)`` exits with ``code``."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def opt(default: Any = ..., help: str = "", *, short: str | None = None, flag: str | None = None,
        positional: bool = False, required: bool = False, transient: bool = False, metavar: str | None = None,
        redact: str | None = None) -> Any:
    """A config field with its CLI help: ``lr: float = opt(1e-5, "peak learning rate")``.

    ``short`` adds an alias (``-o``); ``flag`` replaces the long name (default ``--field-name``);
    ``positional`` makes it a CLI argument; ``required`` = must be given (CLI or file) and not empty;
    ``transient`` = how to run, not what (``--overwrite``, ``--quiet``): left out of the saved config;
    ``redact`` = "url" | "options": credentials are masked in the saved config."""
    extra = {k: v for k, v in dict(short=short, flag=flag, positional=positional, required=required,
                                     transient=transient, metavar=metavar, redact=redact).items() if v}
    if isinstance(default, list):
        return Field(default_factory=lambda: list(default), description=help, json_schema_extra=extra)
    return Field(default, description=help, json_schema_extra=extra)


_LOADING = contextvars.ContextVar("jobs_config_loading", default=False)


class CommandConfig(BaseModel):
    """Base of every command's config: unknown keys are errors; every error is a ``ConfigError``."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, protected_namespaces=())
    yaml_kind: ClassVar[str] = "config files"  # "YAML aliases/anchors are not allowed in <kind>"

    def __init__(self, **data: Any) -> None:
        if _LOADING.get():  # load_config renders the error itself, with file and line
            super().__init__(**data)
            return
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_render(type(self), exc, set(data), None, {}, {})) from None

    def model_post_init(self, context: Any) -> None:
        """Cross-field checks go in ``__post_init__`` (raise ConfigError); it runs after validation."""
        check = getattr(self, "__post_init__", None)
        if check is not None:
            check()


def _extra(cls: type[BaseModel], name: str) -> dict:
    extra = cls.model_fields[name].json_schema_extra
    return extra if isinstance(extra, dict) else {}


def flag_name(cls: type[BaseModel], name: str) -> str:
    """How the CLI spells a field: ``--batch-size``, or ``RUN_DIR`` for a positional argument."""
    extra = _extra(cls, name)
    if extra.get("positional"):
        return extra.get("metavar") or name.upper()
    return extra.get("flag") or "--" + name.replace("_", "-")


def _base(hint: Any) -> Any:
    """``X | None`` → ``X``."""
    args = typing.get_args(hint)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


def _choices(cls: type[BaseModel], name: str) -> tuple | None:
    hint = _base(cls.model_fields[name].annotation)
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


# ---- loading ---------------------------------------------------------------------------------------


def read_yaml_config(path: str | Path, kind: str = "config files") -> tuple[dict, dict]:
    """The mapping in a YAML file and the 1-based line of every key path (``constitution.loader``'s
    refusing loader: no anchors/aliases, no deep nesting, no duplicate keys)."""
    import yaml

    from constitution.loader import StrictLoader, YAMLRefused, _yaml_lines

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not UTF-8 text") from None
    loader = StrictLoader(text)
    loader.kind = kind
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        lines, dupes = _yaml_lines(node)
        if dupes:
            raise ConfigError(f"{path}:{dupes[0].line}: {dupes[0].key_path}: {dupes[0].message}")
        data = loader.construct_document(node)
    except YAMLRefused as exc:
        raise ConfigError(f"{path}:{exc.line}: {exc.message}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {' '.join(s for s in (exc.context, exc.problem) if s)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({exc})") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping of option: value at the top level")
    return data, lines


def load_config(cls: type[CommandConfig], yaml_path: str | Path | None = None, **cli_values: Any) -> Any:
    """``cls`` from defaults < YAML file < ``cli_values`` (``None`` / empty list = not given). YAML keys
    may use ``-`` or ``_``. Errors: ``file:line: key.path: unknown key (did you mean …?)``,
    ``file:line: key.path: <problem>``, ``--option <problem>``, ``missing required option --x``."""
    fields = cls.model_fields
    from_file: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # field name -> the key as written in the file
    lines: dict = {}
    if yaml_path is not None:
        data, lines = read_yaml_config(yaml_path, cls.yaml_kind)
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in fields:
                close = difflib.get_close_matches(name, list(fields), n=3, cutoff=0.6)
                initials = "".join(w[:1] for w in name.split("_"))  # learning_rate → lr
                close += [f for f in fields if f not in close and (f == initials or len(name) >= 4 and f.startswith(name[:4]))]
                hint = f" (did you mean {', '.join(close)}?)" if close else f" (known keys: {', '.join(fields)})"
                raise ConfigError(f"{yaml_path}:{lines.get((key,), 1)}: {key}: unknown key{hint}")
            from_file[name], spelled[name] = value, str(key)
    given: dict[str, Any] = {}
    for name, value in cli_values.items():
        if name not in fields:
            raise ConfigError(f"unknown option {name!r} for {cls.__name__}")
        if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
            continue
        given[name] = list(value) if isinstance(value, tuple) else value
    merged = {**from_file, **given}
    for name in fields:
        if _extra(cls, name).get("required") and merged.get(name) in (None, "", []):
            raise ConfigError(f"missing required option {flag_name(cls, name)} (or `{name}:` in the config file)")
    token = _LOADING.set(True)
    try:
        return cls.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_render(cls, exc, set(given), yaml_path, lines, spelled)) from None
    finally:
        _LOADING.reset(token)


def _render(cls: type[BaseModel], exc: ValidationError, from_cli: set, yaml_path, lines: dict, spelled: dict) -> str:
    """The first problem of a ValidationError as one line; a ConfigError raised by a validator is kept."""
    errors = exc.errors()
    first = errors[0]
    original = (first.get("ctx") or {}).get("error")
    if isinstance(original, ConfigError):
        return str(original)
    loc = tuple(first.get("loc") or ())
    name = loc[0] if loc and loc[0] in cls.model_fields else None
    kind, value = first.get("type", ""), first.get("input")
    choices = _choices(cls, name) if name else None
    if kind == "missing" and name:
        return f"missing required option {flag_name(cls, name)} (or `{name}:` in the config file)"
    if kind == "literal_error" and choices:
        message = f"must be one of {', '.join(map(str, choices))}; got {value!r}"
    elif kind.endswith(("_type", "_parsing")) and "_" in kind:
        message = f"expected {kind.split('_')[0]}, got {value!r}"
    else:
        message = f"{first.get('msg', kind)} (got {value!r})"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    if name is None or name in from_cli or yaml_path is None or name not in spelled:
        where = flag_name(cls, name) if name else cls.__name__
        return f"{where} {message}{more}" if message.startswith("must") else f"{where}: {message}{more}"
    path = (spelled[name],) + loc[1:]
    line = next((lines[path[:i]] for i in range(len(path), 0, -1) if path[:i] in lines), 1)
    from constitution.loader import format_key_path

    return f"{yaml_path}:{line}: {format_key_path(path)}: {message}{more}"


# ---- saving ----------------------------------------------------------------------------------------


def config_to_dict(config: BaseModel, *, resolved: bool = False) -> dict[str, Any]:
    """Every field as plain JSON/YAML values (paths as text); ``resolved=True`` leaves out the transient
    ones (``--overwrite``, ``--quiet``): what the saved config of a run holds."""
    data = config.model_dump(mode="json")
    if resolved:
        data = {k: _redacted(v, _extra(type(config), k).get("redact")) for k, v in data.items()
                if not _extra(type(config), k).get("transient")}
    return data


_SECRET_KEY = ("key", "token", "secret", "password", "auth")


def _redacted(value: Any, how: str | None) -> Any:
    """Credentials never reach a saved config: a URL's userinfo and credential-like query values, and the
    values of KEY=VALUE items whose KEY looks like a credential (api_key=…, token=…)."""
    if how == "url" and isinstance(value, str):
        from engines.openai_client import redact_url

        return redact_url(value)
    if how == "options" and isinstance(value, list):
        return [f"{k}=***" if sep and any(w in k.lower() for w in _SECRET_KEY) and not k.lower().endswith("_env") else item
                for item in value for k, sep, _ in [str(item).partition("=")]]
    return value


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML text that ``--config`` loads back."""
    import yaml

    return yaml.safe_dump(config_to_dict(config, resolved=True), sort_keys=False, allow_unicode=True)


def save_config(config: BaseModel, path: str | Path) -> Path:
    """Write ``dump_config(config)`` to ``path`` atomically (replace, never append)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(dump_config(config), encoding="utf-8")
    os.replace(tmp, path)
    return path


# ---- the CLI ---------------------------------------------------------------------------------------

CONFIG_HELP = "YAML file of options (keys = option names, e.g. OUT/config.yaml of an earlier run); command-line options win."


def _parameter(cls: type[BaseModel], name: str) -> inspect.Parameter:
    info, extra = cls.model_fields[name], _extra(cls, name)
    hint = _base(info.annotation)
    help_text = info.description or ""
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    choices = _choices(cls, name)
    if extra.get("required"):
        help_text += "  [required]"
    elif default not in (None, "", []) and not isinstance(default, bool) or default is True:
        help_text += f"  [default: {default}]"
    if extra.get("positional"):
        metavar = extra.get("metavar") or name.upper()
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path if hint is Path else str],
                                 default=typer.Argument(None, help=help_text, show_default=False, metavar=metavar))
    long = flag_name(cls, name)
    short = [extra["short"]] if extra.get("short") else []
    if hint is bool:
        option = typer.Option(None, f"{long}/--no-{long[2:]}", *short, help=help_text, show_default=False)
        annotation: Any = Optional[bool]
    elif typing.get_origin(hint) is list:
        option = typer.Option(None, long, *short, help=help_text if "repeatable" in help_text else help_text + " (repeatable)", show_default=False, metavar="TEXT")
        annotation = Optional[list[str]]
    else:
        if choices:
            metavar, hint = "[" + "|".join(map(str, choices)) + "]", str
        else:
            metavar = extra.get("metavar") or {str: "TEXT", Path: "PATH"}.get(hint, getattr(hint, "__name__", "TEXT").upper())
        if hint not in (str, int, float, Path):
            hint = str
        option = typer.Option(None, long, *short, help=help_text, show_default=False, metavar=metavar)
        annotation = Optional[hint]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option)


def config_command(cls: type[CommandConfig], run: Callable[[Any], Any], *, extra_params: tuple = (),
                   prepare: Callable[[dict], None] | None = None) -> Callable[..., Any]:
    """A typer command whose options are ``cls``'s fields plus ``--config FILE``; it resolves the config
    with ``load_config`` (errors: one ``error:`` line, exit 2) and calls ``run(config)``. The command's
    help is ``run.__doc__``. ``extra_params`` are more typer parameters that are not config fields;
    ``prepare(values)`` turns them into field values (and removes them) before loading."""
    params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                default=typer.Option(None, "--config", metavar="FILE", help=CONFIG_HELP))]
    fields = list(cls.model_fields)
    fields.sort(key=lambda n: (not _extra(cls, n).get("positional"), not _extra(cls, n).get("required")))  # arguments, required first
    params += [_parameter(cls, name) for name in fields] + list(extra_params)

    def command(**values: Any) -> Any:
        yaml_path = values.pop("config")
        if prepare is not None:
            prepare(values)
        try:
            config = load_config(cls, yaml_path, **values)
        except ConfigError as exc:
            raise fail(str(exc)) from None
        return run(config)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = run.__doc__
    command.__name__ = getattr(run, "__name__", "command")
    return command
