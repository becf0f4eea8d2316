"""Reading prompt files: JSONL, plain text and hh-rlhf transcripts, with errors that name file and line.

Formats (``fmt=`` names one; else chosen by extension, then by content):

- JSONL (``.jsonl``, ``.json`` holding one object per line): each row has ``prompt`` (a string) or
  ``messages`` (a list of ``{"role", "content"}``), an optional ``id``, and any other keys (e.g.
  ``category``), which are kept in :attr:`PromptItem.meta`. A row with a ``chosen`` or ``transcript``
  string instead is an hh-rlhf transcript (see below).
- Plain text (``.txt``): one prompt per non-empty line.
- Any other name (``prompts``, ``/dev/stdin``, a ``<(…)`` pipe): JSONL if the first non-empty line
  starts with ``{``, hh-rlhf if it starts with ``Human:``, else plain text. The file is read once,
  so pipes work.
- hh-rlhf transcripts in a ``.txt``: a file whose first non-empty line starts with ``Human:`` holds
  ``\\n\\nHuman: …\\n\\nAssistant: …`` transcripts; separate several with a line holding only ``---``.

An hh transcript is split ONLY on the exact markers ``"\\n\\nHuman:"`` and ``"\\n\\nAssistant:"`` (a
turn containing ``": "`` stays whole), and the prompt is the conversation up to and including the last
Human turn (the final Assistant answer is dropped: the generator writes its own).

Ids: a row's ``id`` if given, else :func:`stable_id` of its messages. Duplicate ids: a row repeating an
earlier row's id *with the same messages* is dropped with a warning (it would produce the same record);
the same id with *different* messages is an error naming both lines.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from constitution.loader import utf8_problem
from jobs.records import MessagesError, check_messages
from jobs.rundir import stable_id

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
FORMATS = ("jsonl", "text", "hh")
_HH_MARKER = re.compile(r"(\n\nHuman:|\n\nAssistant:)")


class PromptFileError(ValueError):
    """A prompt file is unreadable or a line in it is malformed; the message names file and line."""


@dataclass
class PromptItem:
    id: str
    messages: list[dict]  # the conversation to answer; its last message is from the user
    meta: dict = field(default_factory=dict)  # other keys of the input row (category, source, …)
    line: int = 0  # 1-based line of the input file it came from (for messages only)

    @property
    def text(self) -> str:
        """The last user turn, for display."""
        return self.messages[-1]["content"]


class _BadLine(Exception):
    """Internal: one unusable row; ``read_prompts`` adds file and line."""


# ---- parsing one unit -----------------------------------------------------------------------------


def parse_hh_transcript(text: str) -> list[dict]:
    """``\\n\\nHuman: …\\n\\nAssistant: …`` → messages up to and including the last Human turn."""
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip("\n") if text.lstrip().startswith(("Human:", "Assistant:")) else text
    parts = _HH_MARKER.split(text)
    if parts[0].strip():
        raise _BadLine(f"expected a transcript starting with 'Human:', found {parts[0].strip()[:40]!r} before it")
    turns: list[dict] = []
    for marker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if "Human" in marker else "assistant"
        content = content.strip()
        if turns and turns[-1]["role"] == role:  # a malformed transcript repeating a speaker: keep its text
            turns[-1]["content"] = (turns[-1]["content"] + "\n\n" + content).strip()
        else:
            turns.append({"role": role, "content": content})
    last_user = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=None)
    if last_user is None:
        raise _BadLine("expected a transcript with at least one '\\n\\nHuman:' turn")
    turns = turns[: last_user + 1]
    if turns[0]["role"] != "user":  # starts with an Assistant turn: drop it, a chat starts with the user
        turns = turns[1:]
    if not turns[-1]["content"]:
        raise _BadLine("the last Human turn is empty")
    return turns


def _check_messages(messages: object) -> list[dict]:
    try:
        return check_messages(messages, "messages", roles=ROLES, last_role=("user", "the turn to answer"))
    except MessagesError as e:
        raise _BadLine(str(e)) from None


def _parse_json_row(text: str) -> tuple[str | None, list[dict], dict]:
    try:
        row = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: nested thousands deep
        raise _BadLine(f"expected a JSON object, got invalid JSON ({e})") from None
    if not isinstance(row, dict):
        raise _BadLine(f"expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        messages = _check_messages(row["messages"])
        used = {"messages"}
    elif "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise _BadLine("expected 'prompt' to be a non-empty string")
        messages = [{"role": "user", "content": row["prompt"].strip()}]
        used = {"prompt"}
    elif "chosen" in row or "transcript" in row:
        key = "transcript" if "transcript" in row else "chosen"
        if not isinstance(row[key], str):
            raise _BadLine(f"expected '{key}' to be an hh-rlhf transcript string")
        messages = parse_hh_transcript(row[key])
        used = {"chosen", "rejected", "transcript"}
    else:
        raise _BadLine("expected a 'prompt' string, a 'messages' list, or an hh-rlhf 'chosen'/'transcript' string")
    given_id = row.get("id")
    if given_id is not None and not isinstance(given_id, (str, int)):
        raise _BadLine("expected 'id' to be a string or an integer")
    meta = {k: v for k, v in row.items() if k not in used and k != "id"}
    return (str(given_id) if given_id is not None else None), messages, meta


# ---- splitting a file into units -----------------------------------------------------------------


def _detect_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if first.lstrip().startswith("Human:"):
        return "hh"
    if suffix in (".txt", ".text"):
        return "text"
    return "jsonl" if first.lstrip().startswith("{") else "text"  # no or unknown extension: sniff


def _units(fmt: str, text: str):
    """Yield (line number, raw text) per prompt unit."""
    lines = text.splitlines()
    if fmt in ("jsonl", "text"):
        for n, ln in enumerate(lines, 1):
            if ln.strip():
                yield n, ln
        return
    # hh .txt: transcripts separated by '---' lines
    start, buf = None, []
    for n, ln in enumerate(lines + ["---"], 1):
        if ln.strip() == "---":
            if start is not None and "".join(buf).strip():
                yield start, "\n".join(buf)
            start, buf = None, []
        else:
            if start is None and ln.strip():
                start = n
            if start is not None:
                buf.append(ln)


def read_prompts(path, *, skip_bad_lines: bool = False, rejects_path=None, fmt: str | None = None) -> list[PromptItem]:
    """Read a prompt file (``fmt`` one of :data:`FORMATS`, else by extension/content, see the module docstring).

    A malformed line raises :class:`PromptFileError` ``"<file>:<line>: <what was expected>"``. With
    ``skip_bad_lines`` it is written to ``rejects_path`` (default ``<file>.rejects.jsonl``) as
    ``{"file", "line", "error", "text"}`` and reading goes on.
    """
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise PromptFileError(f"{path}: unknown prompt format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    try:
        data = path.read_bytes()  # once, whole: the path may be a pipe (/dev/stdin, <(…))
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise PromptFileError(f"{path}: prompt file not found") from None
    except UnicodeDecodeError as e:
        line, message = utf8_problem(data, e)
        raise PromptFileError(f"{path}:{line}: {message}") from None
    except OSError as e:
        raise PromptFileError(f"{path}: cannot read ({e.strerror or e})") from None
    fmt = fmt or _detect_format(path, text)

    items: list[PromptItem] = []
    rejects: list[dict] = []
    first_seen: dict[str, PromptItem] = {}
    dropped = 0
    for line_no, raw in _units(fmt, text):
        try:
            if fmt == "jsonl":
                given_id, messages, meta = _parse_json_row(raw)
            elif fmt == "hh":
                given_id, messages, meta = None, parse_hh_transcript(raw), {}
            else:
                given_id, messages, meta = None, [{"role": "user", "content": raw.strip()}], {}
            item = PromptItem(id=given_id or stable_id(messages), messages=messages, meta=meta, line=line_no)
            earlier = first_seen.get(item.id)
            if earlier is not None:
                if earlier.messages == item.messages:
                    dropped += 1
                    continue
                raise _BadLine(f"duplicate id {item.id!r} (first used on line {earlier.line} with a different prompt); ids must be unique")
        except _BadLine as e:
            if not skip_bad_lines:
                raise PromptFileError(f"{path}:{line_no}: {e} (pass --skip-bad-lines to set such lines aside)") from None
            rejects.append({"file": str(path), "line": line_no, "error": str(e), "text": raw})
            continue
        first_seen[item.id] = item
        items.append(item)

    if dropped:
        log.warning("%s: dropped %d repeated prompt(s) (same id and same messages as an earlier line)", path, dropped)
    if rejects:
        rejects_file = Path(rejects_path) if rejects_path else path.with_name(path.name + ".rejects.jsonl")
        try:
            rejects_file.parent.mkdir(parents=True, exist_ok=True)
            with open(rejects_file, "w", encoding="utf-8") as f:
                for r in rejects:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        except OSError as e:  # e.g. next to /dev/stdin
            raise PromptFileError(f"{path}: cannot write the skipped lines to {rejects_file} ({e.strerror or e}); "
                                  "pass --rejects FILE") from None
        log.warning("%s: skipped %d bad line(s); written to %s", path, len(rejects), rejects_file)
    if not items:
        raise PromptFileError(f"{path}: no prompts found (expected {'JSONL rows' if fmt == 'jsonl' else 'non-empty lines'})")
    return items
