"""What a trainer says about a bad model or data argument: one `error: …` line naming the model, folder or
file and the reason, exit code 2, no traceback (`cai train sft|pm|dpo|kto|ppo`); and how `resolve_model`
tells a missing folder from a Hub id."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trainers.cli import app

CHAT = [{"role": "user", "content": "Hi"}]
ROWS = {
    "sft": {"messages": CHAT + [{"role": "assistant", "content": "Hello"}]},
    "pm": {"prompt": CHAT, "chosen": "Hello", "rejected": "Go away"},
    "dpo": {"prompt": CHAT, "chosen": "Hello", "rejected": "Go away"},
    "kto": {"prompt": CHAT, "completion": "Hello", "label": True},
    "ppo": {"prompt": "Hi"},
}


def run(tmp_path: Path, command: str, model: str, data: Path | None = None):
    """`cai train COMMAND` with valid data (or ``data``) and ``model``; returns the CliRunner result."""
    if data is None:
        data = tmp_path / f"{command}.jsonl"
        data.write_text("".join(json.dumps({"id": f"r{i}", **ROWS[command]}) + "\n" for i in range(4)), encoding="utf-8")
    args = [command, "--model", model, "--out", str(tmp_path / "out"), "--quiet"]
    if command == "ppo":
        args += ["--prompts", str(data), "--reward", "py:no_module:f", "--iterations", "1"]
    else:
        args += ["--data", str(data), "--max-steps", "1", "--eval-fraction", "0"]
    return CliRunner().invoke(app, args)


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("command", ["sft", "pm", "dpo", "kto", "ppo"])
def test_missing_model_folder_is_one_line(tmp_path, command):
    line = one_error_line(run(tmp_path, command, str(tmp_path / "runs" / "x")))
    assert f"folder {tmp_path / 'runs' / 'x'} does not exist" in line


def pickle_only_folder(tmp_path: Path, tiny_model_dir: Path) -> Path:
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded: refused before any unpickling")
    return folder


def test_pickle_only_folder_is_refused(tmp_path, tiny_model_dir):
    folder = pickle_only_folder(tmp_path, tiny_model_dir)
    line = one_error_line(run(tmp_path, "sft", str(folder)))
    assert f"{folder} has no safetensors weights (only pytorch_model.bin); pickle weights are refused — convert with" in line


def test_uncached_hub_id_while_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = one_error_line(run(tmp_path, "dpo", "no-such-org-xyz/no-such-model"))
    assert ("model id 'no-such-org-xyz/no-such-model' is not in the local Hugging Face cache and downloads are off "
            "(HF_HUB_OFFLINE)") in line


def test_pm_reward_needs_safetensors(tmp_path, tiny_model_dir):
    from trainers.rewards import RewardSpecError, load_reward

    folder = pickle_only_folder(tmp_path, tiny_model_dir)
    with pytest.raises(RewardSpecError, match=r"--reward pm:.*has no safetensors weights \(only pytorch_model.bin\)"):
        load_reward(f"pm:{folder}")
    with pytest.raises(RewardSpecError, match="does not exist"):
        load_reward(f"pm:{tmp_path / 'nope'}")


def test_non_utf8_data_names_file_and_line(tmp_path, tiny_model_dir):
    data = tmp_path / "train.jsonl"
    good = json.dumps({"id": "r0", **ROWS["sft"]}).encode()
    data.write_bytes(good + b"\n" + good[:20] + b"\xff\xfe" + good[20:] + b"\n")
    line = one_error_line(run(tmp_path, "sft", str(tiny_model_dir), data=data))
    assert f"{data}:2: not UTF-8 text (byte 0xff at position 21 of the line)" in line


def test_non_utf8_config_file(tmp_path):
    from trainers.config import ConfigError, load_config
    from trainers.sft import SFTConfig

    (tmp_path / "c.yaml").write_bytes(b"lr: 1\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(SFTConfig, tmp_path / "c.yaml", data=["d"], model="m", out="o")


def test_resolve_model_tells_a_missing_folder_from_a_hub_id(tmp_path, monkeypatch):
    from engines.embedded import ModelNotFoundError, looks_like_path, resolve_model

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for spelling in ("./runs/x", "~/no-such-folder-xyz", str(tmp_path / "x"), "runs/a/b", "justaname"):
        with pytest.raises(ModelNotFoundError, match=f"folder {spelling} does not exist"):
            resolve_model(spelling)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert not looks_like_path("smollm2-135m") and not looks_like_path("org/name")
    (tmp_path / "here").mkdir()
    assert resolve_model("here") == "here"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert resolve_model("gpt2") == "gpt2"  # a legacy one-word Hub id, when downloads are allowed
    with pytest.raises(ModelNotFoundError):
        resolve_model("./runs/x")


def test_generate_with_a_missing_folder_says_so(tmp_path, monkeypatch):
    from cai_cli import app as cai

    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.txt").write_text("Hi\n", encoding="utf-8")
    result = CliRunner().invoke(cai, ["generate", "pairs", "--prompts", "p.txt", "--model", "./missing-model", "--out", "g"])
    assert result.exit_code != 0
    assert "folder ./missing-model does not exist" in result.output and "Repo id" not in result.output
