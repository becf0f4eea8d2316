"""Import third-party constitution files into our format.

- :func:`import_hf` reads Hugging Face's llm-swarm JSON
  (``{"constitutions": [{"critic", "revision"}, …], "system_chat": [[{role, content}, …], …]}``).
- :func:`import_anthropic` reads the critique/revision JSON Anthropic released with the
  Constitutional AI paper (``{id: {"prompt": [critique], "edit_request": revision}}``, texts wrapped in
  ``CritiqueRequest:``/``RevisionRequest:`` markers) and, optionally, its list of feedback principles
  (``"\\n<principle> Options:"``).

Both return a validated :class:`Constitution`. Structure problems raise :class:`ConstitutionError`
naming the file and the JSON path; parts that are well-formed but cannot be mapped (a few-shot
conversation of another shape) are skipped with a :class:`ConstitutionImportWarning`.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

from .loader import ConstitutionError, Problem, constitution_from_data, format_key_path, utf8_problem
from .schema import Constitution


class ConstitutionImportWarning(UserWarning):
    """Something in the source file was skipped or guessed; the user should review the result."""


def _read_json(path: Path) -> Any:
    try:
        data = path.read_bytes()
        return json.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise ConstitutionError(path, "file not found") from None
    except json.JSONDecodeError as e:
        raise ConstitutionError(path, [Problem("", f"not valid JSON: {e.msg} (column {e.colno})", e.lineno)]) from None
    except UnicodeDecodeError as e:
        line, message = utf8_problem(data, e)
        raise ConstitutionError(path, [Problem("", message, line)]) from None
    except RecursionError:
        raise ConstitutionError(path, "not valid JSON: nested too deeply") from None
    except OSError as e:
        raise ConstitutionError(path, f"cannot read the file: {e.strerror or e}") from None


def _expect(path: Path, loc: tuple, value: Any, kind: type | tuple, what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
        got = type(value).__name__ if not isinstance(value, str) else "an empty string"
        raise ConstitutionError(path, [Problem(format_key_path(loc) or "(top level)", f"expected {what}, got {got}")])
    return value


def _default_name(path: Path) -> str:
    """A schema-valid name from the file stem (``Anthropic constitution.json`` → ``Anthropic-constitution``)."""
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", path.stem).strip("-._")
    return name or "imported"


def _finish(data: dict, source: Path) -> Constitution:
    """Validate what an importer built; a failure here means our mapping is wrong for this file."""
    return constitution_from_data(data, f"{source} (imported)")


# ---- Hugging Face llm-swarm ---------------------------------------------------------------------

_FEW_SHOT_ROLES = ("user", "assistant", "user", "assistant", "user", "assistant")


def _normalise(text: str) -> str:
    return " ".join(text.split()).lower()


def import_hf(path: str | Path, *, name: str | None = None, version: str = "1.0") -> Constitution:
    """Read a Hugging Face llm-swarm constitution JSON.

    Each ``{"critic", "revision"}`` pair becomes a critique/revision principle ``hf-0001``, ``hf-0002``, ….
    Each ``system_chat`` conversation of the shape user (prompt) / assistant (response) / user (critique
    request) / assistant (critique) / user (revision request) / assistant (revision), optionally after a
    system message, becomes a few-shot example; its critique request is matched to a principle's text
    when one is identical (ignoring whitespace and case). Other shapes are skipped with a warning.
    """
    path = Path(path)
    data = _expect(path, (), _read_json(path), dict, 'a JSON object with "constitutions" and "system_chat"')
    pairs = _expect(path, ("constitutions",), data.get("constitutions"), list, "a list of {critic, revision} objects")
    unknown = sorted(set(data) - {"constitutions", "system_chat"})
    if unknown:
        warnings.warn(ConstitutionImportWarning(f"{path}: ignored top-level keys {unknown}"), stacklevel=2)

    principles = []
    by_request: dict[str, str] = {}
    for i, pair in enumerate(pairs):
        _expect(path, ("constitutions", i), pair, dict, "an object with keys critic and revision")
        critic = _expect(path, ("constitutions", i, "critic"), pair.get("critic"), str, "a non-empty string")
        revision = _expect(path, ("constitutions", i, "revision"), pair.get("revision"), str, "a non-empty string")
        pid = f"hf-{i + 1:04d}"
        principles.append({"id": pid, "critique": critic.strip(), "revision": revision.strip()})
        by_request.setdefault(_normalise(critic), pid)

    chats = data.get("system_chat", [])
    _expect(path, ("system_chat",), chats, list, "a list of conversations (lists of {role, content})")
    few_shot = []
    for i, chat in enumerate(chats):
        loc = ("system_chat", i)
        _expect(path, loc, chat, list, "a list of {role, content} messages")
        for j, message in enumerate(chat):
            _expect(path, loc + (j,), message, dict, "an object with role and content")
            _expect(path, loc + (j, "role"), message.get("role"), str, "a role string")
            _expect(path, loc + (j, "content"), message.get("content"), str, "a non-empty content string")
        turns = [m for m in chat if m["role"] != "system"] if chat and chat[0]["role"] == "system" else chat
        if tuple(m["role"] for m in turns) != _FEW_SHOT_ROLES:
            roles = "/".join(m["role"] for m in chat) or "empty"
            warnings.warn(
                ConstitutionImportWarning(
                    f"{path}: {format_key_path(loc)} skipped: roles {roles}, expected "
                    f"{'/'.join(_FEW_SHOT_ROLES)} (prompt, response, critique request, critique, revision request, revision)"
                ),
                stacklevel=2,
            )
            continue
        prompt, response, critique_request, critique, _revision_request, revision = (m["content"].strip() for m in turns)
        example = {"prompt": prompt, "response": response, "critique": critique, "revision": revision}
        principle = by_request.get(_normalise(critique_request))
        if principle:
            example["principle"] = principle
        few_shot.append(example)

    return _finish(
        {
            "name": name or _default_name(path),
            "version": version,
            "description": f"Imported from Hugging Face llm-swarm format: {path.name}",
            "critique_revision": principles,
            "few_shot": few_shot,
        },
        path,
    )


# ---- Anthropic (Constitutional AI paper release) -------------------------------------------------

_CRITIQUE_WRAPPER = re.compile(r"^\s*(?:CritiqueRequest:)?\s*(.*?)\s*(?:Critique:)?\s*$", re.DOTALL)
_REVISION_WRAPPER = re.compile(r"^\s*(?:RevisionRequest:)?\s*(.*?)\s*(?:Revision:)?\s*$", re.DOTALL)
_OPTIONS_SUFFIX = re.compile(r"\s*Options:\s*$")
# A feedback question asking for the *worse* response must have its label inverted (METHODS.md).
_ASKS_FOR_WORSE = re.compile(
    r"\b(more|most)\s+(harmful|dangerous|toxic|unethical|offensive|objectionable|racist|sexist|illegal|"
    r"immoral|inappropriate|problematic|biased|deceptive|manipulative)\b",
    re.IGNORECASE,
)


def _unwrap(pattern: re.Pattern, text: str) -> str:
    return pattern.match(text).group(1).strip()


def _principle_id(key: str) -> str:
    pid = re.sub(r"[^A-Za-z0-9_.\-]+", "-", key).strip("-._")
    return pid or "principle"


def import_anthropic(
    path: str | Path,
    feedback_path: str | Path | None = None,
    *,
    name: str | None = None,
    version: str = "1.0",
) -> Constitution:
    """Read Anthropic's critique/revision JSON (and optionally its feedback-principle list).

    The object's keys become principle ids; a principle with several critique texts becomes
    ``<id>``, ``<id>.2``, … sharing the revision request. Feedback principles get ids ``fb-0001``, …;
    a question asking which response is *more* harmful (or similar) gets ``invert: true``, with a
    warning so the user reviews the guess.
    """
    path = Path(path)
    data = _expect(path, (), _read_json(path), dict, "a JSON object mapping principle ids to {prompt, edit_request}")
    principles = []
    seen: set[str] = set()
    for key, entry in data.items():
        loc = (key,)
        _expect(path, loc, entry, dict, 'an object with "prompt" (list of critique requests) and "edit_request"')
        prompts = entry.get("prompt")
        if isinstance(prompts, str):
            prompts = [prompts]
        _expect(path, loc + ("prompt",), prompts, list, "a list of critique request strings")
        if not prompts:
            raise ConstitutionError(path, [Problem(format_key_path(loc + ("prompt",)), "expected at least one critique request, got an empty list")])
        edit = _expect(path, loc + ("edit_request",), entry.get("edit_request"), str, "a revision request string")
        revision = _unwrap(_REVISION_WRAPPER, edit)
        base = _principle_id(str(key))
        for k, prompt in enumerate(prompts):
            _expect(path, loc + ("prompt", k), prompt, str, "a critique request string")
            pid = base if k == 0 else f"{base}.{k + 1}"
            if pid in seen:
                raise ConstitutionError(path, [Problem(format_key_path(loc), f"principle id {pid!r} (made from this key) is used twice")])
            seen.add(pid)
            principles.append({"id": pid, "critique": _unwrap(_CRITIQUE_WRAPPER, prompt), "revision": revision})

    feedback = []
    if feedback_path is not None:
        feedback_path = Path(feedback_path)
        items = _expect(feedback_path, (), _read_json(feedback_path), list, "a JSON list of feedback principle strings")
        inverted = []
        for i, item in enumerate(items):
            _expect(feedback_path, (i,), item, str, "a feedback principle string")
            text = _OPTIONS_SUFFIX.sub("", item).strip()
            if not text:
                raise ConstitutionError(feedback_path, [Problem(f"[{i}]", "expected principle text before 'Options:', got nothing")])
            principle = {"id": f"fb-{i + 1:04d}", "text": text}
            if _ASKS_FOR_WORSE.search(text):
                principle["invert"] = True
                inverted.append(principle["id"])
            feedback.append(principle)
        if inverted:
            warnings.warn(
                ConstitutionImportWarning(
                    f"{feedback_path}: marked invert: true (the question asks for the worse response): "
                    f"{', '.join(inverted)}; please review"
                ),
                stacklevel=2,
            )

    sources = path.name + (f" + {feedback_path.name}" if feedback_path is not None else "")
    return _finish(
        {
            "name": name or _default_name(path),
            "version": version,
            "description": f"Imported from Anthropic's Constitutional AI release format: {sources}",
            "critique_revision": principles,
            "feedback": feedback,
        },
        path,
    )
