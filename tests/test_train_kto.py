"""KTO trainer: learning tests on a tiny random Llama (CPU) and a CLI smoke run on the embedded model (slow).

Synthetic task: desirable completions contain the marker word "banana", undesirable ones never do.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

WORDS = "the cat sat on a mat dog ran far away sun is warm blue sky tree grows tall river flows fast bird sings".split()
MARKER = "banana"


def kto_rows(n: int, seed: int, desirable_share: float = 0.5) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 7))]
        desirable = i < round(n * desirable_share)
        if desirable:
            words.insert(rng.randint(0, len(words)), MARKER)
        rows.append({"id": f"k{seed}-{i}", "prompt": [{"role": "user", "content": f"Tell me about the {rng.choice(WORDS)}."}],
                     "completion": [{"role": "assistant", "content": " ".join(words)}], "label": desirable})
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def kto_config(tmp_path: Path, model: Path, data: Path, **overrides):
    from trainers.kto import KTOConfig

    options = dict(data=[str(data)], model=str(model), out=str(tmp_path / "out"), eval_fraction=0.0, batch_size=8,
                   max_length=64, lr=1e-3, warmup_ratio=0.0, lr_schedule="constant", max_steps=10, quiet=True,
                   resume="never", seed=0)
    options.update(overrides)
    return KTOConfig(**options)


def test_mismatched_partners_never_pair_a_row_with_itself():
    from trainers.kto import mismatched_partners

    for n in (2, 3, 10, 101):
        partner = mismatched_partners(n, seed=n)
        assert all(partner[i] != i for i in range(n))
        assert sorted(partner) == list(range(n))  # every completion is used once as a KL sample
    assert mismatched_partners(10, seed=1) == mismatched_partners(10, seed=1)


def test_balance_equalises_the_classes_total_weight():
    from trainers.kto import KTOConfig, class_weights

    examples = [{"desirable": True}] * 3 + [{"desirable": False}] * 9
    config = KTOConfig(data=["x"], model="m", out="o", balance=True, desirable_weight=1.0)
    lambda_d, lambda_u = class_weights(examples, config)
    assert lambda_d * 3 == pytest.approx(lambda_u * 9)
    assert class_weights(examples, KTOConfig(data=["x"], model="m", out="o", undesirable_weight=2.0)) == (1.0, 2.0)


def test_kto_raises_desirable_likelihood_relative_to_undesirable(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from trainers.kto import train_kto
    from trainers.metrics import read_metrics

    train = write_jsonl(tmp_path / "train.jsonl", kto_rows(32, seed=0, desirable_share=0.25))
    held_out = write_jsonl(tmp_path / "held_out.jsonl", kto_rows(16, seed=1))
    summary = train_kto(kto_config(tmp_path, tiny_model_dir, train, eval_data=str(held_out), balance=True))
    assert summary["lambda_d"] * 8 == pytest.approx(summary["lambda_u"] * 24)

    steps = [m for m in read_metrics(tmp_path / "out") if "loss" in m]
    assert len(steps) == 10
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the initial policy is the reference
    # r = log π − log π_ref: desirable completions gained log-probability relative to undesirable ones,
    # on the training rows and on held-out rows that share only the marker with them.
    assert steps[-1]["rewards/margins"] > 0.5
    initial, final = summary["initial_eval"], summary["final_eval"]
    assert initial["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert final["eval_rewards/desirable"] - final["eval_rewards/undesirable"] > 0.3
    assert final["eval_loss"] < initial["eval_loss"]
    # The reference values of the mismatched (KL) pairs were precomputed with the matched ones.
    cached = load_file(str(tmp_path / "out" / "reference_logps_train.safetensors"))["logps"]
    assert cached.shape == (64,)


def test_kto_precomputed_reference_matches_live_reference(tmp_path, tiny_model_dir):
    from trainers.kto import train_kto
    from trainers.metrics import read_metrics

    train = write_jsonl(tmp_path / "train.jsonl", kto_rows(16, seed=2))
    curves = {}
    for mode in ("precompute", "live"):
        out = tmp_path / mode
        train_kto(kto_config(tmp_path, tiny_model_dir, train, out=str(out), ref_mode=mode, max_steps=3))
        curves[mode] = [(m["loss"], m["kl"]) for m in read_metrics(out) if "loss" in m]
    assert [x for pair in curves["precompute"] for x in pair] == pytest.approx(
        [x for pair in curves["live"] for x in pair], abs=1e-5)
    assert curves["live"][-1][1] > 0  # the KL estimate moved: the policy left the reference


def test_kto_rejects_non_boolean_labels(tmp_path, tiny_model_dir):
    from trainers.data import DataError
    from trainers.kto import train_kto

    rows = kto_rows(4, seed=3)
    rows[1]["label"] = "yes"
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"train\.jsonl:2 .*label"):
        train_kto(kto_config(tmp_path, tiny_model_dir, train))


@pytest.mark.slow
def test_cli_kto_smoke_on_embedded_model(tmp_path, embedded_model_dir):
    data = write_jsonl(tmp_path / "kto.jsonl", kto_rows(4, seed=4))
    out = tmp_path / "out"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cai"), "train", "kto", "--model", "smollm2-135m", "--data", str(data),
         "--out", str(out), "--max-steps", "2", "--batch-size", "2", "--max-length", "96", "--eval-fraction", "0",
         "--balance", "--quiet"],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["trainer"] == "kto"
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
