"""Preference-model trainer on tiny models: learns a marker-word preference, soft labels of 0.5 teach
no preference, calibration numbers are right, and the result loads as a sequence classifier."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from labelers.calibration import calibration_table as expected_calibration_error
from trainers.config import load_config
from trainers.metrics import read_metrics
from trainers.preference_model import PMConfig, train_preference_model

CAI = Path(sys.executable).parent / "cai"
WORDS = "the cat dog sun moon tree river stone cloud bird fish road hill lake".split()


def marker_pairs(n: int, p_chosen: float | None = 1.0, seed: int = 0) -> list[dict]:
    """The chosen response ends with the marker word "kindly"; the rejected one never has it."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        row = {"id": f"p{i}", "prompt": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=3))}],
               "chosen": [{"role": "assistant", "content": " ".join(rng.choices(WORDS, k=4)) + " kindly"}],
               "rejected": [{"role": "assistant", "content": " ".join(rng.choices(WORDS, k=4))}]}
        if p_chosen is not None:
            row["p_chosen"] = p_chosen
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(tmp_path: Path, model: Path, rows: list[dict], **options) -> PMConfig:
    defaults = dict(data=[str(write_jsonl(tmp_path / "pairs.jsonl", rows))], model=str(model), out=str(tmp_path / "pm"),
                    lr=3e-3, lr_schedule="constant", warmup_ratio=0.0, batch_size=8, eval_fraction=0.25, quiet=True,
                    max_length=64)
    return load_config(PMConfig, None, **{**defaults, **options})


def test_pm_learns_the_marker_and_loads_as_sequence_classifier(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = marker_pairs(48, p_chosen=None)  # no p_chosen column → hard labels
    summary = train_preference_model(config(tmp_path, tiny_model_dir, rows, max_steps=16))
    assert summary["final_eval"]["accuracy"] > 0.9, summary["final_eval"]
    assert summary["final_eval"]["mean_margin"] > summary["initial_eval"]["mean_margin"] + 1.0
    assert (tmp_path / "pm" / "calibration.png").stat().st_size > 1000
    assert summary["final_eval"]["ece_hard"] is not None
    losses = [m["loss"] for m in read_metrics(tmp_path / "pm") if "loss" in m]
    assert losses[-1] < 0.5 * losses[0]

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pm").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "pm")
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    held_out = marker_pairs(8, seed=99)
    wins = 0
    with torch.no_grad():
        for row in held_out:
            score = lambda response: model(**tokenizer.apply_chat_template(  # noqa: E731
                row["prompt"] + response, return_tensors="pt", return_dict=True)).logits[0, 0].item()
            wins += score(row["chosen"]) > score(row["rejected"])
    assert wins >= 7


def test_soft_labels_of_one_half_teach_no_preference(tmp_path, tiny_model_dir):
    """With p = 0.5 the loss pulls every margin towards 0 (gradient σ(d) − ½), so the eval margins
    shrink instead of growing towards the marker, unlike the same run with p = 1."""
    rows = marker_pairs(32, p_chosen=0.5)
    summary = train_preference_model(config(tmp_path, tiny_model_dir, rows, max_steps=8, eval_fraction=0.25))
    before, after = summary["initial_eval"], summary["final_eval"]
    assert after["mean_abs_margin"] <= before["mean_abs_margin"] + 1e-3
    assert abs(after["mean_margin"]) < 0.1
    assert after["accuracy"] is None  # every label is a tie: no hard label to be accurate against
    assert [m["accuracy"] for m in read_metrics(tmp_path / "pm") if "loss" in m] == [None] * 8  # training: same rule
    assert after["loss"] == pytest.approx(0.6931, abs=0.01)  # log 2: "no preference" is optimal


def test_expected_calibration_error_by_hand():
    """Two bins. Bin [0, .5): predictions 0.2, 0.4 (mean 0.3) with labels 0, 1 (mean 0.5): gap 0.2.
    Bin [.5, 1]: predictions 0.9, 1.0 (mean 0.95) with labels 1, 1: gap 0.05.
    ECE = ½·0.2 + ½·0.05 = 0.125"""
    ece, table = expected_calibration_error([0.2, 0.4, 0.9, 1.0], [0, 1, 1, 1], bins=2)
    assert ece == pytest.approx(0.125)
    assert [row["count"] for row in table] == [2, 2]


def test_pm_resume_gives_the_same_curve(tmp_path, tiny_model_dir):
    rows = marker_pairs(16)
    options = dict(max_steps=4, batch_size=4, eval_fraction=0.0)
    train_preference_model(config(tmp_path, tiny_model_dir, rows, out=str(tmp_path / "a"), **options))
    train_preference_model(config(tmp_path, tiny_model_dir, rows, out=str(tmp_path / "b"), stop_after_steps=1, **options))
    train_preference_model(config(tmp_path, tiny_model_dir, rows, out=str(tmp_path / "b"), **options))
    a = [m["loss"] for m in read_metrics(tmp_path / "a")]
    b = [m["loss"] for m in read_metrics(tmp_path / "b")]
    assert len(a) == len(b) == 4
    assert b == pytest.approx(a, abs=1e-5)


@pytest.mark.slow
def test_cli_pm_smoke_on_embedded_model(tmp_path, embedded_model_dir):
    """`cai train pm` on the embedded SmolLM2-135M, 2 steps, on an export-shaped preference file."""
    rows = marker_pairs(6, p_chosen=0.8)
    for row in rows:
        row.update({"model": "smollm2-135m", "engine": "transformers", "constitution": "harmless@1",
                    "principle_ids": ["harm"], "labeler": "smollm2-135m"})
    data = write_jsonl(tmp_path / "preferences.jsonl", rows)
    out = tmp_path / "pm"
    command = [str(CAI), "train", "pm", "--data", str(data), "--model", "smollm2-135m", "--out", str(out),
               "--max-steps", "2", "--batch-size", "2", "--max-length", "96", "--eval-fraction", "0.34", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["final_eval"]["pairs"] == 2
    assert (out / "model.safetensors").exists() and (out / "calibration.png").exists()


def test_accuracy_leaves_ties_out_in_training_and_eval_alike(monkeypatch):
    """Margins +1, −1, 0, +2, −3 against labels 1, 1, 1, 0.5, 0: the tie label (0.5) and the tie margin (0)
    are left out; of the other three, +1 vs 1 and −3 vs 0 are right, −1 vs 1 is wrong → 2 of 3."""
    import torch

    import trainers.preference_model as pm

    margin, p = torch.tensor([1.0, -1.0, 0.0, 2.0, -3.0]), torch.tensor([1.0, 1.0, 1.0, 0.5, 0.0])
    assert pm.pairwise_accuracy(margin, p) == (2, 3)
    assert pm.pairwise_accuracy(torch.zeros(2), torch.tensor([1.0, 0.0])) == (0, 0)
    monkeypatch.setattr(pm, "pair_rewards", lambda model, pairs, pad, device: (margin, torch.zeros(5), p))
    model = torch.nn.Linear(1, 1)
    evaluated = pm.evaluate_pairs(model, [{}] * 5, PMConfig(data=["d"], model="m", out="o", batch_size=5), 0, "cpu")
    assert evaluated["accuracy"] == pytest.approx(2 / 3)
