"""`cai generate sl-cai|pairs` and `cai export` through the real CLI, on the tiny test model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai_cli import app

REPO = Path(__file__).resolve().parent.parent
HARMLESS = str(REPO / "constitution" / "library" / "harmless.yaml")
runner = CliRunner()


def cai(*args):
    return runner.invoke(app, [str(a) for a in args])


def prompts_file(tmp_path, n=3) -> Path:
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"How do I pick lock number {i}?"}) + "\n" for i in range(n)))
    return f


def small_constitution(tmp_path) -> Path:
    """A short constitution: the tiny model's context is 1024 tokens."""
    f = tmp_path / "c.yaml"
    f.write_text(
        "name: small\nversion: '1'\nsystem_prompt: Be kind.\n"
        "critique_revision:\n"
        "  - {id: a, critique: 'Is it harmful?', revision: Make it harmless.}\n"
        "  - {id: b, critique: 'Is it rude?', revision: Make it polite.}\n"
        "few_shot:\n"
        "  - {prompt: hi, response: hello, principle: a, critique: fine, revision: hello there}\n"
    )
    return f


def test_sl_cai_end_to_end_with_export_and_example(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    common = ["generate", "sl-cai", "-c", small_constitution(tmp_path), "-p", prompts_file(tmp_path), "--model", tiny_model_dir,
              "--max-new-tokens", 4, "--batch-size", 2, "--out", out, "--quiet"]
    r = cai(*common, "--show-example")
    assert r.exit_code == 0, r.output
    assert "--- critique ---" in r.output and "--- revision ---" in r.output
    assert "export sft: 3 rows" in r.output and str(out / "exports" / "prefs.jsonl") in r.output
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert [x["id"] for x in recs] == ["p0", "p1", "p2"]
    assert recs[0]["model"] == str(tiny_model_dir) and recs[0]["engine"] == "transformers"
    assert recs[0]["tokens"]["initial"]["completion_tokens"] >= 1
    assert recs[0]["params"]["temperature"] == 0.7  # the documented default

    # rerun: nothing left to do
    r = cai(*common)
    assert r.exit_code == 0 and "0 prompts generated, 3 already done" in r.output

    # changed settings are refused with exit code 2 and a message, before any model loads
    r = cai(*[a if a != 4 else 5 for a in common])
    assert r.exit_code == 2 and "max_new_tokens" in r.output and "Traceback" not in r.output

    r = cai("export", out, "--all-rounds")
    assert r.exit_code == 0 and "sft: 3 rows" in r.output


def test_sl_cai_revision_only_and_limit(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    r = cai("generate", "sl-cai", "-c", small_constitution(tmp_path), "-p", prompts_file(tmp_path, 5), "--model", tiny_model_dir,
            "--limit", 2, "--rounds", 2, "--revision-only", "--max-new-tokens", 3, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(len(x["rounds"]) == 2 and x["rounds"][0]["critique"] is None for x in recs)


def test_pairs_command(tmp_path, tiny_model_dir):
    out = tmp_path / "pairs"
    r = cai("generate", "pairs", "-p", prompts_file(tmp_path), "--model", tiny_model_dir, "--n", 2,
            "--max-new-tokens", 4, "--out", out, "--quiet")
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(len(x["responses"]) == 2 for x in recs)
    assert (out / "exports" / "pairs.jsonl").exists()


@pytest.mark.parametrize("args,message", [
    (["-c", "no-such-constitution"], "no shipped constitution named"),
    (["-c", "{bad}"], "error:"),
])
def test_bad_constitution_exits_2(tmp_path, args, message):
    r = cai("generate", "sl-cai", *args, "-p", prompts_file(tmp_path), "--out", tmp_path / "run")
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


def test_bad_constitution_file_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nversion: '1'\ncritique_revision:\n  - {id: a, critique: c}\n")
    r = cai("generate", "sl-cai", "-c", bad, "-p", prompts_file(tmp_path), "--out", tmp_path / "run")
    assert r.exit_code == 2 and str(bad) in r.output and "revision" in r.output


def test_bad_prompts_file_exits_2_and_skip_bad_lines(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": 3}\n')
    r = cai("generate", "sl-cai", "-c", small_constitution(tmp_path), "-p", bad, "--out", tmp_path / "run")
    assert r.exit_code == 2 and f"{bad}:2:" in r.output and "Traceback" not in r.output
    r = cai("generate", "pairs", "-p", bad, "--model", tiny_model_dir, "--max-new-tokens", 2, "--out", tmp_path / "pairs",
            "--skip-bad-lines", "--rejects", tmp_path / "rej.jsonl", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "rej.jsonl").read_text())["line"] == 2


def test_unloadable_model_and_bad_flags_exit_2(tmp_path):
    args = ["generate", "sl-cai", "-c", small_constitution(tmp_path), "-p", prompts_file(tmp_path), "--out", tmp_path / "run"]
    r = cai(*args, "--model", tmp_path / "missing-model")
    assert r.exit_code == 2 and "cannot load model" in r.output
    r = cai(*args, "--base-url", "http://localhost:1")
    assert r.exit_code == 2 and "--base-url is not an option of the 'transformers' engine" in r.output
    r = cai(*args, "--engine", "nope")
    assert r.exit_code == 2 and "unknown --engine" in r.output
    r = cai("export", tmp_path / "nothing")
    assert r.exit_code == 2 and "not a run directory" in r.output


def test_help_has_examples():
    for cmd in (["generate", "sl-cai", "--help"], ["generate", "pairs", "--help"], ["export", "--help"]):
        r = cai(*cmd)
        assert r.exit_code == 0 and "Examples:" in r.output and "cai " in r.output.split("Examples:")[1]


@pytest.mark.slow
def test_smoke_embedded_model_subprocess(tmp_path, embedded_model_dir):
    """The real `cai` process on the embedded SmolLM2-135M, 2 prompts, 16 tokens, one few-shot example
    (the full harmless prefix is ~1,400 tokens per request: prefill would dominate the test's time)."""
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cai_cli", "generate", "sl-cai", "-c", HARMLESS, "-p", str(REPO / "data" / "red_team_prompts.jsonl"),
         "--limit", "2", "--few-shot", "1", "--max-new-tokens", "16", "--batch-size", "2", "--out", str(out), "--quiet", "--show-example"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and recs[0]["model"] == "smollm2-135m" and recs[0]["constitution"].startswith("harmless@")
    assert recs[0]["few_shot"] == 1 and recs[0]["tokens"]["initial"]["prompt_tokens"] > 100
    assert all(x["initial_response"] and x["final_revision"] for x in recs)
    assert "--- revision ---" in proc.stdout
