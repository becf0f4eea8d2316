"""trainers/config.py, models.py, plan.py, checkpoint.py and data.py: configs, data loading and validation, masks, the step
plan, checkpoints and the metrics file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainers.checkpoint import latest_checkpoint
from trainers.config import ConfigError, TrainConfig, load_config
from trainers.data import (
    DataError,
    LengthReport,
    load_rows,
    load_training_rows,
    parse_data_arg,
    split_eval,
    tokenize_messages,
    validate_rows,
)
from trainers.metrics import MetricsLogger, read_metrics
from trainers.plan import plan_steps

REQUIRED = {"data": ["d.jsonl"], "model": "m", "out": "o"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def chat(i: int) -> dict:
    return {"id": f"r{i}", "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}


# ---------------------------------------------------------------- config


def test_config_precedence_defaults_yaml_cli(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 0.001\nbatch-size: 4\ndata: [x.jsonl]\nmodel: m\nout: o\n")
    config = load_config(TrainConfig, cfg_file, batch_size=2, lr=None)
    assert config.lr == 0.001  # from YAML (the CLI left it unset)
    assert config.batch_size == 2  # CLI wins
    assert config.seed == 0  # default
    assert config.data == ["x.jsonl"]


def test_config_unknown_yaml_key_is_named(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml:1: learning_rate: unknown key \(did you mean lr\?\)"):
        load_config(TrainConfig, cfg_file, **REQUIRED)


def test_config_type_and_choice_errors(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("batch_size: many\n")
    with pytest.raises(ConfigError, match=r"c.yaml:1: batch_size: expected int, got 'many'"):
        load_config(TrainConfig, cfg_file, **REQUIRED)
    with pytest.raises(ConfigError, match="--on-long must be one of skip, truncate, error"):
        load_config(TrainConfig, None, on_long="sometimes", **REQUIRED)
    with pytest.raises(ConfigError, match="missing required option --model"):
        load_config(TrainConfig, None, data=["d"], out="o")


# ---------------------------------------------------------------- data


def test_bad_rows_are_named(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [chat(0), {"id": "broken", "prompt": "x"}])
    with pytest.raises(DataError, match=r"d.jsonl:2 \(id broken\): missing column\(s\) messages"):
        validate_rows(load_rows(path, "sft"), "sft")
    empty = {"id": "e1", "prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "  "}],
             "rejected": [{"role": "assistant", "content": "no"}]}
    path = write_jsonl(tmp_path / "p.jsonl", [empty])
    with pytest.raises(DataError, match=r"p.jsonl:1 \(id e1\): `chosen` is an empty response"):
        validate_rows(load_rows(path, "preference"), "preference")
    bad_p = dict(empty, chosen=[{"role": "assistant", "content": "yes"}], p_chosen=1.5)
    with pytest.raises(DataError, match=r"p_chosen must be a number in \[0, 1\], got 1.5"):
        validate_rows(load_rows(write_jsonl(tmp_path / "q.jsonl", [bad_p]), "preference"), "preference")
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_rows(tmp_path / "bad.jsonl", "sft")


def test_sources_jsonl_datasets_folder_and_export_dir(tmp_path):
    from datasets import Dataset

    rows = [chat(i) for i in range(3)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    loaded = load_rows(tmp_path / "ds", "sft")
    assert [r["id"] for r in loaded] == ["r0", "r1", "r2"] and loaded[1]["_where"].endswith("ds[1]")
    export = tmp_path / "export"
    export.mkdir()
    write_jsonl(export / "sft.jsonl", rows)
    write_jsonl(export / "preferences.jsonl", [])
    assert len(load_rows(export, "sft")) == 3
    with pytest.raises(DataError, match="cannot tell which data to use for kto"):
        load_rows(export, "kto")


def test_mixing_weights_give_exact_shares(tmp_path):
    """T = 10 + 30 = 40 rows; weights 0.7 / 0.3 → round(40·0.7) = 28 from a (10 rows: up-sampled,
    each row at least twice) and round(40·0.3) = 12 from b (30 rows: down-sampled, no repeats)."""
    a = write_jsonl(tmp_path / "a.jsonl", [dict(chat(i), id=f"a{i}") for i in range(10)])
    b = write_jsonl(tmp_path / "b.jsonl", [dict(chat(i), id=f"b{i}") for i in range(30)])
    rows, mix = load_training_rows([f"{a}:0.7", f"{b}:0.3"], "sft", seed=1)
    from_a = [r["id"] for r in rows if r["id"].startswith("a")]
    from_b = [r["id"] for r in rows if r["id"].startswith("b")]
    assert len(from_a) == 28 and len(from_b) == 12
    assert min(from_a.count(f"a{i}") for i in range(10)) >= 2
    assert len(set(from_b)) == 12
    assert [s["used"] for s in mix["sources"]] == [28, 12]
    assert parse_data_arg("x.jsonl") == ("x.jsonl", None)
    with pytest.raises(DataError, match="positive"):
        parse_data_arg("x.jsonl:-1")


def test_eval_split_is_seeded_and_disjoint():
    rows = [chat(i) for i in range(20)]
    train, held = split_eval(rows, 0.25, seed=3)
    assert len(held) == 5 and len(train) == 15
    assert {r["id"] for r in train}.isdisjoint(r["id"] for r in held)
    assert [r["id"] for r in split_eval(rows, 0.25, seed=3)[1]] == [r["id"] for r in held]


def test_assistant_mask_covers_exactly_the_assistant_turns(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    messages = [{"role": "user", "content": "Tell me a secret"}, {"role": "assistant", "content": "I keep none."},
                {"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Honesty."}]
    ids, mask = tokenize_messages(tokenizer, messages)
    trained = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert trained == "I keep none.<|im_end|>\nHonesty.<|im_end|>\n"
    untrained = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert "Tell me a secret" in untrained and "Why?" in untrained and "<|im_start|>assistant" in untrained
    # train_from skips the earlier assistant turn (a prompt's history is context, not target)
    _, mask_last = tokenize_messages(tokenizer, messages, train_from=3)
    assert tokenizer.decode([t for t, m in zip(ids, mask_last) if m]) == "Honesty.<|im_end|>\n"


def test_length_policy_reports_and_errors():
    row = {"id": "long1", "_where": "d.jsonl:4"}
    sequence = (list(range(10)), [0] * 6 + [1] * 4)
    with pytest.raises(DataError, match=r"d.jsonl:4 \(id long1\): 10 tokens > --max-length 8"):
        LengthReport(8, "error").fit(row, sequence)
    skipper = LengthReport(8, "skip")
    assert skipper.fit(row, sequence) is None
    assert "1 example(s) longer than --max-length 8 were skipped (e.g. long1)" in skipper.message()
    cutter = LengthReport(8, "truncate")
    (ids, mask), = cutter.fit(row, sequence)
    assert ids == list(range(8)) and mask == [0] * 6 + [1] * 2
    assert cutter.summary()["too_long"] == 1
    assert LengthReport(5, "truncate").fit(row, sequence) is None  # nothing of the response would remain


# ---------------------------------------------------------------- step plan, metrics, checkpoints


def test_step_plan_is_a_pure_function_of_the_step():
    config = load_config(TrainConfig, None, batch_size=2, grad_accum=2, epochs=2, seed=5, **REQUIRED)
    plan = plan_steps(10, config)
    assert plan.steps_per_epoch == 3 and plan.total_steps == 6
    epoch0 = [i for step in range(3) for batch in plan.micro_batches(step) for i in batch]
    assert sorted(epoch0) == list(range(10))  # every row once per epoch
    assert plan.micro_batches(2) == [[epoch0[8], epoch0[9]]]  # last step of the epoch is smaller
    assert plan.micro_batches(4) == plan_steps(10, config).micro_batches(4)  # recomputable on resume
    assert plan.micro_batches(3) != plan.micro_batches(0)  # a new permutation each epoch


def test_metrics_logger_drops_lines_after_resume_step(tmp_path):
    config = load_config(TrainConfig, None, **REQUIRED)
    logger = MetricsLogger(tmp_path, config)
    for step in range(1, 6):
        logger.log(step, {"loss": float(step)})
    logger.close()
    logger = MetricsLogger(tmp_path, config, resume_step=3)
    logger.log(4, {"loss": 40.0})
    logger.close()
    assert [(m["step"], m["loss"]) for m in read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path, tiny_model_dir):
    import random

    import numpy as np
    import torch

    from trainers.checkpoint import load_checkpoint, save_checkpoint
    from trainers.models import load_model_and_tokenizer, make_accelerator, make_optimizer_and_scheduler

    config = load_config(TrainConfig, None, data=["d"], model=str(tiny_model_dir), out=str(tmp_path), lr=1e-2, keep_checkpoints=1)
    plan = plan_steps(4, config)

    def setup():
        model, _ = load_model_and_tokenizer(config.model)
        accelerator = make_accelerator(config)
        optimizer, scheduler = make_optimizer_and_scheduler(model, config, 10)
        model, optimizer = accelerator.prepare(model, optimizer)
        return accelerator, model, optimizer, scheduler

    accelerator, model, optimizer, scheduler = setup()
    ids = torch.randint(0, 1000, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    save_checkpoint(tmp_path, 1, accelerator, model, optimizer, scheduler, config, plan)
    save_checkpoint(tmp_path, 2, accelerator, model, optimizer, scheduler, config, plan)
    assert latest_checkpoint(tmp_path).name == "step-2" and not (tmp_path / "checkpoints" / "step-1").exists()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    accelerator, model2, optimizer2, scheduler2 = setup()
    state = load_checkpoint(latest_checkpoint(tmp_path), accelerator, model2, optimizer2, scheduler2, config, plan)
    assert state["step"] == 2
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    for key, value in model2.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert scheduler2.get_last_lr() == scheduler.get_last_lr()
    assert torch.equal(optimizer2.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])

    changed = load_config(TrainConfig, None, data=["d"], model=str(tiny_model_dir), out=str(tmp_path), lr=5e-2)
    with pytest.raises(ConfigError, match="options changed since this checkpoint: lr"):
        load_checkpoint(latest_checkpoint(tmp_path), accelerator, model2, optimizer2, scheduler2, changed, plan)


@pytest.mark.parametrize("trainer", ["sft", "pm", "dpo", "kto"])
def test_logged_lr_is_the_rate_the_step_used(tmp_path, tiny_model_dir, trainer):
    """Linear warm-up over 2 of 4 steps: step 1 updates with lr 0 and step 2 with lr/2 — and logs just that."""
    import importlib

    module, config_cls, function, row = {
        "sft": ("trainers.sft", "SFTConfig", "train_sft", chat(0)),
        "pm": ("trainers.preference_model", "PMConfig", "train_preference_model",
               {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}),
        "dpo": ("trainers.dpo", "DPOConfig", "train_dpo", {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}),
        "kto": ("trainers.kto", "KTOConfig", "train_kto", {"prompt": "Hi", "completion": "Hello", "label": True}),
    }[trainer]
    rows = [row] * 3 + ([{**row, "label": False}] if trainer == "kto" else [row])
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    code = importlib.import_module(module)
    config = load_config(getattr(code, config_cls), None, data=[str(data)], model=str(tiny_model_dir), out=str(tmp_path / "o"),
                         lr=1e-3, lr_schedule="linear", warmup_ratio=0.5, max_steps=4, stop_after_steps=2, batch_size=4,
                         eval_fraction=0.0, quiet=True, max_length=64)
    getattr(code, function)(config)
    assert [m["lr"] for m in read_metrics(tmp_path / "o") if "lr" in m] == [0.0, pytest.approx(5e-4)]
