"""Constitution loading, error messages, content hash, shipped constitutions and sandboxed templates."""

from __future__ import annotations

import json
import textwrap

import pytest
import yaml

from constitution import (
    Constitution,
    ConstitutionError,
    TemplateRenderError,
    library_names,
    load_constitution,
    render,
    resolve_constitution,
)
from constitution.loader import LIBRARY_DIR
from constitution.templating import template_variables

VALID = """\
name: demo
version: "0.1"
critique_revision:
  - id: first
    critique: Say what is wrong.
    revision: Fix it.
  - id: second
    critique: Say what else is wrong.
    revision: Fix that too.
feedback:
  - id: better
    text: Which response is better?
few_shot:
  - prompt: p
    response: r
    principle: first
    critique: c
    revision: v
"""


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_for(tmp_path, text, name="c.yaml") -> ConstitutionError:
    path = write(tmp_path, text, name)
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    assert str(path) in str(info.value), "the error must name the file"
    return info.value


# ---- loading and errors -------------------------------------------------------------------------


def test_valid_file_loads(tmp_path):
    c = load_constitution(write(tmp_path, VALID))
    assert c.ref == "demo@0.1"
    assert [p.id for p in c.critique_revision] == ["first", "second"]
    assert c.few_shot[0].principle == "first"


def test_unknown_key_names_path_line_and_allowed_keys(tmp_path):
    text = VALID.replace("    revision: Fix that too.\n", "    revision: Fix that too.\n    revison: typo\n")
    err = error_for(tmp_path, text)
    (problem,) = err.problems
    assert problem.key_path == "critique_revision[1].revison"
    assert problem.line == 10
    assert "unknown key" in problem.message and "did you mean 'revision'" in problem.message
    assert "c.yaml:10: critique_revision[1].revison" in str(err)


def test_missing_field_points_at_the_item(tmp_path):
    text = VALID.replace("    revision: Fix that too.\n", "")
    err = error_for(tmp_path, text)
    (problem,) = err.problems
    assert problem.key_path == "critique_revision[1].revision"
    assert problem.line == 7  # the list item that lacks the key
    assert "required key is missing" in str(err)


def test_wrong_type_says_what_was_given(tmp_path):
    text = VALID.replace("    revision: Fix it.\n", "    revision: Fix it.\n    weight: heavy\n")
    err = error_for(tmp_path, text)
    (problem,) = err.problems
    assert problem.key_path == "critique_revision[0].weight"
    assert problem.line == 7
    assert "number" in problem.message and "'heavy'" in problem.message


def test_several_problems_are_all_reported(tmp_path):
    text = VALID.replace("    revision: Fix it.\n", "    weight: -1\n").replace("text: Which", "txt: Which")
    err = error_for(tmp_path, text)
    paths = {p.key_path for p in err.problems}
    assert {"critique_revision[0].revision", "critique_revision[0].weight", "feedback[0].text", "feedback[0].txt"} <= paths
    assert "problems" in str(err).splitlines()[0]


def test_duplicate_principle_id(tmp_path):
    err = error_for(tmp_path, VALID.replace("id: second", "id: first"))
    (problem,) = err.problems
    assert problem.key_path == "critique_revision[1].id"
    assert problem.line == 7
    assert "duplicate principle id 'first'" in problem.message


def test_bad_principle_reference(tmp_path):
    err = error_for(tmp_path, VALID.replace("principle: first", "principle: nonexistent"))
    (problem,) = err.problems
    assert problem.key_path == "few_shot[0].principle"
    assert problem.line == 16
    assert "'nonexistent' is not a critique_revision id" in problem.message


def test_duplicate_yaml_key_is_an_error_not_silently_dropped(tmp_path):
    err = error_for(tmp_path, VALID.replace('version: "0.1"\n', 'version: "0.1"\nname: other\n'))
    assert err.problems[0].key_path == "name" and err.problems[0].line == 3
    assert "duplicate key" in str(err)


def test_malformed_yaml_gives_line(tmp_path):
    err = error_for(tmp_path, "name: x\nversion: 1\n  bad: [\n")
    assert err.problems[0].line == 3
    assert "not valid YAML" in str(err)


def test_python_tags_are_refused(tmp_path):
    err = error_for(tmp_path, "name: !!python/object/apply:os.system ['echo hacked']\nversion: 1\n")
    assert "not valid YAML" in str(err) and err.problems[0].line == 1


