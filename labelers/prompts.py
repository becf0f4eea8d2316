"""The labelers' prompt templates: which text is scored and which continuations are compared.

Template TEXT lives in ``labelers/templates/<name>.j2`` (editable; a constitution's ``templates``
entry with the same name replaces it) and is rendered in the sandbox of
:mod:`constitution.templating`. What the toolkit needs to know about each template — the option
strings whose log-probs are compared, whether it is a chat template, the cue appended after a
chain-of-thought rationale — is fixed here, by name, because the arithmetic depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from constitution.schema import Constitution
from constitution.templating import render

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class TemplateSpec:
    name: str
    kind: str  # "comparison" (two responses), "binary" (yes/no on one response), "score" (1–10)
    options: tuple[str, ...]  # continuations scored after the rendered context, in meaning order
    chat: bool = False  # the rendered text is a user message, wrapped with engine.render_chat
    assistant_cue: str = ""  # chat templates: text the assistant "has already said" before the option
    answer_cue: str = ""  # appended after a chain-of-thought rationale, just before the option


TEMPLATES: dict[str, TemplateSpec] = {
    "cai_mc": TemplateSpec("cai_mc", "comparison", (" (A)", " (B)"), answer_cue="\nThe answer is:"),
    "rlaif": TemplateSpec("rlaif", "comparison", ("1", "2"), answer_cue="\nPreferred Response="),
    "chat": TemplateSpec("chat", "comparison", ("A", "B"), chat=True, assistant_cue="Answer: (",
                         answer_cue="\nAnswer: ("),
    "binary": TemplateSpec("binary", "binary", (" Yes", " No")),
    # The ratings right after "Rating:". " 1" is a prefix of " 10" in digit-splitting tokenizers;
    # labelers/score.py scores 1 as P(" 1") × (1 − P("0" | " 1")), so the ten ratings stay distinct.
    "score": TemplateSpec("score", "score", tuple(f" {i}" for i in range(1, 11))),
}
COMPARISON_TEMPLATES = tuple(n for n, s in TEMPLATES.items() if s.kind == "comparison")


def template_spec(name: str, kind: str) -> TemplateSpec:
    spec = TEMPLATES.get(name)
    if spec is None or spec.kind != kind:
        choices = ", ".join(n for n, s in TEMPLATES.items() if s.kind == kind)
        raise ValueError(f"unknown {kind} template {name!r}; choose one of: {choices}")
    return spec


def template_text(name: str, constitution: Constitution | None = None) -> tuple[str, str]:
    """(Jinja text, label for error messages): the constitution's override, else the packaged file."""
    if constitution is not None and name in constitution.templates:
        return constitution.templates[name], f"{constitution.ref} templates.{name}"
    path = TEMPLATE_DIR / f"{name}.j2"
    return path.read_text(encoding="utf-8"), str(path)


def conversation_text(messages: list[dict]) -> str:
    """A prompt as the Human/Assistant transcript the feedback templates show."""
    roles = {"user": "Human", "assistant": "Assistant", "system": "System"}
    parts = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in roles or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i}: expected {{'role': user|assistant|system, 'content': str}}, got {m!r}")
        parts.append(f"{roles[role]}: {m['content']}")
    return "\n\n".join(parts)


def render_context(spec: TemplateSpec, constitution: Constitution | None, engine, **variables) -> str:
    """The text whose continuations are scored (or, with a rationale to come, generated from).

    Trailing newlines of the template file are dropped so the scored option follows the cue
    directly; chat templates become the model's chat transcript plus the assistant cue."""
    text, label = template_text(spec.name, constitution)
    body = render(text, template_name=label, **variables).rstrip("\n")
    if not spec.chat:
        return body
    if variables.get("cot"):  # the model writes its reasoning as the assistant turn
        return engine.render_chat([{"role": "user", "content": body}], add_generation_prompt=True)
    return engine.render_chat([{"role": "user", "content": body}], add_generation_prompt=True) + spec.assistant_cue
