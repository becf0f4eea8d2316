"""Load a constitution file (YAML or JSON) into a validated :class:`Constitution`.

Every problem is reported as a :class:`ConstitutionError` that names the file, the key path
(``critique_revision[3].revision``), the line where YAML puts it, and what was expected, so a
user can fix the file without reading a pydantic traceback.

YAML is read with the safe loader only; tags that would build Python objects are rejected, and so
are anchors and aliases (``&a`` / ``*a``): a recursive alias never ends and nested ones ("billion
laughs") grow exponentially, and a constitution has no need for either.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import BaseModel, ValidationError

from .schema import Constitution

LIBRARY_DIR = Path(__file__).resolve().parent / "library"
_MAX_REPORTED = 12  # a file with 200 problems is one mistake repeated; the first dozen are enough
_MAX_DEPTH = 50  # YAML nesting; a constitution needs 4 levels


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a constitution file."""

    key_path: str  # "" for the document itself
    message: str
    line: int | None = None  # 1-based, where known


class ConstitutionError(ValueError):
    """A constitution file could not be read or is not valid. ``problems`` lists every issue found."""

    def __init__(self, source: str | Path, problems: Iterable[Problem] | str):
        self.source = str(source)
        if isinstance(problems, str):
            problems = [Problem("", problems)]
        self.problems = list(problems)
        super().__init__(self._format())

    def _format(self) -> str:
        lines = []
        for p in self.problems[:_MAX_REPORTED]:
            where = f"{self.source}:{p.line}" if p.line else self.source
            lines.append(f"{where}: {p.key_path}: {p.message}" if p.key_path else f"{where}: {p.message}")
        if len(self.problems) > _MAX_REPORTED:
            lines.append(f"... and {len(self.problems) - _MAX_REPORTED} more problems")
        if len(lines) == 1:
            return lines[0]
        return f"{self.source}: {len(self.problems)} problems\n" + "\n".join("  " + s for s in lines)


# ---- key paths ---------------------------------------------------------------------------------


def format_key_path(loc: Iterable[Any]) -> str:
    """('critique_revision', 3, 'revision') -> 'critique_revision[3].revision'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_PATH_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def parse_key_path(text: str) -> tuple[Any, ...]:
    """Inverse of :func:`format_key_path` for the simple paths the schema writes in its own messages."""
    return tuple(int(m.group(2)) if m.group(2) is not None else m.group(1) for m in _PATH_TOKEN.finditer(text))


# ---- reading -----------------------------------------------------------------------------------


def _yaml_lines(node: yaml.Node, path: tuple = (), out: dict | None = None, dupes: list | None = None):
    """Map every key path in a composed YAML tree to its 1-based line; collect duplicate mapping keys."""
    if out is None:
        out, dupes = {}, []
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set = set()
        for key_node, value_node in node.value:
            key = key_node.value
            child = path + (key,)
            if key in seen:
                dupes.append(Problem(format_key_path(child), "duplicate key (YAML would silently keep only the last one)",
                                     key_node.start_mark.line + 1))
            seen.add(key)
            out[child] = key_node.start_mark.line + 1  # point at the key, that is where the user looks
            _yaml_lines(value_node, child, out, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _yaml_lines(item, path + (i,), out, dupes)
    return out, dupes


class YAMLRefused(yaml.YAMLError):
    """An anchor/alias or too deep nesting, refused by :class:`StrictLoader`; ``line`` is 1-based."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line, self.message = line, message


class StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing anchors/aliases and deep nesting as soon as the parser meets them
    (before any node is built). Also for other YAML the project reads: ``yaml.load(text, Loader=StrictLoader)``."""

    depth = 0
    kind = "constitutions"  # what the refusal says aliases are not allowed in

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise YAMLRefused(line, f"YAML aliases/anchors are not allowed in {self.kind}")
        if self.depth >= _MAX_DEPTH:
            raise YAMLRefused(line, f"nested more than {_MAX_DEPTH} levels deep")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def utf8_problem(data: bytes, error: UnicodeDecodeError) -> tuple[int, str]:
    """(1-based line, "not valid UTF-8 (byte 0xff at column 7)") for a decode error in ``data``."""
    start = data.rfind(b"\n", 0, error.start) + 1
    column = len(data[start : error.start].decode("utf-8", "replace")) + 1
    return data.count(b"\n", 0, start) + 1, f"not valid UTF-8 (byte 0x{data[error.start]:02x} at column {column})"


def _keep_version_text(root: yaml.Node, data: Any) -> None:
    """Keep ``version: 1.10`` as the text "1.10": YAML would read it as the float 1.1."""
    if not (isinstance(root, yaml.MappingNode) and isinstance(data, dict)):
        return
    for key_node, value_node in root.value:
        if key_node.value == "version" and isinstance(value_node, yaml.ScalarNode) and value_node.style is None:
            if isinstance(data.get("version"), (int, float)) and not isinstance(data.get("version"), bool):
                data["version"] = value_node.value


def _read_yaml(text: str, source: str) -> tuple[Any, dict]:
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConstitutionError(source, "the file is empty; expected a mapping with at least `name` and `version`")
        lines, dupes = _yaml_lines(node)
        if dupes:
            raise ConstitutionError(source, dupes)
        data = loader.construct_document(node)
        _keep_version_text(node, data)
    except YAMLRefused as e:
        raise ConstitutionError(source, [Problem("", e.message, e.line)]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        detail = " ".join(s for s in (e.context, e.problem) if s)
        raise ConstitutionError(source, [Problem("", f"not valid YAML: {detail}", line)]) from None
    except yaml.YAMLError as e:
        raise ConstitutionError(source, f"not valid YAML: {e}") from None
    finally:
        loader.dispose()
    return data, lines


def _reject_duplicate_json_keys(pairs):
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise ValueError(f"duplicate key {k!r}")
    return dict(pairs)


def _read_json(text: str, source: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_json_keys)
    except json.JSONDecodeError as e:
        raise ConstitutionError(source, [Problem("", f"not valid JSON: {e.msg} (column {e.colno})", e.lineno)]) from None
    except ValueError as e:
        raise ConstitutionError(source, f"not valid JSON: {e}") from None
    except RecursionError:
        raise ConstitutionError(source, "not valid JSON: nested too deeply") from None


def read_document(path: str | Path) -> tuple[Any, dict]:
    """Parse a YAML or JSON file; returns the data and a {key path tuple: line} map (empty for JSON)."""
    path = Path(path)
    source = str(path)
    try:
        data = path.read_bytes()  # read once: the path may be a pipe (/dev/stdin, <(…))
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise ConstitutionError(source, "file not found") from None
    except IsADirectoryError:
        raise ConstitutionError(source, "is a directory; expected a .yaml, .yml or .json file") from None
    except UnicodeDecodeError as e:
        line, message = utf8_problem(data, e)
        raise ConstitutionError(source, [Problem("", message, line)]) from None
    except OSError as e:
        raise ConstitutionError(source, f"cannot read the file: {e.strerror or e}") from None
    if path.suffix.lower() == ".json":
        return _read_json(text, source), {}
    return _read_yaml(text, source)


# ---- validation --------------------------------------------------------------------------------


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the last key of ``loc`` (to list its allowed keys)."""
    model: Any = Constitution
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        model = next((a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _describe(error: dict) -> tuple[tuple, str]:
    """Turn one pydantic error into (key path, human message saying what was expected)."""
    loc = tuple(error.get("loc", ()))
    kind = error.get("type", "")
    msg = error.get("msg", "")
    if kind == "extra_forbidden":
        model = _model_at(loc)
        allowed = sorted(model.model_fields) if model else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        text = "unknown key"
        if hint:
            text += f" (did you mean {hint[0]!r}?)"
        if allowed:
            text += f"; expected one of: {', '.join(allowed)}"
        return loc, text
    if kind == "missing":
        return loc, "required key is missing"
    if kind in ("value_error", "assertion_error") and not loc:
        # Cross-field checks in Constitution write "path: message" themselves.
        body = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        head, sep, rest = body.partition(": ")
        if sep and re.fullmatch(r"[A-Za-z_][\w.\[\]]*", head):
            return parse_key_path(head), rest
        return loc, body
    if kind == "model_type":
        return loc, f"expected a mapping of keys, got {type(error.get('input')).__name__}"
    got = error.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return loc, f"{msg[0].lower() + msg[1:] if msg else kind} (got {shown})"


def _line_for(loc: tuple, lines: dict) -> int | None:
    """Line of the deepest part of ``loc`` present in the file (a missing key points at its parent)."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def validation_problems(error: ValidationError, lines: dict | None = None) -> list[Problem]:
    lines = lines or {}
    problems = []
    for e in error.errors():
        loc, message = _describe(e)
        problems.append(Problem(format_key_path(loc), message, _line_for(loc, lines)))
    return problems


def _template_problems(constitution: Constitution, lines: dict) -> list[Problem]:
    """Templates are checked for syntax at load time, not when the labeler first renders them."""
    from .templating import TemplateRenderError, check_template

    problems = []
    for name, text in constitution.templates.items():
        try:
            check_template(text, template_name=f"templates.{name}")
        except TemplateRenderError as e:
            loc = ("templates", name)
            where = f" (line {e.line} of the template)" if e.line else ""
            problems.append(Problem(format_key_path(loc), e.reason + where, _line_for(loc, lines)))
    return problems


def constitution_from_data(data: Any, source: str | Path = "<data>", lines: dict | None = None) -> Constitution:
    """Validate already-parsed data (e.g. built by an importer); errors name ``source``."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise ConstitutionError(
            source, [Problem("", f"expected a mapping at the top level (name, version, ...), got {type(data).__name__}",
                             lines.get(()))]
        )
    try:
        constitution = Constitution.model_validate(data)
    except ValidationError as e:
        raise ConstitutionError(source, validation_problems(e, lines)) from None
    problems = _template_problems(constitution, lines)
    if problems:
        raise ConstitutionError(source, problems)
    return constitution


def load_constitution(path: str | Path) -> Constitution:
    """Read and validate a constitution file (``.yaml``/``.yml`` or ``.json``).

    Raises :class:`ConstitutionError` naming the file, key path, line and what was expected.
    """
    data, lines = read_document(path)
    return constitution_from_data(data, path, lines)


# ---- names -> files ----------------------------------------------------------------------------


def library_names() -> list[str]:
    """Names of the constitutions shipped with the toolkit (``constitution/library/*.yaml``)."""
    return sorted(p.stem for p in LIBRARY_DIR.glob("*.yaml"))


def resolve_constitution(name_or_path: str | Path | Constitution) -> Constitution:
    """Load a constitution given a file path, a shipped name (``harmless``) or ``name@version``.

    A path that exists wins over a shipped name. ``harmless@1.0`` also checks the version, so a run
    configured against one version fails loudly when the shipped file has moved on.
    """
    if isinstance(name_or_path, Constitution):
        return name_or_path
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return load_constitution(path)
    name, _, version = text.partition("@")
    looks_like_name = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name) and not re.search(r"\.(ya?ml|json)$", name)
    if not looks_like_name:
        raise ConstitutionError(text, "file not found")
    shipped = LIBRARY_DIR / f"{name}.yaml"
    if not shipped.exists():
        raise ConstitutionError(
            text,
            f"no such file, and no shipped constitution named {name!r}; shipped: {', '.join(library_names()) or 'none'}",
        )
    constitution = load_constitution(shipped)
    if version and constitution.version != version:
        raise ConstitutionError(shipped, f"version {version!r} was requested but this file is version {constitution.version!r}")
    return constitution
