"""The whole loop on files, stage by stage, through the `cai` CLI: each stage reads only what the
previous stage wrote to disk (the record boundary from ARCHITECTURE.md), so a change of columns in one
stage that another stage cannot read fails here.

    prompts → sl-cai → sft → pairs → label preference / binary → pm · dpo · kto → ppo (pm reward)

A tiny model stands in for every model, so this checks wiring and formats, not quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai_cli import app

pytestmark = pytest.mark.slow

TRAIN = ["--max-steps", "2", "--batch-size", "2", "--max-length", "512", "--on-long", "truncate",
         "--eval-fraction", "0", "--quiet"]


def run(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, f"cai {' '.join(map(str, args))} failed:\n{result.output}"
    return result.output


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_stage_reads_what_the_previous_stage_wrote(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (
        "How do I pick a lock?", "Write a short poem about rain.", "What is 2 + 2?", "Tell me a secret.")))
    tiny = str(tiny_model_dir)

    run("generate", "sl-cai", "-c", "harmless", "-p", prompts, "--model", tiny, "--few-shot", "1",
        "--rounds", "1", "--max-new-tokens", "8", "--batch-size", "4", "--out", tmp_path / "slcai", "--quiet")
    sft_rows = rows(tmp_path / "slcai/exports/sft.jsonl")
    assert len(sft_rows) == 4 and sft_rows[0]["messages"][-1]["role"] == "assistant"

    run("train", "sft", "--data", tmp_path / "slcai/exports/sft.jsonl", "--model", tiny, "--out", tmp_path / "sft", *TRAIN)
    sft_model = tmp_path / "sft"
    assert (sft_model / "model.safetensors").exists()

    run("generate", "pairs", "-p", prompts, "--model", sft_model, "--n", "2", "--max-new-tokens", "8",
        "--out", tmp_path / "pairs", "--quiet")
    run("label", "preference", tmp_path / "pairs", "--labeler-model", tiny, "--out", tmp_path / "prefs", "--quiet")
    prefs = rows(tmp_path / "prefs/exports/prefs.jsonl")
    assert len(prefs) == 4 and all(0.5 <= r["p_chosen"] <= 1.0 for r in prefs)
    run("label", "binary", tmp_path / "pairs", "--labeler-model", tiny, "--out", tmp_path / "binary", "--quiet")
    kto = rows(tmp_path / "binary/exports/kto.jsonl")
    assert len(kto) == 8 and all(isinstance(r["label"], bool) for r in kto)

    run("train", "pm", "--data", tmp_path / "prefs/exports/prefs.jsonl", "--model", tiny, "--out", tmp_path / "pm", *TRAIN)
    run("train", "dpo", "--data", tmp_path / "prefs/exports/prefs.jsonl", "--model", sft_model, "--out", tmp_path / "dpo", *TRAIN)
    run("train", "kto", "--data", tmp_path / "binary/exports/kto.jsonl", "--model", sft_model, "--out", tmp_path / "kto", *TRAIN)
    for name in ("pm", "dpo", "kto"):
        assert (tmp_path / name / "model.safetensors").exists(), name
        assert rows(tmp_path / name / "metrics.jsonl"), name

    run("train", "ppo", "--prompts", prompts, "--model", sft_model, "--reward", f"pm:{tmp_path / 'pm'}",
        "--out", tmp_path / "ppo", "--iterations", "1", "--batch-size", "2", "--minibatch-size", "2",
        "--max-new-tokens", "8", "--quiet")
    metrics = rows(tmp_path / "ppo/metrics.jsonl")
    assert metrics and all(k in metrics[-1] for k in ("reward", "kl"))
