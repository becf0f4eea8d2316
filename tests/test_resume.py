"""A real `cai generate sl-cai` process killed with SIGKILL mid-run resumes to exactly one record per
prompt; a rerun with another model or constitution is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai_cli import app

REPO = Path(__file__).resolve().parent.parent
N_PROMPTS = 40

CONSTITUTION = """\
name: resume-test
version: '1'
system_prompt: Be kind.
critique_revision:
  - {id: a, critique: 'Is the reply harmful?', revision: 'Rewrite it to be harmless.'}
  - {id: b, critique: 'Is the reply rude?', revision: 'Rewrite it to be polite.'}
few_shot:
  - {prompt: hi, response: hello, principle: a, critique: It is fine., revision: Hello there.}
"""


def cai_command() -> list[str]:
    script = Path(sys.executable).parent / "cai"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cai_cli"]


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"r{i:02d}", "prompt": f"Tell me about topic {i}."}) + "\n" for i in range(N_PROMPTS)))
    constitution = tmp_path / "c.yaml"
    constitution.write_text(CONSTITUTION)
    out = tmp_path / "run"
    records = out / "records.jsonl"
    args = ["generate", "sl-cai", "-c", str(constitution), "-p", str(prompts), "--model", str(tiny_model_dir),
            "--max-new-tokens", "12", "--batch-size", "4", "--out", str(out), "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    # chunks of 16 prompts: kill as soon as the first chunk is on disk and before the last
    proc = subprocess.Popen(cai_command() + args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    try:
        while count_lines(records) == 0 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    killed_at = count_lines(records)
    assert proc.returncode == -signal.SIGKILL, f"the run ended on its own before it could be killed: {stderr[-2000:]!r}"
    assert 0 < killed_at < N_PROMPTS

    done = subprocess.run(cai_command() + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{N_PROMPTS - killed_at} prompts generated, {killed_at} already done" in done.stdout
    ids = [json.loads(line)["id"] for line in records.read_text().splitlines()]
    assert sorted(ids) == [f"r{i:02d}" for i in range(N_PROMPTS)]  # every prompt exactly once

    # another model, or an edited constitution, is refused (exit 2, a message, no traceback); in-process,
    # since the refusal happens before any model loads
    other_model = [a if a != str(tiny_model_dir) else str(tmp_path / "other-model") for a in args]
    refused = CliRunner().invoke(app, other_model)
    assert refused.exit_code == 2 and "model: was" in refused.output and "Traceback" not in refused.output
    constitution.write_text(CONSTITUTION.replace("Be kind.", "Be very kind."))
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "constitution_hash" in refused.output and "Traceback" not in refused.output
    assert len(records.read_text().splitlines()) == N_PROMPTS  # nothing written by a refused run
