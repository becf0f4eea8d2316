"""Bad input on purpose: files and templates a careless or hostile user might hand the toolkit.

Each must fail fast with one ``error:``-style line naming the file and the line or key (no
traceback, no half-made run directory), or, where the input is fine but unusual, just work.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time

import pytest
from label_fakes import FakeEngine, constitution
from typer.testing import CliRunner

from cai_cli import app
from constitution import ConstitutionError, TemplateRenderError, load_constitution, render
from constitution.importers import import_hf
from generators.inputs import PromptFileError, read_prompts
from labelers.inputs import InputError, load_comparisons
from labelers.preference import label_preferences

runner = CliRunner()
HEAD = "name: hostile\nversion: '1'\n"
FEEDBACK = "feedback:\n  - {id: kind, text: 'Which response is kinder?'}\n"


def cai(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result, code: int = 2) -> str:
    """The single ``error: …`` line of a failed command (and nothing else, no traceback)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


# ---- 1. YAML anchors and aliases ------------------------------------------------------------------


LAUGHS = HEAD + "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(9))


@pytest.mark.parametrize("text, line", [
    (HEAD + "description: &a [*a]\n", 3),  # recursive: RecursionError before
    (LAUGHS, 3),  # "billion laughs": 10**10 strings
    (HEAD + FEEDBACK + "  - &p {id: b, text: t}\n  - <<: *p\n    id: c\n", 5),  # a merge key is an alias too
])
def test_yaml_aliases_are_refused_before_anything_is_built(tmp_path, text, line):
    f = write(tmp_path, "c.yaml", text)
    start = time.perf_counter()
    with pytest.raises(ConstitutionError) as info:
        load_constitution(f)
    assert time.perf_counter() - start < 1
    assert str(info.value) == f"{f}:{line}: YAML aliases/anchors are not allowed in constitutions"

    result = cai("constitution", "validate", f)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{f}:{line}: YAML aliases/anchors are not allowed in constitutions" in result.output.splitlines()


def test_yaml_alias_in_generate_is_one_error_line(tmp_path):
    f = write(tmp_path, "c.yaml", HEAD + "description: &a [*a]\n")
    prompts = write(tmp_path, "p.txt", "hi\n")
    result = cai("generate", "sl-cai", "-c", f, "-p", prompts, "-o", tmp_path / "run")
    assert one_error_line(result) == f"error: {f}:3: YAML aliases/anchors are not allowed in constitutions"
    assert not (tmp_path / "run").exists()


def test_deeply_nested_constitution_is_refused(tmp_path):
    deep = write(tmp_path, "deep.yaml", HEAD + "description: " + "[" * 1000 + "]" * 1000 + "\n")
    with pytest.raises(ConstitutionError, match=r"deep.yaml:3: nested more than \d+ levels deep"):
        load_constitution(deep)
    deep_json = write(tmp_path, "deep.json", '{"name": "x", "version": "1", "description": ' + "[" * 20000 + "]" * 20000 + "}")
    with pytest.raises(ConstitutionError, match="nested too deeply"):
        load_constitution(deep_json)


# ---- 2. templates that reach for Python internals -------------------------------------------------


