"""One config system: `--config file.yaml` on every generate / label / train command (defaults < file <
command line), `file:line: key.path` errors, and the resolved config saved in the run directory and
loadable back with `--config`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from label_fakes import FakeEngine
from typer.testing import CliRunner

from cai_cli import app
from jobs.config import ConfigError, load_config

runner = CliRunner()


def cai(*args):
    return runner.invoke(app, [str(a) for a in args])


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def prompts_file(tmp_path, n=3) -> Path:
    return write(tmp_path / "prompts.jsonl", "".join(json.dumps({"id": f"p{i}", "prompt": f"question {i}?"}) + "\n" for i in range(n)))


def one_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def fake_engines(monkeypatch):
    def policy(config):
        engine = FakeEngine(lambda c, o: 0.0, rationale=" an answer", model_id=config.model)
        engine.name = config.engine
        return engine

    monkeypatch.setattr("generators.cli._load_engine", policy)
    monkeypatch.setattr("labelers.cli._load_engine", lambda *a, **k: FakeEngine(lambda c, o: math.log(0.7 if "(A)" in o else 0.3)))


# ---- generate ---------------------------------------------------------------------------------------


def test_generate_pairs_reads_config_file_and_the_command_line_wins(tmp_path, fake_engines):
    out = tmp_path / "run"
    cfg = write(tmp_path / "pairs.yaml", f"prompts: {prompts_file(tmp_path)}\nn: 3\nmax-new-tokens: 4\nseed: 5\nbatch_size: 2\n")
    r = cai("generate", "pairs", "--config", cfg, "--seed", 7, "-o", out, "-q")
    assert r.exit_code == 0, r.output
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(len(rec["responses"]) == 3 for rec in records)  # n from the file
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["n"] == 3 and saved["max_new_tokens"] == 4 and saved["seed"] == 7  # the command line won
    assert "overwrite" not in saved and "quiet" not in saved  # how to run, not what

    # the saved config reproduces the run: rerunning with it alone finds everything done
    again = cai("generate", "pairs", "--config", out / "config.yaml", "-q")
    assert again.exit_code == 0, again.output
    assert "0 prompts generated, 3 already done" in again.output


def test_generate_config_typo_is_file_line_key(tmp_path, fake_engines):
    cfg = write(tmp_path / "c.yaml", f"prompts: {prompts_file(tmp_path)}\nmax_new_token: 4\n")
    line = one_error(cai("generate", "sl-cai", "--config", cfg, "-c", "harmless", "-o", tmp_path / "run"))
    assert line == f"error: {cfg}:2: max_new_token: unknown key (did you mean max_new_tokens?)"
    assert not (tmp_path / "run").exists()


def test_generate_config_type_error_names_the_nested_key(tmp_path, fake_engines):
    cfg = write(tmp_path / "c.yaml", f"prompts: {prompts_file(tmp_path)}\nout: {tmp_path / 'run'}\nengine_opt:\n  - a=1\n  - {{b: 2}}\n")
    line = one_error(cai("generate", "pairs", "--config", cfg))
    assert line.startswith(f"error: {cfg}:5: engine_opt[1]: expected string")
    cfg = write(tmp_path / "d.yaml", f"prompts: {prompts_file(tmp_path)}\nn: many\n")
    assert one_error(cai("generate", "pairs", "--config", cfg, "-o", tmp_path / "run")) == f"error: {cfg}:2: n: expected int, got 'many'"


def test_config_file_refuses_aliases_and_missing_required(tmp_path, fake_engines):
    cfg = write(tmp_path / "c.yaml", "prompts: &p x.jsonl\nrejects: *p\n")
    assert "YAML aliases/anchors are not allowed" in one_error(cai("generate", "pairs", "--config", cfg, "-o", tmp_path / "r"))
    line = one_error(cai("generate", "pairs", "-o", tmp_path / "r"))
    assert line == "error: missing required option --prompts (or `prompts:` in the config file)"


# ---- label ------------------------------------------------------------------------------------------


def test_label_preference_reads_config_file_and_saves_the_resolved_config(tmp_path, fake_engines):
    pairs = write(tmp_path / "pairs.jsonl", "".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n" for i in range(3)))
    out = tmp_path / "prefs"
    cfg = write(tmp_path / "label.yaml", f"pairs: {pairs}\nout: {out}\nseed: 3\nmin_margin: 0.3\nsingle-order: true\n")
    r = cai("label", "preference", "--config", cfg, "--min-margin", 0.1, "--quiet")
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["seed"] == 3 and saved["single_order"] is True and saved["min_margin"] == 0.1
    assert saved["pairs"] == str(pairs) and saved["labeler_model"] == "smollm2-135m"
    # positional argument and options on the command line still work, and win over the file
    r = cai("label", "preference", pairs, "--config", out / "config.yaml", "--out", tmp_path / "prefs2", "-q")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((tmp_path / "prefs2" / "config.yaml").read_text())["seed"] == 3


def test_label_config_typo(tmp_path, fake_engines):
    cfg = write(tmp_path / "c.yaml", "labeler-modle: x\n")
    line = one_error(cai("label", "eval", "--gold", tmp_path / "g.jsonl", "--config", cfg))
    assert line == f"error: {cfg}:1: labeler-modle: unknown key (did you mean labeler_model?)"


# ---- train ------------------------------------------------------------------------------------------


def test_train_sft_config_file_cli_wins_and_config_yaml_loads_back(tmp_path, monkeypatch):
    from trainers.sft import SFTConfig

    seen = []
    monkeypatch.setattr("trainers.sft.train_sft", lambda config: seen.append(config) or {"steps": 0})
    out = tmp_path / "sft"
    cfg = write(tmp_path / "sft.yaml", f"data: [d.jsonl]\nmodel: m\nout: {out}\nlr: 0.001\nbatch-size: 4\nlora_target_modules: [q_proj]\n")
    r = cai("train", "sft", "--config", cfg, "--batch-size", 2, "--no-resume")
    assert r.exit_code == 0, r.output
    config = seen[0]
    assert config.lr == 0.001 and config.batch_size == 2 and config.resume == "never" and config.lora_target_modules == ["q_proj"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert "resume" not in saved and "quiet" not in saved  # how to run, not what: a rerun resumes by default
    reloaded = load_config(SFTConfig, out / "config.yaml")
    assert reloaded == config.model_copy(update={"resume": "auto"})  # OUT/config.yaml reproduces the options
    r = cai("train", "sft", "--config", out / "config.yaml")
    assert r.exit_code == 0 and seen[1] == reloaded


def test_train_config_typo_and_choice_errors(tmp_path):
    cfg = write(tmp_path / "ppo.yaml", "prompts: p.txt\nmodel: m\nreward: pm:x\nout: o\nkl_coeff: 0.1\n")
    assert one_error(cai("train", "ppo", "--config", cfg)).startswith(f"error: {cfg}:5: kl_coeff: unknown key (did you mean kl_coef")
    cfg = write(tmp_path / "dpo.yaml", "data: d.jsonl\nmodel: m\nout: o\non_long: sometimes\n")
    assert one_error(cai("train", "dpo", "--config", cfg)) == (
        f"error: {cfg}:4: on_long: must be one of skip, truncate, error; got 'sometimes'")
    assert one_error(cai("train", "kto", "--data", "d", "--model", "m", "--out", "o", "--on-long", "x")) == (
        "error: --on-long must be one of skip, truncate, error; got 'x'")


def test_ppo_shares_the_common_training_fields():
    from trainers.config import TrainBase
    from trainers.ppo import PPOConfig

    assert set(TrainBase.model_fields) <= set(PPOConfig.model_fields)
    config = PPOConfig(prompts="p.txt", model="m", reward="pm:x", out="o")
    assert config.prompts == ["p.txt"] and config.lr_schedule == "constant" and config.save_every == 10
    with pytest.raises(ConfigError, match="--rloo-k must be ≥ 2"):
        PPOConfig(prompts="p.txt", model="m", reward="pm:x", out="o", algo="rloo", rloo_k=1)
