"""SFT trainer on tiny models: it learns, it trains on assistant tokens only, packing keeps examples
apart, a killed run resumes on the same loss curve, and the result loads with from_pretrained."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainers.config import load_config
from trainers.metrics import read_metrics
from trainers.sft import SFTConfig, collate, forward_loss, pack_examples, train_sft

CAI = Path(sys.executable).parent / "cai"


def sft_rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "messages": [{"role": "user", "content": f"Name fruit {i}"},
                                         {"role": "assistant", "content": f"banana {i} apple"}]} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(tmp_path: Path, model: Path, **options) -> SFTConfig:
    data = options.pop("data", None) or [str(write_jsonl(tmp_path / "train.jsonl", sft_rows(4)))]
    defaults = dict(data=data, model=str(model), out=str(tmp_path / "out"), lr=1e-2, lr_schedule="constant",
                    warmup_ratio=0.0, batch_size=4, eval_fraction=0.0, quiet=True, max_length=64)
    return load_config(SFTConfig, None, **{**defaults, **options})


def test_sft_memorises_a_small_set_and_saves_a_loadable_model(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = train_sft(config(tmp_path, tiny_model_dir, max_steps=16))
    losses = [m["loss"] for m in read_metrics(tmp_path / "out") if "loss" in m]
    assert len(losses) == 16 and summary["steps"] == 16
    assert losses[-1] < 0.5 * losses[0], losses

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name fruit 2"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        next_token = model(**prompt).logits[0, -1].argmax().item()
    assert next_token == tokenizer("banana", add_special_tokens=False)["input_ids"][0]  # memorised first answer token


def test_loss_ignores_everything_but_assistant_tokens(tmp_path, tiny_model_dir):
    """The tokens that carry labels are exactly the assistant answers ("banana i apple<|im_end|>\n"):
    system prompt, user turn and role headers are -100 and contribute nothing to the loss."""
    from transformers import AutoTokenizer

    from trainers.data import LengthReport
    from trainers.models import load_model_and_tokenizer
    from trainers.sft import tokenize_sft_rows

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    rows = sft_rows(2)
    examples = tokenize_sft_rows(rows, tokenizer, LengthReport(64, "error"))
    batch = collate(examples, tokenizer.pad_token_id, "cpu")
    counted = (batch["labels"][:, 1:] != -100).sum().item()
    answer_tokens = sum(len(AutoTokenizer.from_pretrained(tiny_model_dir)(f"banana {i} apple<|im_end|>\n")["input_ids"]) for i in range(2))
    assert counted == answer_tokens
    loss, n = forward_loss(model, batch)
    assert n.item() == counted and loss.item() > 0


def test_packing_keeps_examples_apart(tiny_model_dir):
    """A packed row's loss (position ids restart per example) equals the token-weighted loss of the
    same examples run one by one; naive concatenation (attention across examples) differs."""
    import torch

    from trainers.data import LengthReport
    from trainers.models import load_model_and_tokenizer
    from trainers.sft import tokenize_sft_rows

    model, tokenizer = load_model_and_tokenizer(str(tiny_model_dir))
    examples = tokenize_sft_rows(sft_rows(3), tokenizer, LengthReport(64, "error"))
    packed = pack_examples(examples, 200)
    assert len(packed) == 1 and packed[0]["ids"] == ["r0", "r1", "r2"]
    with torch.no_grad():
        separate = [forward_loss(model, collate([e], tokenizer.pad_token_id, "cpu")) for e in examples]
        expected = sum(loss.item() * n.item() for loss, n in separate) / sum(n.item() for _, n in separate)
        packed_loss, _ = forward_loss(model, collate(packed, tokenizer.pad_token_id, "cpu"))
        naive = {k: v for k, v in packed[0].items() if k != "position_ids"}
        naive_loss, _ = forward_loss(model, collate([naive], tokenizer.pad_token_id, "cpu"))
    assert packed_loss.item() == pytest.approx(expected, abs=1e-5)
    assert abs(naive_loss.item() - expected) > 1e-4


def test_resume_after_interruption_continues_the_same_loss_curve(tmp_path, tiny_model_dir):
    """6 steps straight vs 2 steps, stop (as if killed after the checkpoint), rerun → same 6 losses
    and the same final weights. Uses grad accumulation, warm-up + cosine, two epochs of shuffling."""
    import torch
    from safetensors.torch import load_file

    data = [str(write_jsonl(tmp_path / "train.jsonl", sft_rows(8)))]
    options = dict(data=data, max_steps=6, batch_size=2, grad_accum=2, lr_schedule="cosine", warmup_ratio=0.25, lr=5e-3)
    straight = config(tmp_path, tiny_model_dir, out=str(tmp_path / "straight"), **options)
    train_sft(straight)
    interrupted = config(tmp_path, tiny_model_dir, out=str(tmp_path / "resumed"), stop_after_steps=2, **options)
    stopped = train_sft(interrupted)
    assert stopped["stopped_at_step"] == 2 and (tmp_path / "resumed" / "checkpoints" / "step-2").is_dir()
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    train_sft(config(tmp_path, tiny_model_dir, out=str(tmp_path / "resumed"), **options))  # resume=auto

    curve = lambda out: [(m["step"], m["loss"]) for m in read_metrics(out) if "loss" in m]  # noqa: E731
    a, b = curve(tmp_path / "straight"), curve(tmp_path / "resumed")
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 7))
    for (_, la), (_, lb) in zip(a, b):
        assert lb == pytest.approx(la, abs=1e-5)
    wa, wb = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)

    # --no-resume starts over (checkpoints in OUT are ignored): the curve restarts at step 1
    train_sft(config(tmp_path, tiny_model_dir, out=str(tmp_path / "resumed"), resume="never", **{**options, "max_steps": 1}))
    assert [s for s, _ in curve(tmp_path / "resumed")] == [1]


def test_lora_resumes_exactly_and_saves_a_merged_model(tmp_path, tiny_model_dir):
    """LoRA checkpoints hold only the adapter; resume still reproduces the curve, and the final folder
    is a plain merged model (no adapter files) that differs from the base."""
    import torch
    from safetensors.torch import load_file

    data = [str(write_jsonl(tmp_path / "train.jsonl", sft_rows(8)))]
    options = dict(data=data, max_steps=3, lora_r=4, lora_target_modules=["q_proj", "v_proj"], lr=5e-2)
    train_sft(config(tmp_path, tiny_model_dir, out=str(tmp_path / "a"), **options))
    train_sft(config(tmp_path, tiny_model_dir, out=str(tmp_path / "b"), stop_after_steps=1, **options))
    adapter = load_file(tmp_path / "b" / "checkpoints" / "step-1" / "model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)
    train_sft(config(tmp_path, tiny_model_dir, out=str(tmp_path / "b"), **options))
    a = [m["loss"] for m in read_metrics(tmp_path / "a")]
    assert [m["loss"] for m in read_metrics(tmp_path / "b")] == pytest.approx(a, abs=1e-5)
    assert not (tmp_path / "a" / "adapter_config.json").exists()
    merged, base = load_file(tmp_path / "a" / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert set(merged) == set(base)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])


def test_eval_split_and_length_report_in_summary(tmp_path, tiny_model_dir):
    rows = sft_rows(6) + [{"id": "huge", "messages": [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "ok"}]}]
    data = [str(write_jsonl(tmp_path / "train.jsonl", rows))]
    summary = train_sft(config(tmp_path, tiny_model_dir, data=data, max_steps=2, eval_fraction=0.3, on_long="skip",
                               eval_data=None, seed=1))
    lengths = summary["length"]
    assert lengths["train"]["too_long"] + lengths["eval"]["too_long"] == 1
    assert "huge" in lengths["train"]["too_long_examples"] + lengths["eval"]["too_long_examples"]
    assert summary["eval_examples"] >= 1 and summary["final_eval_loss"] is not None
    with pytest.raises(Exception, match=r"train.jsonl:7 \(id huge\): \d+ tokens > --max-length 64"):
        train_sft(config(tmp_path, tiny_model_dir, data=data, max_steps=1, resume="never"))


def test_cli_bad_data_names_the_row(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from trainers.cli import app

    bad = write_jsonl(tmp_path / "bad.jsonl", sft_rows(2) + [{"id": "r9", "messages": [{"role": "user", "content": "only a question"}]}])
    result = CliRunner().invoke(app, ["sft", "--data", str(bad), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "bad.jsonl:3 (id r9): `messages` has no non-empty assistant turn" in result.output
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("batch_sise: 4\n")
    result = CliRunner().invoke(app, ["sft", "--config", str(yaml_file), "--data", str(bad), "--model", "m", "--out", "o"])
    assert result.exit_code == 2 and "c.yaml:1: batch_sise: unknown key (did you mean batch_size?)" in result.output


@pytest.mark.slow
def test_cli_sft_smoke_on_embedded_model(tmp_path, embedded_model_dir):
    """`cai train sft` on the embedded SmolLM2-135M, 2 steps, on an export-shaped `messages` file."""
    rows = [{"id": f"sl-{i}", "messages": [{"role": "user", "content": f"How do I pick a lock {i}?"},
                                           {"role": "assistant", "content": "I can't help with that, but a locksmith can."}],
             "model": "smollm2-135m", "engine": "transformers", "constitution": "harmless@1", "principle_ids": ["harm"]}
            for i in range(6)]
    export = tmp_path / "export"
    export.mkdir()
    write_jsonl(export / "sft.jsonl", rows)
    out = tmp_path / "sft"
    command = [str(CAI), "train", "sft", "--data", str(export), "--model", "smollm2-135m", "--out", str(out),
               "--max-steps", "2", "--batch-size", "2", "--max-length", "96", "--on-long", "truncate", "--quiet",
               "--eval-fraction", "0", "--lora-r", "8", "--lora-target-modules", "q_proj", "--lora-target-modules", "v_proj"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout[done.stdout.index("{"):])["steps"] == 2
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


def test_resume_compares_resolved_paths_and_fingerprints_the_data(tmp_path, tiny_model_dir, monkeypatch):
    """The same --data / --out spelled relative then absolute resumes; a moved run directory resumes; a
    data file edited in place (same row count) is refused, naming the file; a checkpoint written before
    fingerprints existed still resumes."""
    import json as _json

    from trainers.checkpoint import latest_checkpoint
    from trainers.config import ConfigError

    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "train.jsonl", sft_rows(8))
    options = dict(max_steps=3, batch_size=2, lr=5e-3)
    stopped = train_sft(config(tmp_path, tiny_model_dir, data=["train.jsonl"], out="run", stop_after_steps=1, **options))
    assert stopped["stopped_at_step"] == 1
    (tmp_path / "run").rename(tmp_path / "moved")  # the run directory moves; data given as an absolute path now
    resumed = config(tmp_path, tiny_model_dir, data=[str(tmp_path / "train.jsonl")], out=str(tmp_path / "moved"),
                     stop_after_steps=1, **options)
    assert train_sft(resumed)["stopped_at_step"] == 2
    assert [m["step"] for m in read_metrics(tmp_path / "moved")] == [1, 2]

    edited = sft_rows(8)
    edited[3]["messages"][1]["content"] = "cherry"
    write_jsonl(tmp_path / "train.jsonl", edited)  # same number of rows: the step plan alone cannot tell
    with pytest.raises(ConfigError, match=f"the data file {tmp_path / 'train.jsonl'} changed since this checkpoint"):
        train_sft(config(tmp_path, tiny_model_dir, data=["train.jsonl"], out="moved", **options))

    state_file = latest_checkpoint(tmp_path / "moved") / "trainer_state.json"
    state = _json.loads(state_file.read_text())
    del state["inputs"], state["paths"]  # as written by an older version
    state_file.write_text(_json.dumps(state))
    assert train_sft(config(tmp_path, tiny_model_dir, data=["train.jsonl"], out="moved", **options))["steps"] == 3
