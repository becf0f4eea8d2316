"""`cai constitution …` through the real top-level app (typer's CliRunner, in process)."""

from __future__ import annotations

import json

import pytest
from conftest import ASSETS, REPO_ROOT
from typer.testing import CliRunner

from cai_cli import app
from constitution import load_constitution, resolve_constitution

FIXTURES = ASSETS / "constitutions"
HARMLESS_PATH = REPO_ROOT / "constitution" / "library" / "harmless.yaml"

runner = CliRunner()


def cai(*args):
    return runner.invoke(app, ["constitution", *map(str, args)])


def test_help_has_examples():
    for command in ("validate", "show", "import", "list"):
        result = cai(command, "--help")
        assert result.exit_code == 0, result.output
        assert "Examples:" in result.output and f"cai constitution {command}" in result.output


def test_validate_ok_and_failures(tmp_path):
    harmless = resolve_constitution("harmless")
    result = cai("validate", HARMLESS_PATH, "helpful_honest")
    assert result.exit_code == 0, result.output
    assert f"OK harmless@1.0 {harmless.content_hash}" in result.output
    assert "OK helpful_honest@" in result.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nversion: 1\nfeedback:\n  - id: x\n    txt: Which?\n", encoding="utf-8")
    result = cai("validate", HARMLESS_PATH, bad)
    assert result.exit_code == 1
    assert "OK harmless@1.0" in result.output  # the good file is still reported
    assert f"FAIL {bad}" in result.output
    assert f"{bad}:5: feedback[0].txt: unknown key" in result.output
    assert "1 of 2 constitution(s) invalid" in result.output


def test_show_text_and_json():
    c = resolve_constitution("harmless")
    result = cai("show", "harmless")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"harmless@1.0  hash {c.content_hash}")
    assert f"{len(c.critique_revision)} critique/revision principles" in result.output
    for p in c.critique_revision:
        assert f"  {p.id}" in result.output
    assert "more-harmful-inverted  (inverted" in result.output

    result = cai("show", HARMLESS_PATH, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ref"] == "harmless@1.0" and data["hash"] == c.content_hash
    assert data["counts"]["feedback"] == len(c.feedback)
    assert data["constitution"]["critique_revision"][0]["id"] == c.critique_revision[0].id


def test_show_reports_errors(tmp_path):
    result = cai("show", tmp_path / "missing.yaml")
    assert result.exit_code == 2
    assert "error:" in result.output and "file not found" in result.output


def test_list():
    result = cai("list")
    assert result.exit_code == 0, result.output
    assert "harmless@1.0" in result.output and "helpful_honest@1.0" in result.output


def test_import_hf_writes_valid_yaml_and_refuses_overwrite(tmp_path):
    out = tmp_path / "imported" / "hf.yaml"
    result = cai("import", FIXTURES / "hf_llm_swarm_sample.json", "--format", "hf", "-o", out)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "system_chat[2] skipped" in result.output
    c = load_constitution(out)
    assert c.ref == "hf_llm_swarm_sample@1.0" and len(c.critique_revision) == 3 and len(c.few_shot) == 2
    assert c.content_hash in result.output
    assert cai("validate", out).exit_code == 0

    before = out.read_text()
    result = cai("import", FIXTURES / "hf_llm_swarm_sample.json", "--format", "hf", "-o", out, "--name", "other")
    assert result.exit_code == 2 and "already exists" in result.output and "--force" in result.output
    assert out.read_text() == before

    result = cai("import", FIXTURES / "hf_llm_swarm_sample.json", "--format", "hf", "-o", out,
                 "--name", "other", "--version", "2", "--force")
    assert result.exit_code == 0, result.output
    assert load_constitution(out).ref == "other@2"
    assert [p.name for p in out.parent.iterdir()] == ["hf.yaml"]  # no temporary files left behind


def test_import_anthropic_with_feedback(tmp_path):
    out = tmp_path / "anthropic.yaml"
    result = cai("import", FIXTURES / "anthropic_critiques_sample.json", "--format", "anthropic",
                 "--feedback", FIXTURES / "anthropic_feedback_sample.json", "--name", "anth", "-o", out)
    assert result.exit_code == 0, result.output
    c = load_constitution(out)
    assert c.ref == "anth@1.0"
    assert len(c.critique_revision) == 4 and len(c.feedback) == 3
    assert c.feedback_principle("fb-0003").invert
    assert "invert: true" in out.read_text()


@pytest.mark.parametrize("args, expected", [
    (["--format", "hf", "--feedback", FIXTURES / "anthropic_feedback_sample.json"], "only used with --format anthropic"),
    # an HF file given as anthropic: its "constitutions" key is read as a principle id
    (["--format", "anthropic"], 'constitutions: expected an object with "prompt"'),
])
def test_import_errors(tmp_path, args, expected):
    out = tmp_path / "out.yaml"
    result = cai("import", FIXTURES / "hf_llm_swarm_sample.json", *args, "-o", out)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert not out.exists()