@pytest.mark.parametrize("text, expected", [("", "empty"), ("- a\n- b\n", "got list"), ("just text\n", "got str")])
def test_top_level_must_be_a_mapping(tmp_path, text, expected):
    assert expected in str(error_for(tmp_path, text))


def test_json_files(tmp_path):
    data = yaml.safe_load(VALID)
    c = load_constitution(write(tmp_path, json.dumps(data), "c.json"))
    assert c.ref == "demo@0.1"
    data["feedback"][0]["text"] = 3
    err = error_for(tmp_path, json.dumps(data), "bad.json")
    assert err.problems[0].key_path == "feedback[0].text" and "string" in err.problems[0].message
    err = error_for(tmp_path, '{"name": "x",\n "version": }', "broken.json")
    assert err.problems[0].line == 2 and "not valid JSON" in str(err)
    err = error_for(tmp_path, '{"name": "x", "name": "y", "version": "1"}', "dupe.json")
    assert "duplicate key 'name'" in str(err)


@pytest.mark.parametrize("written, expected", [("1.10", "1.10"), ("2", "2"), ('"1.0"', "1.0"), ("2024.06.1", "2024.06.1")])
def test_version_is_kept_as_written(tmp_path, written, expected):
    c = load_constitution(write(tmp_path, VALID.replace('version: "0.1"', f"version: {written}")))
    assert c.version == expected


def test_missing_file(tmp_path):
    with pytest.raises(ConstitutionError, match="file not found"):
        load_constitution(tmp_path / "nope.yaml")


def test_template_syntax_checked_at_load(tmp_path):
    text = VALID + "templates:\n  preference: |\n    Question: {{ question }}\n    {{ broken\n"
    err = error_for(tmp_path, text)
    (problem,) = err.problems
    assert problem.key_path == "templates.preference"
    assert "syntax error" in problem.message and "(line 2 of the template)" in problem.message
    assert problem.line == 20  # the template's key


# ---- identity -----------------------------------------------------------------------------------


def test_hash_ignores_formatting_and_comments(tmp_path):
    original = load_constitution(write(tmp_path, VALID))
    data = yaml.safe_load(VALID)
    restyled = "# a comment\n" + yaml.safe_dump(data, default_flow_style=True, width=30) + "# trailing comment\n"
    assert load_constitution(write(tmp_path, restyled, "restyled.yaml")).content_hash == original.content_hash
    as_json = load_constitution(write(tmp_path, json.dumps(data, indent=4), "same.json"))
    assert as_json.content_hash == original.content_hash
    # explicit defaults are the same content as omitted ones
    explicit = VALID.replace("    revision: Fix it.\n", "    revision: Fix it.\n    weight: 1.0\n    tags: []\n")
    assert load_constitution(write(tmp_path, explicit, "explicit.yaml")).content_hash == original.content_hash


def test_hash_changes_with_content(tmp_path):
    original = load_constitution(write(tmp_path, VALID)).content_hash
    for old, new in [("Fix it.", "Fix it!"), ('"0.1"', '"0.2"'), ("id: second", "id: third"), ("Which response", "Which reply")]:
        changed = load_constitution(write(tmp_path, VALID.replace(old, new), "changed.yaml"))
        assert changed.content_hash != original, (old, new)
    stamp = load_constitution(write(tmp_path, VALID)).stamp()
    assert stamp == {"constitution": "demo@0.1", "constitution_hash": original}


# ---- resolving names ----------------------------------------------------------------------------


def test_resolve_shipped_names_and_paths(tmp_path, monkeypatch):
    assert resolve_constitution("harmless").name == "harmless"
    assert resolve_constitution("harmless@1.0").version == "1.0"
    with pytest.raises(ConstitutionError, match="version '9.9' was requested"):
        resolve_constitution("harmless@9.9")
    with pytest.raises(ConstitutionError, match="shipped: .*harmless"):
        resolve_constitution("no_such_constitution")
    with pytest.raises(ConstitutionError, match="file not found"):
        resolve_constitution(str(tmp_path / "missing.yaml"))
    # a file in the working directory wins over a shipped name
    monkeypatch.chdir(tmp_path)
    write(tmp_path, VALID, "harmless")
    assert resolve_constitution("harmless").name == "demo"
    c = resolve_constitution(tmp_path / "harmless")
    assert resolve_constitution(c) is c


