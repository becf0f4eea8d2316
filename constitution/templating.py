"""Sandboxed Jinja rendering for templates stored in constitutions (and the labelers' own templates).

A constitution is a file someone may download; its templates must not be able to reach Python
internals or exhaust the machine. Rendering therefore uses a :class:`jinja2.sandbox.SandboxedEnvironment`
(attribute access to ``__class__`` and friends is refused) with :class:`jinja2.StrictUndefined` (a
misspelt variable is an error naming the template, not an empty string silently dropped into a
prompt), and with limits on cost, like the sandbox's own ``MAX_RANGE`` for ``range()``:

- access to attributes starting with ``_`` (or ``mro``) is refused when the template is loaded;
- no string, list or printed value may exceed :data:`MAX_SIZE` characters/items (``*``, ``+``,
  ``~``, ``%`` widths, integer arguments to methods and filters), nor the rendered text;
- integers from ``*`` and ``**`` stay below :data:`MAX_INT_BITS` bits;
- a render may take at most :data:`MAX_STEPS` loop iterations and calls.

Any failure, these included, is a :class:`TemplateRenderError` naming the template and line.

Whitespace rules, chosen for prompt text: the text is rendered exactly as written except that a
block tag (``{% if %}``, ``{% for %}``) on its own line does not leave a blank line behind
(``trim_blocks`` + ``lstrip_blocks``); a trailing newline is kept. No HTML autoescaping.
"""

from __future__ import annotations

import re
import traceback
from contextvars import ContextVar
from functools import lru_cache, wraps

import jinja2
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
    SandboxedEnvironment,
    SecurityError,
)
from jinja2.utils import _PassArg

__all__ = ["TemplateRenderError", "SecurityError", "render", "check_template", "template_variables",
           "MAX_SIZE", "MAX_INT_BITS", "MAX_STEPS"]