def test_unsafe_template_is_refused_at_load_with_file_and_line(tmp_path):
    f = write(tmp_path, "c.yaml", HEAD + FEEDBACK + "templates:\n  cai_mc: \"Hi\\n{{ ''.__class__.__mro__ }}\"\n")
    result = cai("constitution", "validate", f)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (f"{f}:6: templates.cai_mc: unsafe attribute access '__mro__' (names starting with '_' are not available "
            "in templates) (line 2 of the template)") in result.output.splitlines()

    pairs = write(tmp_path, "pairs.jsonl", json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n")
    result = cai("label", "preference", pairs, "--out", tmp_path / "run", "--constitution", f, "--quiet")
    assert one_error_line(result).startswith(f"error: {f}:6: templates.cai_mc: unsafe attribute access")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("template", [
    "{{ x|attr('__globals__') }}",  # static check
    "{{ x|attr(name) }}",  # only the sandbox sees this one
])
def test_render_never_lets_security_error_escape(template):
    with pytest.raises(TemplateRenderError, match="templates.t"):
        render(template, template_name="templates.t", x=render, name="__globals__")


def test_template_failing_at_render_time_leaves_no_run_directory(tmp_path, monkeypatch):
    f = write(tmp_path, "c.yaml", HEAD + FEEDBACK + "templates:\n  cai_mc: \"{{ response_a }}\\n{{ 1 // 0 }}\"\n")
    pairs = write(tmp_path, "pairs.jsonl", json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n")
    monkeypatch.setattr("labelers.cli._load_engine", lambda *a, **k: FakeEngine(lambda c, o: math.log(0.5)))
    result = cai("label", "preference", pairs, "--out", tmp_path / "run", "--constitution", f, "--quiet")
    line = one_error_line(result)
    assert "templates.cai_mc, line 2: ZeroDivisionError" in line
    assert not (tmp_path / "run").exists()

    const = constitution(templates={"cai_mc": "{{ ''.__class__ }}"})  # built in code: never went through the loader
    with pytest.raises(TemplateRenderError, match="unsafe attribute access"):
        label_preferences(const, pairs, FakeEngine(lambda c, o: 0.0), tmp_path / "run2", progress=False)
    assert not (tmp_path / "run2").exists()



@pytest.mark.parametrize("command, template", [("binary", "binary"), ("score", "score")])
def test_single_label_template_failing_at_render_time_leaves_no_run_directory(tmp_path, monkeypatch, command, template):
    f = write(tmp_path, "c.yaml", HEAD + FEEDBACK + f"templates:\n  {template}: \"{{{{ response }}}}\\n{{{{ 1 // 0 }}}}\"\n")
    data = write(tmp_path, "singles.jsonl", json.dumps({"prompt": "hi", "response": "a"}) + "\n")
    monkeypatch.setattr("labelers.cli._load_engine", lambda *a, **k: FakeEngine(lambda c, o: math.log(0.5)))
    result = cai("label", command, data, "--out", tmp_path / "run", "--constitution", f, "--quiet")
    assert f"templates.{template}, line 2: ZeroDivisionError" in one_error_line(result)
    assert not (tmp_path / "run").exists()

# ---- 3. templates that try to exhaust memory or time ----------------------------------------------


@pytest.mark.parametrize("template, reason", [
    ("{{ ('a' * 10**8)|length }}", "'\\*' would build a value of 100000000"),
    ("{{ (['a'] * 10**8)|length }}", "'\\*' would build a value"),
    ("{{ 7 ** (10**7) }}", "'\\*\\*' would build an integer"),
    ("{{ 'a'|center(10**9) }}", "argument 1000000000 is larger"),
    ("{{ 'a'.ljust(10**9) }}", "argument 1000000000 is larger"),
    ("{{ '%0999999999d' % 1 }}", "format width"),
    ("{{ '{:>999999999}'.format(1) }}", "format width"),
    ("{{ ('a' * 100000)|replace('a', 'b' * 100000) }}", "replace would build"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "'~'"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "steps"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "too deep"),
    ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}", "steps"),
    ("{% set s = 'x' * 10**5 %}{% set a = [s, s, s, s, s, s, s, s] %}{{ [a, a, a, a, a, a, a, a]|string }}", "input of filter"),
    ("{% for i in range(100000) %}{{ 'x' * 50 }}{% endfor %}", "rendered text is longer than"),
    ("{{ lipsum(n=100000) }}", "'lipsum' is undefined"),
])
def test_template_cost_is_bounded(template, reason):
    start = time.perf_counter()
    with pytest.raises(TemplateRenderError, match=reason):
        render(template, template_name="templates.t")
    assert time.perf_counter() - start < 1.5


def test_ordinary_templates_are_unaffected():
    text = ("{% for e in examples %}{{ loop.index }}. {{ e.q ~ '?' }} {{ '%d%%' % 50 }} {{ '{:>4}'.format(e.n) }} "
            "{{ e.tags|join(', ') }} {{ e.q|upper|center(9) }} {{ '-' * 3 + '>' }} {{ 2 ** 10 }} "
            "{{ e.q.replace('i', 'I') }}\n{% endfor %}{{ ('x' * 100000)|length }}")
    examples = [{"q": "hi", "n": 7, "tags": ["a", "b"]}, {"q": "bye", "n": 12, "tags": []}]
    assert render(text, examples=examples) == (
        "1. hi? 50%    7 a, b     HI    ---> 1024 hI\n2. bye? 50%   12     BYE    ---> 1024 bye\n100000")


# ---- 4. prompt files without an extension, and pipes ----------------------------------------------

JSONL = "".join(json.dumps({"id": f"p{i}", "prompt": f"question {i}"}) + "\n" for i in range(3))


@pytest.mark.parametrize("name", ["prompts", "prompts.v2"])
def test_prompt_file_without_extension_is_sniffed(tmp_path, name):
    items = read_prompts(write(tmp_path, name, JSONL))
    assert [(i.id, i.text) for i in items] == [("p0", "question 0"), ("p1", "question 1"), ("p2", "question 2")]
    assert [i.text for i in read_prompts(write(tmp_path, name, "plain one\nplain two\n"))] == ["plain one", "plain two"]
    assert len(read_prompts(write(tmp_path, name, JSONL), fmt="text")) == 3  # an explicit format wins
    assert read_prompts(tmp_path / name, fmt="text")[0].text.startswith('{"id"')


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_prompts_and_pairs_from_a_pipe(tmp_path):
    def piped(text: str):
        fifo = tmp_path / f"fifo{len(list(tmp_path.iterdir()))}"
        os.mkfifo(fifo)
        threading.Thread(target=fifo.write_text, args=(text,), daemon=True).start()
        return fifo

    assert [i.id for i in read_prompts(piped(JSONL))] == ["p0", "p1", "p2"]
    pairs = json.dumps({"id": "c1", "prompt": "hi", "chosen": "a", "rejected": "b"}) + "\n"
    [comparison] = load_comparisons(piped(pairs))
    assert (comparison.source_id, comparison.response_a) == ("c1", "a")


# ---- 5. files that are not UTF-8 -------------------------------------------------------------------

BAD_LINE = b'{"prompt": "caf\xc3\xa9 \xff"}\n'  # 0xff is column 18 (the é is one character)


def test_non_utf8_prompt_file_names_line_and_column(tmp_path):
    f = write(tmp_path, "prompts.jsonl", b'{"prompt": "fine"}\n' + BAD_LINE)
    with pytest.raises(PromptFileError) as info:
        read_prompts(f)
    assert str(info.value) == f"{f}:2: not valid UTF-8 (byte 0xff at column 18)"
    result = cai("generate", "pairs", "-p", f, "-o", tmp_path / "run")
    assert one_error_line(result) == f"error: {f}:2: not valid UTF-8 (byte 0xff at column 18)"


def test_non_utf8_pairs_file_names_line_and_column(tmp_path, monkeypatch):
    good = json.dumps({"prompt": "hi", "chosen": "a", "rejected": "b"}).encode() + b"\n"
    f = write(tmp_path, "pairs.jsonl", good * 2 + b'{"prompt": "hi", "chosen": "\xfe", "rejected": "b"}\n')
    with pytest.raises(InputError) as info:
        load_comparisons(f)
    assert str(info.value) == f"{f}:3: not valid UTF-8 (byte 0xfe at column 29)"
    monkeypatch.setattr("labelers.cli._load_engine", lambda *a, **k: FakeEngine(lambda c, o: 0.0))
    result = cai("label", "preference", f, "--out", tmp_path / "run", "--quiet")
    assert one_error_line(result) == f"error: {f}:3: not valid UTF-8 (byte 0xfe at column 29)"


def test_non_utf8_constitution_names_line_and_column(tmp_path):
    f = write(tmp_path, "c.yaml", HEAD.encode() + b"description: caf\xc3\xa9 \xff\n")
    result = cai("constitution", "show", f)
    assert one_error_line(result) == f"error: {f}:3: not valid UTF-8 (byte 0xff at column 19)"
    hf = write(tmp_path, "hf.json", b'{"constitutions": [\n{"critic": "\xff"}]}')
    with pytest.raises(ConstitutionError, match=r"hf.json:2: not valid UTF-8 \(byte 0xff at column 13\)"):
        import_hf(hf)


def test_training_config_refuses_yaml_aliases_fast(tmp_path):
    """A "billion laughs" training config used to expand (and print) before any check."""
    import time

    from trainers.config import ConfigError, load_config
    from trainers.sft import SFTConfig

    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)]
    (tmp_path / "bomb.yaml").write_text("\n".join(levels) + "\ndata: [*i]\n")
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"bomb\.yaml:1: YAML aliases/anchors are not allowed in training configs"):
        load_config(SFTConfig, tmp_path / "bomb.yaml", model="m", out="o")
    assert time.monotonic() - start < 2
