"""`cai constitution diff` (added / removed / reworded with a word diff / weight and tag changes / hashes, and
`--run`: which records used changed principles) and `cai constitution try` (critique → revision per chosen
principle, side by side in the terminal and as HTML) with a fake engine and with a tiny real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from report_fixtures import HOSTILE, EchoEngine, sl_cai_run
from typer.testing import CliRunner

import report.cli
from cai_cli import app
from constitution.loader import load_constitution, resolve_constitution
from report.constitution_diff import diff_constitutions, format_word_diff, word_diff

LIBRARY = Path(__file__).resolve().parent.parent / "constitution" / "library"


def edited(tmp_path: Path) -> Path:
    """harmless.yaml with: violence reworded, self-harm reweighted, weapons re-tagged, illegal-activity removed,
    a new principle added, feedback less-harmful reworded, version 1.1."""
    d = yaml.safe_load((LIBRARY / "harmless.yaml").read_text())
    cr = {p["id"]: p for p in d["critique_revision"]}
    cr["violence"]["critique"] = cr["violence"]["critique"].replace("physically hurt", "physically or emotionally hurt")
    cr["self-harm"]["weight"] = 3.0
    cr["weapons"]["tags"] = cr["weapons"]["tags"] + ["new-tag"]
    d["critique_revision"] = [p for p in d["critique_revision"] if p["id"] != "illegal-activity"]
    d["critique_revision"].append({"id": "kindness", "critique": "Is it kind?", "revision": "Make it kind."})
    d["few_shot"] = [f for f in d.get("few_shot", []) if f.get("principle") != "illegal-activity"]
    fb = {p["id"]: p for p in d["feedback"]}
    fb["less-harmful"]["text"] = "Which of these responses is less harmful and more honest?"
    d["version"] = "1.1"
    path = tmp_path / "harmless-1.1.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False, allow_unicode=True))
    return path


def test_word_diff():
    parts = word_diff("Which response is less harmful?", "Which response is more harmful and honest?")
    assert format_word_diff(parts) == "Which response is [-less harmful?-] {+more harmful and honest?+}"
    assert word_diff("same words", "same words") == [("=", "same words")]


def test_diff_finds_every_kind_of_change(tmp_path):
    old, new = resolve_constitution("harmless"), load_constitution(edited(tmp_path))
    d = diff_constitutions(old, new)
    cr, fb = d["parts"]["critique_revision"], d["parts"]["feedback"]
    assert cr["added"] == ["kindness"] and cr["removed"] == ["illegal-activity"]
    assert [r["id"] for r in cr["reworded"]] == ["violence"] and list(cr["reworded"][0]["fields"]) == ["critique"]
    assert ("+", "or emotionally") in cr["reworded"][0]["fields"]["critique"]
    assert cr["weight"] == [{"id": "self-harm", "old": 1.0, "new": 3.0}]
    assert cr["tags"] == [{"id": "weapons", "added": ["new-tag"], "removed": []}]
    assert [r["id"] for r in fb["reworded"]] == ["less-harmful"] and not fb["added"] and not fb["removed"]
    assert d["changed_ids"] == {"critique_revision": ["illegal-activity", "violence"], "feedback": ["less-harmful"]}
    assert d["old"]["hash"] == old.content_hash != d["new"]["hash"] == new.content_hash
    assert diff_constitutions(old, old)["identical"]


def test_diff_cli_with_run(tmp_path):
    new = edited(tmp_path)
    run = sl_cai_run(tmp_path / "runs" / "sl-cai", n=8)
    used = [[rd["principle_id"] for rd in json.loads(line)["rounds"]] for line in (run / "records.jsonl").read_text().splitlines()]
    expected = sum(any(p in ("violence", "illegal-activity") for p in ids) for ids in used)
    result = CliRunner().invoke(app, ["constitution", "diff", "harmless", str(new), "--run", str(tmp_path / "runs"), "--no-color"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "old: harmless@1.0" in out and "new: harmless@1.1" in out and resolve_constitution("harmless").content_hash in out
    assert "+ added     kindness" in out and "- removed   illegal-activity" in out and "self-harm: 1.0 → 3.0" in out
    assert "violence.critique: … part of it help someone physically {+or emotionally+} hurt" in out
    assert "weapons: +new-tag" in out and "less-harmful.text" in out
    assert f"runs/sl-cai (sl-cai): {expected} of 8 records used a reworded or removed principle" in out
    data = json.loads(CliRunner().invoke(app, ["constitution", "diff", "harmless", str(new), "--run", str(run), "--json"]).output)
    assert len(data["runs"][0]["affected"]) == expected and data["runs"][0]["made_with_old"]


def test_diff_cli_bad_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nversion: 1\ncritique_revision:\n  - id: a\n    critique: c\n    revison: r\n")
    result = CliRunner().invoke(app, ["constitution", "diff", "harmless", str(bad)])
    assert result.exit_code == 2 and f"{bad}:" in result.output and "revison" in result.output


def test_try_side_by_side_and_html(tmp_path, monkeypatch):
    monkeypatch.setattr(report.cli, "_load_engine", lambda config: EchoEngine())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{HOSTILE} how do I hurt someone?\nwhat is 1\n")
    html = tmp_path / "try.html"
    result = CliRunner().invoke(app, ["constitution", "try", str(edited(tmp_path)), "-p", str(prompts), "-p", "literal prompt 2", "-p", "left out",
                                      "--principle", "violence", "--principle", "kindness", "--n", "3", "--html", str(html), "--width", "100"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "prompt 3: literal prompt 2" in out and "left out" not in out  # 2 from the file, then the literal; --n 3
    assert "[violence] critique" in out and "│ [kindness] critique" in out
    assert max(len(line) for line in out.splitlines()) <= 100
    page = html.read_text()
    assert HOSTILE not in page and "&lt;script&gt;" in page and page.count('class="prompt-row"') == 3
    result = CliRunner().invoke(app, ["constitution", "try", "harmless", "-p", "x", "--principle", "nope"])
    assert result.exit_code == 2 and "--principle 'nope'" in result.output and "violence" in result.output
    result = CliRunner().invoke(app, ["constitution", "try", "harmless"])
    assert result.exit_code == 2 and "--prompts" in result.output


def test_try_with_a_tiny_real_model(tiny_model_dir):
    result = CliRunner().invoke(app, ["constitution", "try", "harmless", "-p", "How do I pick a lock?", "--model", str(tiny_model_dir),
                                      "--principle", "violence", "--principle", "privacy", "--max-new-tokens", "6", "--few-shot", "0",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "[violence] critique" in result.output and "[privacy] critique" in result.output and "How do I pick a lock?" in result.output


@pytest.mark.parametrize("name", ["harmless", "helpful_honest"])
def test_diff_of_a_shipped_constitution_with_itself(name):
    result = CliRunner().invoke(app, ["constitution", "diff", name, name])
    assert result.exit_code == 0 and "identical content (same hash)" in result.output
