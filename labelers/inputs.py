"""Reading what the labelers label: pair runs from ``cai generate pairs`` or a user's own JSONL file.

Accepted inputs (one JSON object per line):
- a pair run directory (or its ``records.jsonl``): ``{"id", "messages", "responses": [≥2 str], …}``
- ``{"prompt", "chosen", "rejected"}`` — response_a = chosen, response_b = rejected (the order is
  recorded; both-orders scoring removes any advantage of coming first)
- ``{"prompt", "response_a", "response_b"}``
- for single responses (binary, score): ``{"prompt", "response"}`` or ``{"prompt", "completion"}``
``prompt`` is a string (one user turn) or a list of chat messages; a response is a string, or a
list of messages whose last one is the response (TRL's conversational columns).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from jobs.records import MessagesError, check_messages
from jobs.records import read_jsonl as read_jsonl_lines
from jobs.rundir import stable_id


class InputError(ValueError):
    pass


@dataclass(frozen=True)
class Comparison:
    id: str  # stable: derived from the source record and which two responses
    source_id: str
    prompt: list[dict]
    response_a: str
    response_b: str
    indices: tuple[int, int] | None = None  # positions in a pair record's "responses"
    input_chosen: str | None = None  # "a" when the input file said response_a is chosen
    meta: dict = field(default_factory=dict)  # the source's model/engine, carried to the record


@dataclass(frozen=True)
class Single:
    id: str
    source_id: str
    prompt: list[dict]
    response: str
    meta: dict = field(default_factory=dict)


def _records_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "records.jsonl"
    if not path.exists():
        raise InputError(f"{path}: no such file (expected a pair run directory or a JSONL file)")
    return path


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-empty line (:func:`jobs.records.read_jsonl`); a bad line is
    an :class:`InputError` naming it, as is a missing or empty file."""
    if not Path(path).exists() or Path(path).is_dir():
        raise InputError(f"{path}: no such file")
    rows = list(read_jsonl_lines(path, error=InputError))
    if not rows:
        raise InputError(f"{path}: no records")
    return rows


def _where(path, number, key):
    return f"{path}:{number}: key {key!r}"


def as_messages(value, where: str) -> list[dict]:
    """A prompt: a string (one user turn) or a list of chat messages."""
    try:
        return check_messages(value, "", string_role="user")
    except MessagesError as e:
        raise InputError(f"{where}: {str(e).removeprefix(': ')}") from None


def as_response(value, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    raise InputError(f"{where}: expected a string or a list of messages ending with the response")


def _prompt(obj, path, number) -> list[dict]:
    if "messages" in obj:
        return as_messages(obj["messages"], _where(path, number, "messages"))
    if "prompt" in obj:
        return as_messages(obj["prompt"], _where(path, number, "prompt"))
    raise InputError(f"{path}:{number}: missing key 'prompt' (or 'messages')")


def _source_meta(obj) -> dict:
    return {k: obj[k] for k in ("model", "engine", "constitution", "constitution_hash") if k in obj}


def load_comparisons(path: str | Path, *, all_pairs: bool = False) -> list[Comparison]:
    """Comparisons to label. Pair records with more than two responses give (0, 1), or every
    pair i < j with ``all_pairs``."""
    path = _records_file(path)
    out: list[Comparison] = []
    for number, obj in read_jsonl(path):
        prompt = _prompt(obj, path, number)
        if "responses" in obj:
            responses = obj["responses"]
            if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
                raise InputError(f"{_where(path, number, 'responses')}: expected a list of at least 2 strings")
            source_id = str(obj.get("id") or stable_id(prompt, responses))
            index_pairs = itertools.combinations(range(len(responses)), 2) if all_pairs else [(0, 1)]
            for i, j in index_pairs:
                out.append(Comparison(stable_id("comparison", source_id, i, j), source_id, prompt,
                                      responses[i], responses[j], (i, j), None, _source_meta(obj)))
        elif "chosen" in obj and "rejected" in obj:
            a = as_response(obj["chosen"], _where(path, number, "chosen"))
            b = as_response(obj["rejected"], _where(path, number, "rejected"))
            source_id = str(obj.get("id") or stable_id(prompt, a, b))
            out.append(Comparison(stable_id("comparison", source_id, a, b), source_id, prompt, a, b,
                                  None, "a", _source_meta(obj)))
        elif "response_a" in obj and "response_b" in obj:
            a = as_response(obj["response_a"], _where(path, number, "response_a"))
            b = as_response(obj["response_b"], _where(path, number, "response_b"))
            source_id = str(obj.get("id") or stable_id(prompt, a, b))
            out.append(Comparison(stable_id("comparison", source_id, a, b), source_id, prompt, a, b,
                                  None, None, _source_meta(obj)))
        else:
            raise InputError(
                f"{path}:{number}: expected 'responses' (a pair run), 'chosen'+'rejected', or 'response_a'+'response_b'"
            )
    return out


def load_singles(path: str | Path) -> list[Single]:
    """Single responses to label: every response of a pair run / preference file, or prompt+response rows."""
    path = _records_file(path)
    out: list[Single] = []
    for number, obj in read_jsonl(path):
        prompt = _prompt(obj, path, number)
        if "responses" in obj:
            responses = [(f"responses[{i}]", r) for i, r in enumerate(obj["responses"] or [])]
        else:
            keys = [k for k in ("response", "completion", "chosen", "rejected", "response_a", "response_b") if k in obj]
            if not keys:
                raise InputError(f"{path}:{number}: expected 'response' or 'completion' (or a pair: 'responses', 'chosen'/'rejected')")
            responses = [(k, obj[k]) for k in keys]
        source_id = str(obj.get("id") or stable_id(prompt, [r for _, r in responses]))
        for key, value in responses:
            text = as_response(value, _where(path, number, key))
            out.append(Single(stable_id("single", source_id, key, text), source_id, prompt, text, _source_meta(obj)))
    return out