MAX_SIZE = 1_000_000  # characters (or items) of any value a template builds, and of its output
MAX_INT_BITS = 4096  # integers built with * and ** (10**1000 is ~3300 bits)
MAX_STEPS = 200_000  # loop iterations + calls (10 each) + container items measured, per render
_CALL_STEPS = 10  # a call (a macro runs ~10x slower than a loop iteration) costs this many steps
_UNSAFE_NAMES = {"mro", *UNSAFE_GENERATOR_ATTRIBUTES, *UNSAFE_COROUTINE_ATTRIBUTES, *UNSAFE_ASYNC_GENERATOR_ATTRIBUTES}
_FORMAT_NUMBERS = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?|\{[^{}]*:[^{}\d]*(\d*)(?:\.(\d*))?")
_NESTED_FORMAT = re.compile(r"\{[^{}]*:[^{}]*\{")  # '{:>{width}}'
_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill", "expandtabs"}


class TemplateRenderError(ValueError):
    """A template failed to parse or render. The message names the template and, for syntax errors, the line."""

    def __init__(self, template_name: str, reason: str, line: int | None = None):
        self.template_name = template_name
        self.reason = reason
        self.line = line
        where = f"{template_name}, line {line}" if line else template_name
        super().__init__(f"template {where}: {reason}")


# ---- cost limits -----------------------------------------------------------------------------------

_BUDGET: ContextVar[list] = ContextVar("template_budget")


def _step(n: int = 1) -> None:
    budget = _BUDGET.get(None)
    if budget is not None:
        budget[0] -= n
        if budget[0] < 0:
            raise SecurityError(f"the template takes more than {MAX_STEPS} steps (loop iterations and calls)")


def _size(value) -> int:
    """Characters of a string, or items of a (nested) container counting the strings' characters;
    stops counting a little past MAX_SIZE. Each item looked at costs a step."""
    if isinstance(value, (str, bytes)):
        return len(value)
    total, stack = 0, [value]
    while stack and total <= MAX_SIZE:
        v = stack.pop()
        if isinstance(v, (str, bytes)):
            total += len(v)
        elif isinstance(v, dict):
            stack.extend(v.items())
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += len(v)
            _step(len(v))
            stack.extend(v)
    return total


def _check_size(value, what: str):
    if _size(value) > MAX_SIZE:
        raise SecurityError(f"{what} would be larger than {MAX_SIZE} characters/items")
    return value


def _check_int_args(args, kwargs, what: str) -> None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and abs(a) > MAX_SIZE:
            raise SecurityError(f"{what}: argument {a} is larger than the limit {MAX_SIZE}")


def _check_format(text: str, args) -> None:
    """Refuse '%999999999d' / '{:>999999999}' style widths (and '*' widths taken from a large argument)."""
    if _NESTED_FORMAT.search(text):
        raise SecurityError("format widths taken from arguments ('{:{w}}') are not supported in templates")
    for m in _FORMAT_NUMBERS.finditer(text):
        for n in filter(None, m.groups()):
            if n == "*":
                _check_int_args(args if isinstance(args, tuple) else (args,), {}, "a '*' format width")
            elif int(n) > MAX_SIZE:
                raise SecurityError(f"format width {n} is larger than the limit {MAX_SIZE}")


def _check_str_op(name: str, text, args) -> None:
    """Refuse a str method (or the filter doing the same, with the string as ``text``) whose result
    would be longer than MAX_SIZE, before it is built."""
    if not isinstance(text, str) or name not in ("format", "format_map", "%", "join", "replace", "indent", "expandtabs"):
        return
    if name in ("format", "format_map", "%"):
        _check_format(text, args)
        grow = _size(args)
    elif name == "join":
        grow = _size(args) + (len(text) * len(args[0]) if args and isinstance(args[0], (list, tuple)) else 0)
    elif name == "replace":
        grow = text.count(args[0]) * _size(args[1]) if len(args) > 1 and isinstance(args[0], str) else 0
    else:  # indent, expandtabs: a width per line or tab
        width = (args[0] if isinstance(args[0], int) else _size(args[0])) if args else 8
        grow = text.count("\n" if name == "indent" else "\t") * width
    if len(text) + grow > MAX_SIZE:
        raise SecurityError(f"{name} would build a value larger than {MAX_SIZE} characters")


def _counted(iterable):
    """Wraps the iterable of every {% for %} loop: each iteration is a step."""
    for item in iterable:
        _step()
        yield item


class _CodeGenerator(CodeGenerator):
    def visit_Concat(self, node, frame):  # `a ~ b ~ …`: checked before anything is joined
        self.write("environment.concat_checked((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _BoundedSandbox(SandboxedEnvironment):
    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    _FILTER_AS_METHOD = {"join": lambda value, args: (args[0] if args else "", (value,))}  # value|join(sep) = sep.join(value)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.globals.pop("lipsum", None)
        self.globals["_counted"] = _counted
        self.filters = {name: self._bounded_filter(name, f) for name, f in self.filters.items()}

    @classmethod
    def _bounded_filter(cls, name, f):
        skip = 1 if _PassArg.from_obj(f) is None else 2  # the context/environment, then the value
        as_method = cls._FILTER_AS_METHOD.get(name, lambda value, args: (value, args))

        @wraps(f)  # keeps jinja's pass_context/pass_environment marker
        def wrapper(*args, **kwargs):
            _step()
            _check_int_args(args[skip:], kwargs, f"filter {name}")
            if len(args) >= skip:  # '[a, a, a]|string' of a nested list: measured first
                _check_size(args[skip - 1], f"the input of filter {name}")
                _check_str_op(name, *as_method(args[skip - 1], args[skip:] + tuple(kwargs.values())))
            return f(*args, **kwargs)

        return wrapper

    def concat_checked(self, parts: tuple) -> str:
        return "".join(map(str, _check_size(parts, "'~'")))

    def call_binop(self, context, operator, left, right):
        if operator in ("*", "**") and all(isinstance(x, int) for x in (left, right)):
            bits = left.bit_length() * right if operator == "**" else left.bit_length() + right.bit_length()
            if bits > MAX_INT_BITS:
                raise SecurityError(f"'{operator}' would build an integer of about {bits} bits (limit {MAX_INT_BITS})")
        elif operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(n, int) and isinstance(seq, (str, list, tuple)) and _size(seq) * n > MAX_SIZE:
                raise SecurityError(f"'*' would build a value of {_size(seq) * n} characters/items (limit {MAX_SIZE})")
        elif operator == "+":
            _check_size((left, right), "'+'")
        elif operator == "%":
            _check_str_op("%", left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's signature
        _step(_CALL_STEPS)
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str):  # 'a'.center(10**9), '{:>999999999}'.format(1), sep.join(…)
            if method.__name__ in _WIDTH_METHODS:
                _check_int_args(args, kwargs, f"str.{method.__name__}")
            _check_str_op(method.__name__, owner, args + tuple(kwargs.values()))
        elif isinstance(owner, list) and method.__name__ == "extend":
            _check_size((owner, args), "list.extend")
        return super().call(__context, __obj, *args, **kwargs)


def _finalize(value):  # every {{ … }} value before it is turned into text
    return _check_size(value, "a printed value")


_ENV = _BoundedSandbox(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    finalize=_finalize,
)


# ---- compiling and rendering -----------------------------------------------------------------------


def _unsafe_access(tree: nodes.Template) -> tuple[str, int] | None:
    """The first ``x._y`` / ``x['_y']`` / ``x|attr('_y')`` in the template (the sandbox would refuse it)."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem):
            name = node.arg.value if isinstance(node.arg, nodes.Const) else None
        else:
            name = node.args[0].value if node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const) else None
        if isinstance(name, str) and (name.startswith("_") or name in _UNSAFE_NAMES):
            return name, node.lineno
    return None


@lru_cache(maxsize=256)
def _compile(template_text: str, template_name: str) -> jinja2.Template:
    try:
        tree = _ENV.parse(template_text)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateRenderError(template_name, f"syntax error: {e.message}", e.lineno) from None
    unsafe = _unsafe_access(tree)
    if unsafe:
        raise TemplateRenderError(template_name, f"unsafe attribute access {unsafe[0]!r} "
                                  "(names starting with '_' are not available in templates)", unsafe[1])
    for loop in list(tree.find_all(nodes.For)):
        loop.iter = nodes.Call(nodes.Name("_counted", "load"), [loop.iter], [], None, None, lineno=loop.lineno)
    return _ENV.from_string(tree)


def check_template(template_text: str, *, template_name: str = "<template>") -> None:
    """Raise :class:`TemplateRenderError` if the template does not parse or uses unsafe attribute access."""
    _compile(template_text, template_name)


def template_variables(template_text: str, *, template_name: str = "<template>") -> set[str]:
    """Names the template reads from its variables (to check a template against what a caller provides)."""
    check_template(template_text, template_name=template_name)
    return set(meta.find_undeclared_variables(_ENV.parse(template_text)))


def _template_line(error: BaseException) -> int | None:
    """The template line jinja puts in the traceback of a runtime error."""
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == "<template>"]
    return lines[-1] if lines else None


def render(template_text: str, /, *, template_name: str = "<template>", **variables) -> str:
    """Render ``template_text`` with ``variables`` in the sandbox, within the limits above.

    ``template_name`` only labels errors (e.g. ``"harmless@1.0 templates.preference"``).
    Raises :class:`TemplateRenderError` for every failure: syntax errors, undefined variables,
    unsafe access, limits exceeded, and errors of the template's own expressions (``1/0``).
    """
    template = _compile(template_text, template_name)
    token = _BUDGET.set([MAX_STEPS])
    try:
        parts, size = [], 0
        for part in template.generate(**variables):
            size += len(part)
            if size > MAX_SIZE:
                raise TemplateRenderError(template_name, f"the rendered text is longer than {MAX_SIZE} characters")
            parts.append(part)
        return "".join(parts)
    except TemplateRenderError:
        raise
    except SecurityError as e:
        raise TemplateRenderError(template_name, f"refused by the sandbox: {e}", _template_line(e)) from None
    except jinja2.UndefinedError as e:
        provided = ", ".join(sorted(variables)) or "none"
        raise TemplateRenderError(template_name, f"{e.message} (variables provided: {provided})", _template_line(e)) from None
    except jinja2.TemplateError as e:
        raise TemplateRenderError(template_name, str(e), _template_line(e)) from None
    except (RecursionError, MemoryError) as e:
        raise TemplateRenderError(template_name, f"too deep or too large ({type(e).__name__})", _template_line(e)) from None
    except Exception as e:  # the template's own expressions: 1/0, 'a' - 1, int('x') …
        raise TemplateRenderError(template_name, f"{type(e).__name__}: {e}", _template_line(e)) from None
    finally:
        _BUDGET.reset(token)
