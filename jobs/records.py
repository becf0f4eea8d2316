"""Records as contracts: the base of every record / export-row model, and the one JSONL reader.

Each stage declares its records and export rows as pydantic models next to the code that writes
them (``generators/records.py``, ``labelers/records.py``); writers build records through the model
(:meth:`Record.dump` gives exactly the JSON line written) and readers validate through it.

:func:`read_jsonl` is the one reader of JSONL files: it yields ``(line number, object)`` per
non-empty line and reports every problem as ``file:line: message`` — bytes that are not UTF-8, invalid
JSON, a line that is not an object, and (with a ``model``) the first validation error as
``file:line: field.path: message``. :func:`write_export` writes an export (JSONL + ``datasets``
folder) atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from constitution.loader import format_key_path, utf8_problem

M = TypeVar("M", bound=BaseModel)


class JsonlError(ValueError):
    """A JSONL line that cannot be used; the message starts with ``file:line:``."""


class ExportError(RuntimeError):
    """A run that cannot be exported (not a run directory, another kind, a bad record line)."""


class Record(BaseModel):
    """A record or export row. Keys unknown to the model are kept (0.1.0 files and optional meta still
    read, and are written back as they were). :meth:`dump` writes the fields that were set (a None
    that was passed is written as ``null``), in the order the model declares them, then the extra
    keys; ``OMIT_NONE`` names fields left out even when set to None."""

    model_config = ConfigDict(extra="allow")
    OMIT_NONE: ClassVar[frozenset[str]] = frozenset()

    def dump(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_unset=True)
        return {k: v for k, v in data.items() if v is not None or k not in self.OMIT_NONE}


class Message(BaseModel):
    """One chat turn; only ``role`` and ``content`` (both strings) are kept."""

    model_config = ConfigDict(extra="ignore", strict=True)
    role: str
    content: str


class MessagesError(ValueError):
    """A malformed chat; the message starts with the field path (``messages[1].role: …``)."""


def check_messages(value: Any, field: str = "messages", *, roles: tuple[str, ...] | None = None,
                   last_role: tuple[str, str] | None = None, string_role: str | None = None) -> list[dict]:
    """The one check of a chat column: a non-empty list of ``{"role": str, "content": str}`` objects.

    Returns the messages as plain ``{"role", "content"}`` dicts. ``string_role`` accepts a bare
    string as one message of that role; ``roles`` limits the roles; ``last_role`` = (role, why)
    requires the last message's role. Raises :class:`MessagesError` naming ``field[i].key``.
    """
    if string_role is not None and isinstance(value, str):
        return [{"role": string_role, "content": value}]
    if not isinstance(value, list) or not value:
        what = "a string or a non-empty list" if string_role is not None else "a non-empty list"
        got = "an empty list" if isinstance(value, list) else type(value).__name__
        raise MessagesError(f"{field}: expected {what} of {{\"role\", \"content\"}} messages, got {got}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise MessagesError(f"{field}[{i}]: expected an object with string 'role' and 'content', got {m!r:.80}")
        if roles is not None and m["role"] not in roles:
            raise MessagesError(f"{field}[{i}].role: expected one of {', '.join(roles)}, got {m['role']!r}")
        out.append({"role": m["role"], "content": m["content"]})
    if last_role is not None and out[-1]["role"] != last_role[0]:
        raise MessagesError(f"{field}: expected the last message to be from the {last_role[0]} ({last_role[1]}), "
                            f"got {out[-1]['role']!r}")
    return out


def validation_message(error: ValidationError) -> str:
    """The first problem of a validation error as ``field.path: message``."""
    first = error.errors()[0]
    path = format_key_path(tuple(p for p in first["loc"] if not str(p).startswith("function-")))
    message = first["msg"]
    return f"{path}: {message}" if path else message


def validate(model: type[M], obj: Any, where: str, error: type[Exception] = JsonlError) -> M:
    """``model`` validated from ``obj``; a problem raises ``error("<where>: field.path: message")``."""
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        raise error(f"{where}: {validation_message(e)}") from None


def read_jsonl(path: str | Path, model: type[M] | None = None, *, error: type[Exception] = JsonlError,
               torn_tail_ok: bool = False, hint: str = "",
               utf8_message: Callable[[bytes, UnicodeDecodeError], str] | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, object)`` for each non-empty line of a JSONL file (``model`` instances
    with a ``model``). Problems raise ``error`` with ``file:line: …`` (+ ``hint``, e.g. what to do);
    with ``torn_tail_ok`` a last line without a newline that is not valid JSON (a run in progress or
    killed) ends the file instead. The file is read once, front to back, so a pipe (``/dev/stdin``,
    ``<(…)``) works too. ``utf8_message(line, error)`` overrides the wording of a non-UTF-8 line."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                message = utf8_message(raw, e) if utf8_message else utf8_problem(raw, e)[1]
                raise error(f"{path}:{number}: {message}{hint}") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as e:  # RecursionError: nested thousands deep
                if torn_tail_ok and not line.endswith("\n"):
                    return
                where = f" at column {e.colno}" if hasattr(e, "colno") else ""
                raise error(f"{path}:{number}: not valid JSON{where}: {getattr(e, 'msg', e)}{hint}") from None
            if not isinstance(obj, dict):
                raise error(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}{hint}")
            yield number, (validate(model, obj, f"{path}:{number}", error) if model is not None else obj)


def read_records(path: str | Path, model: type[BaseModel] | None = None, *,
                 error: type[Exception] = JsonlError) -> tuple[list[dict], int]:
    """(the records of a run's ``records.jsonl`` as dicts — the first of each id, each validated
    through ``model`` when given —, how many later duplicates were dropped). A missing file has no
    records; a torn last line (a run in progress or killed: the run will redo it) is left out."""
    if not Path(path).exists():
        return [], 0
    kept, seen, dropped = [], set(), 0
    for number, obj in read_jsonl(path, error=error, torn_tail_ok=True):
        if model is not None:
            validate(model, obj, f"{path}:{number}", error)
        key = obj.get("id", id(obj))
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(obj)
    return kept, dropped


# ---- writing exports ------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write rows to a JSONL file under a temporary name, then rename it (never half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_dataset(path: Path, rows: list[dict]) -> bool:
    """Save rows as a ``datasets`` folder; with no rows, remove any old folder (an empty dataset cannot be loaded)."""
    import datasets

    if not rows:
        shutil.rmtree(path, ignore_errors=True)
        return False
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # our own CLI prints one summary instead
    try:
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
        if path.exists():
            old = path.with_name(f".{path.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars_were_on:
            datasets.enable_progress_bars()
    return True


def write_export(exports: Path, name: str, rows: list[dict]) -> dict:
    """An export: ``<exports>/<name>.jsonl`` and the ``datasets`` folder ``<exports>/<name>/`` (no rows:
    none, and an old one is removed); returns ``{"jsonl", "dataset", "rows"}``."""
    exports = Path(exports)
    exports.mkdir(parents=True, exist_ok=True)
    write_jsonl(exports / f"{name}.jsonl", rows)
    saved = write_dataset(exports / name, rows)
    return {"jsonl": str(exports / f"{name}.jsonl"), "dataset": str(exports / name) if saved else None, "rows": len(rows)}
