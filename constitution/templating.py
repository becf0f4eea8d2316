"""Sandboxed Jinja rendering for templates stored in constitutions (and the labelers' own templates).

A constitution is a file someone may download; its templates must not be able to reach Python
internals. Rendering therefore uses :class:`jinja2.sandbox.SandboxedEnvironment` (attribute access
to ``__class__`` and friends raises :class:`jinja2.sandbox.SecurityError`) and
:class:`jinja2.StrictUndefined` (a misspelt variable is an error naming the template, not an empty
string silently dropped into a prompt).

Whitespace rules, chosen for prompt text: the text is rendered exactly as written except that a
block tag (``{% if %}``, ``{% for %}``) on its own line does not leave a blank line behind
(``trim_blocks`` + ``lstrip_blocks``); a trailing newline is kept. No HTML autoescaping.
"""

from __future__ import annotations

from functools import lru_cache

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment, SecurityError

__all__ = ["TemplateRenderError", "SecurityError", "render", "check_template", "template_variables"]


class TemplateRenderError(ValueError):
    """A template failed to parse or render. The message names the template and, for syntax errors, the line."""

    def __init__(self, template_name: str, reason: str, line: int | None = None):
        self.template_name = template_name
        self.reason = reason
        self.line = line
        where = f"{template_name}, line {line}" if line else template_name
        super().__init__(f"template {where}: {reason}")


_ENV = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


@lru_cache(maxsize=256)
def _compile(template_text: str, template_name: str) -> jinja2.Template:
    try:
        return _ENV.from_string(template_text)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateRenderError(template_name, f"syntax error: {e.message}", e.lineno) from None


def check_template(template_text: str, *, template_name: str = "<template>") -> None:
    """Raise :class:`TemplateRenderError` if the template does not parse."""
    _compile(template_text, template_name)


def template_variables(template_text: str, *, template_name: str = "<template>") -> set[str]:
    """Names the template reads from its variables (to check a template against what a caller provides)."""
    check_template(template_text, template_name=template_name)
    return set(meta.find_undeclared_variables(_ENV.parse(template_text)))


def render(template_text: str, /, *, template_name: str = "<template>", **variables) -> str:
    """Render ``template_text`` with ``variables`` in the sandbox.

    ``template_name`` only labels errors (e.g. ``"harmless@1.0 templates.preference"``).
    Raises :class:`TemplateRenderError` for syntax errors and undefined variables, and
    :class:`jinja2.sandbox.SecurityError` (with the template name added) for unsafe access.
    """
    template = _compile(template_text, template_name)
    try:
        return template.render(**variables)
    except SecurityError as e:
        raise SecurityError(f"template {template_name}: {e}") from None
    except jinja2.UndefinedError as e:
        provided = ", ".join(sorted(variables)) or "none"
        raise TemplateRenderError(template_name, f"{e.message} (variables provided: {provided})") from None
    except jinja2.TemplateError as e:
        raise TemplateRenderError(template_name, str(e)) from None
