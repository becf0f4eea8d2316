"""DPO trainer: learning tests on a tiny random Llama (CPU, seconds each) and a CLI smoke run on the
embedded model (slow).

The synthetic task: every chosen response contains the marker word "banana", rejected ones never do;
the words around it are random. A policy that learned the preference (rather than memorised pairs)
also prefers held-out chosen responses, which share only the marker with the training ones.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, build_tiny_model

WORDS = "the cat sat on a mat dog ran far away sun is warm blue sky tree grows tall river flows fast bird sings".split()
MARKER = "banana"


def preference_rows(n: int, seed: int, p_chosen: float | None = None) -> list[dict]:
    rng = random.Random(seed)

    def words() -> list[str]:
        return [rng.choice(WORDS) for _ in range(rng.randint(4, 7))]

    rows = []
    for i in range(n):
        chosen = words()
        chosen.insert(rng.randint(0, len(chosen)), MARKER)
        row = {"id": f"s{seed}-{i}", "prompt": [{"role": "user", "content": f"Tell me about the {rng.choice(WORDS)}."}],
               "chosen": [{"role": "assistant", "content": " ".join(chosen)}],
               "rejected": [{"role": "assistant", "content": " ".join(words())}]}
        if p_chosen is not None:
            row["p_chosen"] = p_chosen
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def dpo_config(tmp_path: Path, model: Path, data: Path, **overrides):
    from trainers.dpo import DPOConfig

    options = dict(data=[str(data)], model=str(model), out=str(tmp_path / "out"), eval_fraction=0.0, batch_size=8,
                   max_length=64, lr=1e-3, warmup_ratio=0.0, lr_schedule="constant", max_steps=10, quiet=True,
                   resume="never", seed=0)
    options.update(overrides)
    return DPOConfig(**options)


def sequence_logp(model, tokenizer, prompt: list[dict], response: list[dict]) -> float:
    """Independent of the trainer: full-vocabulary log-softmax, summed over the response's tokens."""
    import torch

    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + response, tokenize=False)
    assert full_text.startswith(prompt_text)
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([tokenizer(full_text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    targets = ids[0, 1:]
    return float(logprobs[torch.arange(n_prompt - 1, len(targets)), targets[n_prompt - 1 :]].sum())


def preference_margin(model_dir: Path, rows: list[dict]) -> float:
    """Mean over pairs of log π(chosen) − log π(rejected)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    gaps = [sequence_logp(model, tokenizer, r["prompt"], r["chosen"]) - sequence_logp(model, tokenizer, r["prompt"], r["rejected"])
            for r in rows]
    return sum(gaps) / len(gaps)


@pytest.fixture(scope="module")
def hard_label_run(tmp_path_factory, tiny_model_dir):
    """One DPO run with hard labels (p_chosen absent) and a held-out eval file, shared by the tests below."""
    from trainers.dpo import train_dpo

    tmp = tmp_path_factory.mktemp("dpo-hard")
    train = write_jsonl(tmp / "train.jsonl", preference_rows(32, seed=0))
    held_out = preference_rows(16, seed=1)
    write_jsonl(tmp / "held_out.jsonl", held_out)
    summary = train_dpo(dpo_config(tmp, tiny_model_dir, train, eval_data=str(tmp / "held_out.jsonl")))
    return tmp, summary, held_out


def test_dpo_raises_margin_on_training_pairs(hard_label_run):
    from trainers.metrics import read_metrics

    tmp, summary, _ = hard_label_run
    train_metrics = [m for m in read_metrics(tmp / "out") if "loss" in m]
    assert len(train_metrics) == 10
    # Step 1 runs the initial policy, which equals the reference: Δ = 0 exactly, loss = log 2.
    assert train_metrics[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert train_metrics[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    last = train_metrics[-1]
    assert last["rewards/margins"] > 0.05
    assert last["rewards/accuracy"] >= 0.75
    assert last["loss"] < 0.68
    for key in ("rewards/chosen", "rewards/rejected", "tokens_per_s", "lr", "grad_norm"):
        assert key in last


def test_dpo_prefers_held_out_chosen_responses(hard_label_run, tiny_model_dir):
    tmp, summary, held_out = hard_label_run
    assert summary["initial_eval"]["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert summary["final_eval"]["eval_rewards/margins"] > 0.02
    assert summary["final_eval"]["eval_rewards/accuracy"] >= 0.75
    # The same, measured independently of the trainer on the saved model (which loads with its tokenizer).
    before = preference_margin(tiny_model_dir, held_out)
    after = preference_margin(tmp / "out", held_out)
    assert after - before > 0.2  # raw log-prob units (the eval margin above is β times this)


def test_soft_labels_of_one_half_express_no_preference(tmp_path, tiny_model_dir, hard_label_run):
    """p = 0.5: the loss −[½ log σ(Δ) + ½ log σ(−Δ)] is minimal at Δ = 0, where the policy starts; the
    same data and options with hard labels (the shared run) do move the margin."""
    from trainers.dpo import train_dpo

    train = write_jsonl(tmp_path / "train.jsonl", preference_rows(32, seed=0, p_chosen=0.5))
    summary = train_dpo(dpo_config(tmp_path, tiny_model_dir, train, eval_data=str(train)))
    soft_margin = summary["final_eval"]["eval_rewards/margins"]  # mean Δ over all 32 training pairs
    hard_margin = hard_label_run[1]["last_train_metrics"]["rewards/margins"]
    assert hard_margin > 0.05
    # Not exactly 0: the reference pass batches differently (float rounding), and Adam turns those
    # tiny gradients into lr-sized steps; Δ then wanders around 0 without a direction.
    assert abs(soft_margin) < 0.02
    assert abs(soft_margin) < 0.2 * hard_margin


def test_precomputed_reference_equals_live_reference(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.dpo import train_dpo
    from trainers.metrics import read_metrics

    rows = preference_rows(16, seed=3)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    curves = {}
    for mode in ("precompute", "live"):
        out = tmp_path / mode
        train_dpo(dpo_config(tmp_path, tiny_model_dir, train, out=str(out), ref_mode=mode, max_steps=4))
        curves[mode] = [(m["loss"], m["rewards/margins"]) for m in read_metrics(out) if "loss" in m]
    for (loss_p, margin_p), (loss_l, margin_l) in zip(curves["precompute"], curves["live"], strict=True):
        assert loss_p == pytest.approx(loss_l, abs=1e-5)
        assert margin_p == pytest.approx(margin_l, abs=1e-5)
    assert curves["live"][-1][1] > 0  # it trained: the comparison is not between two flat lines

    # The cache holds, for every training pair in file order (eval_fraction=0), log π_ref(chosen) then
    # log π_ref(rejected): compare with a reference model run independently of the trainer.
    cached = load_file(str(tmp_path / "precompute" / "reference_logps_train.safetensors"))["logps"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = [sequence_logp(model, tokenizer, r["prompt"], r["chosen"]) for r in rows]
    expected += [sequence_logp(model, tokenizer, r["prompt"], r["rejected"]) for r in rows]
    assert cached.tolist() == pytest.approx(expected, abs=1e-3)


def test_ref_model_option_uses_that_model_as_reference(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainers.dpo import train_dpo

    other = build_tiny_model(tmp_path / "other", seed=1)
    rows = preference_rows(4, seed=8)
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    summary = train_dpo(dpo_config(tmp_path, tiny_model_dir, train, ref_model=str(other), max_steps=1))
    assert summary["reference"] == {"model": str(other), "mode": "precompute"}
    cached = load_file(str(tmp_path / "out" / "reference_logps_train.safetensors"))["logps"]
    tokenizer = AutoTokenizer.from_pretrained(other)
    ref = AutoModelForCausalLM.from_pretrained(other).eval()
    expected = [sequence_logp(ref, tokenizer, r["prompt"], r[c]) for c in ("chosen", "rejected") for r in rows]
    assert cached.tolist() == pytest.approx(expected, abs=1e-3)
    # Step 1's policy is the initial --model, not the reference: Δ is not 0 from the start.
    assert summary["last_train_metrics"]["rewards/margins"] != pytest.approx(0.0, abs=1e-4)


def test_lora_live_reference_is_the_adapter_free_policy(tmp_path, tiny_model_dir):
    """With LoRA and no --ref-model, live mode switches the adapter off instead of loading a copy."""
    from trainers.dpo import train_dpo
    from trainers.metrics import read_metrics

    train = write_jsonl(tmp_path / "train.jsonl", preference_rows(16, seed=4))
    losses, evals = {}, {}
    for mode in ("precompute", "live"):
        out = tmp_path / mode
        summary = train_dpo(dpo_config(tmp_path, tiny_model_dir, train, out=str(out), ref_mode=mode, max_steps=3,
                                       lora_r=4, lr=1e-2, eval_data=str(train)))  # 2 eval batches
        losses[mode] = [m["loss"] for m in read_metrics(out) if "loss" in m]
        evals[mode] = summary["final_eval"]["eval_rewards/margins"]
    assert losses["precompute"] == pytest.approx(losses["live"], abs=1e-5)
    assert evals["precompute"] == pytest.approx(evals["live"], abs=1e-5)
    assert losses["live"][-1] < losses["live"][0]


def test_resume_after_kill_continues_the_same_loss_curve(tmp_path, tiny_model_dir):
    from trainers.dpo import train_dpo
    from trainers.metrics import read_metrics

    train = write_jsonl(tmp_path / "train.jsonl", preference_rows(24, seed=5))
    whole = tmp_path / "whole"
    train_dpo(dpo_config(tmp_path, tiny_model_dir, train, out=str(whole), max_steps=6, batch_size=4))

    broken = tmp_path / "broken"
    config = dpo_config(tmp_path, tiny_model_dir, train, out=str(broken), max_steps=6, batch_size=4, save_every=2)
    config.stop_after_steps, config.resume = 3, "auto"
    assert train_dpo(config)["stopped_at_step"] == 3
    # A kill after step 3: the last checkpoint written by save_every is step 2; step 3's is lost.
    shutil.rmtree(broken / "checkpoints" / "step-3")
    config.stop_after_steps = None
    summary = train_dpo(config)
    assert summary["steps"] == 6

    expected = [m["loss"] for m in read_metrics(whole) if "loss" in m]
    resumed = [m["loss"] for m in read_metrics(broken) if "loss" in m]
    assert len(resumed) == 6
    assert resumed == pytest.approx(expected, abs=1e-5)


def test_bad_rows_name_the_file_and_line(tmp_path, tiny_model_dir):
    from trainers.data import DataError
    from trainers.dpo import train_dpo

    rows = preference_rows(4, seed=6)
    rows[2]["p_chosen"] = 1.5
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError, match=r"train\.jsonl:3 .*p_chosen"):
        train_dpo(dpo_config(tmp_path, tiny_model_dir, train))


@pytest.mark.slow
def test_cli_dpo_smoke_on_embedded_model(tmp_path, embedded_model_dir):
    rows = preference_rows(4, seed=7)
    for row, p in zip(rows, (1.0, 0.8, 0.6, 0.9)):
        row["p_chosen"] = p
    data = write_jsonl(tmp_path / "preferences.jsonl", rows)
    out = tmp_path / "out"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cai"), "train", "dpo", "--model", "smollm2-135m", "--data", str(data),
         "--out", str(out), "--max-steps", "2", "--batch-size", "2", "--max-length", "96", "--eval-fraction", "0",
         "--quiet"],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["trainer"] == "dpo"
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    assert (out / "reference_logps_train.safetensors").exists()