# ---- the shipped constitutions ------------------------------------------------------------------


def test_shipped_constitutions_validate():
    assert {"harmless", "helpful_honest"} <= set(library_names())
    for path in LIBRARY_DIR.glob("*.yaml"):
        c = load_constitution(path)
        assert c.name == path.stem
        assert c.description and c.system_prompt


def test_harmless_constitution_contents():
    c = resolve_constitution("harmless")
    assert len(c.critique_revision) >= 14 and len(c.feedback) >= 14
    assert len(c.few_shot) >= 3 and len(c.labeling_examples) >= 2
    ids = {p.id for p in c.critique_revision}
    required = {"violence", "self-harm", "weapons", "illegal-activity", "privacy", "hate-harassment",
                "minors-sexual-content", "medical-caution", "legal-financial-caution", "manipulation",
                "misinformation", "age-appropriate", "cybercrime", "extremism", "deceptive-persuasion"}
    assert required <= ids
    assert "refusal" in c.critique_principle("minors-sexual-content").tags
    inverted = [p for p in c.feedback if p.invert]
    assert inverted and all("more" in p.text.lower() for p in inverted)
    assert all(p.text.rstrip().endswith("?") for p in c.feedback)
    assert all(ex.principle in ids for ex in c.few_shot)
    assert len({ex.principle for ex in c.few_shot}) == len(c.few_shot)  # each example shows a different harm
    texts = [p.critique for p in c.critique_revision] + [p.revision for p in c.critique_revision]
    assert len(set(texts)) == len(texts)


def test_helpful_honest_constitution_contents():
    c = resolve_constitution("helpful_honest")
    assert len(c.critique_revision) >= 8 and len(c.feedback) >= 8 and len(c.few_shot) >= 2
    assert all(ex.principle in {p.id for p in c.critique_revision} for ex in c.few_shot)
    assert all(ex.principle in {p.id for p in c.feedback} for ex in c.labeling_examples)
    assert resolve_constitution("helpful_honest").content_hash != resolve_constitution("harmless").content_hash


# ---- sandboxed templates ------------------------------------------------------------------------


def test_render_basic_and_whitespace():
    out = render("Q: {{ q }}\n{% for o in options %}\n({{ o.label }}) {{ o.text }}\n{% endfor %}\nA:", q="why?",
                 options=[{"label": "A", "text": "one"}, {"label": "B", "text": "two"}])
    assert out == "Q: why?\n(A) one\n(B) two\nA:"
    assert render("keep the newline\n") == "keep the newline\n"
    assert render("<b>{{ x }}</b>", x="<i>&") == "<b><i>&</b>"  # prompts, not HTML: no escaping


@pytest.mark.parametrize("template", [
    "{{ ''.__class__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ x.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ x|attr(name) }}",  # not visible to the static check: refused by the sandbox while rendering
])
def test_sandbox_blocks_dunder_access(template):
    with pytest.raises(TemplateRenderError, match="evil.*(unsafe attribute access|refused by the sandbox)"):
        render(template, template_name="evil", x=object(), cycler=object(), name="__class__")


def test_undefined_variable_names_the_template():
    with pytest.raises(TemplateRenderError) as info:
        render("Hello {{ nmae }}", template_name="harmless@1.0 templates.greeting", name="Ada")
    message = str(info.value)
    assert "harmless@1.0 templates.greeting" in message and "'nmae' is undefined" in message and "name" in message


def test_syntax_error_names_template_and_line():
    with pytest.raises(TemplateRenderError, match=r"template t, line 2: syntax error"):
        render("ok\n{% if %}", template_name="t")


def test_template_variables():
    assert template_variables("{{ a }} {% for x in b %}{{ x }}{% endfor %}") == {"a", "b"}


def test_constitution_templates_render_through_helper(tmp_path):
    text = VALID + "templates:\n  preference: \"{{ principle }} (A) {{ a }} (B) {{ b }}\"\n"
    c: Constitution = load_constitution(write(tmp_path, text))
    out = render(c.templates["preference"], template_name="preference", principle="Which?", a="x", b="y")
    assert out == "Which? (A) x (B) y"
