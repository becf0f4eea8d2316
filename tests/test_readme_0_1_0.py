"""Every `cai …` command in the 0.1.0 README still parses with today's CLI.

The commands are copied literally from README.md as released in 0.1.0 (commit f58484b), so this test
does not depend on git. Each one goes through the real Typer/click command tree with
`make_context(..., resilient_parsing=False)`, without running it: a renamed sub-command, a dropped flag
or short alias, or a positional argument that became an option fails here with click's own message.
`PROSE_FLAGS` does the same for the flags the 0.1.0 README names in running text, each put on the command
it belongs to. The commands that only need files (constitution list/show/validate/import, export) are
also run for real, in a temporary folder.
"""

from __future__ import annotations

import json
import shlex
import shutil

import pytest
import typer
import typer.main
from conftest import ASSETS
from typer.testing import CliRunner

from cai_cli import app

REPO = ASSETS.parent.parent

# Typer >= 0.2x ships its own copy of click (`typer._click`); older Typer uses click itself. Take the
# usage-error class from Typer's public BadParameter so the test works with either.
UsageError = next(k for k in typer.BadParameter.__mro__ if k.__name__ == "UsageError")

# Copied from the 0.1.0 README (`git show f58484b:README.md`), in order, continuation lines joined and
# trailing comments dropped. The last one is the inline command of the "Labeler quality" paragraph.
README_0_1_0 = [
    "cai constitution list",
    "cai constitution show harmless",
    "cai constitution validate my_rules.yaml harmless",
    "cai constitution import CritiqueRevisionInstructions.json --format anthropic"
    " --feedback ConstitutionalPrinciples.json --name anthropic-cai -o anthropic.yaml",
    "cai constitution import llm_swarm_constitution.json --format hf -o hf.yaml",
    "cai generate sl-cai --constitution harmless --prompts data/red_team_prompts.jsonl"
    " --rounds 4 --temperature 1.0 --out runs/slcai",
    "cai export runs/slcai",
    "cai generate pairs --prompts data/helpful_prompts.jsonl --model runs/sft --n 2 --out runs/pairs",
    "cai label preference runs/pairs --constitution harmless --labeler-model smollm2-135m --out runs/prefs",
    "cai label binary runs/pairs --constitution harmless --out runs/binary",
    "cai label score runs/pairs --out runs/scores",
    "cai label eval --gold data/gold/harmless_gold.jsonl --labeler-model smollm2-135m"
    " --out runs/eval.jsonl --plot runs/calibration.png",
    "cai train sft --data runs/slcai/exports/sft.jsonl:0.7 --data helpful_sft.jsonl:0.3 --model smollm2-135m --out runs/sft",
    "cai train pm --data runs/prefs/exports/prefs.jsonl --model runs/sft --out runs/pm",
    "cai train dpo --data runs/prefs/exports/prefs.jsonl --model runs/sft --out runs/dpo --beta 0.1",
    "cai train kto --data runs/binary/exports/kto.jsonl --model runs/sft --out runs/kto --balance",
    "cai train ppo --prompts data/red_team_prompts.jsonl --model runs/sft --reward pm:runs/pm --out runs/ppo",
    "cai train ppo --prompts data/helpful_prompts.jsonl --model runs/sft --reward ai:smollm2-135m --out runs/rlaif",
    "cai train ppo --prompts prompts.jsonl --model runs/sft --reward py:my_rewards:brevity --algo rloo --rloo-k 4 --out runs/rloo",
    "cai generate sl-cai -c harmless -p data/red_team_prompts.jsonl --engine openai"
    " --model Qwen/Qwen2.5-7B-Instruct --out runs/qwen",
    "cai label preference runs/pairs --out runs/prefs-srv --engine openai"
    " --labeler-model Qwen/Qwen2.5-7B-Instruct --tokenizer Qwen/Qwen2.5-7B-Instruct",
    "cai label eval --gold data/gold/harmless_gold.jsonl --labeler-model smollm2-135m",
]

# Flags the 0.1.0 README names in running text, each on the command it documents (values as written
# there where it gives one). "All trainers share one set of options": every trainer gets them, except
# the four that `cai train ppo` never had in 0.1.0 (--grad-accum, --max-length, --on-long, --eval-fraction).
_SHARED_PPO = (
    " --batch-size 4 --lr 1e-5 --lr-schedule cosine --warmup-ratio 0.1 --lora-r 8 --gradient-checkpointing --bf16"
    " --save-every 10 --log-with tensorboard --config cfg.yaml --trust-remote-code"
)
_SHARED_TRAIN = _SHARED_PPO + " --grad-accum 2 --max-length 512 --on-long skip --eval-fraction 0.1"
PROSE_FLAGS = [
    "cai export runs/slcai --all-rounds",
    "cai generate sl-cai -c harmless -p data/red_team_prompts.jsonl --out runs/s --revision-only --skip-bad-lines --overwrite",
    "cai generate sl-cai -c harmless -p p.jsonl --out runs/s --engine transformers --trust-remote-code",
    "cai generate sl-cai -c harmless -p p.jsonl --out runs/s --engine vllm"
    " --engine-opt gpu_memory_utilization=0.8 --engine-opt tensor_parallel_size=2",
    "cai generate sl-cai -c harmless -p p.jsonl --out runs/s --engine openai --base-url http://localhost:8000/v1"
    " --engine-opt concurrency=64 --engine-opt timeout=120 --engine-opt api_key_env=MY_SERVER_KEY",
    "cai generate pairs -p p.jsonl --out runs/pairs --skip-bad-lines --overwrite",
    "cai label preference runs/pairs --out runs/prefs --ensemble 3 --cot --cot-clamp 0.4,0.6 --min-margin 0.1 --overwrite",
    "cai train sft --data runs/slcai/exports/sft.jsonl --model smollm2-135m --out runs/sft --packing" + _SHARED_TRAIN,
    "cai train pm --data prefs.jsonl --model runs/sft --out runs/pm" + _SHARED_TRAIN,
    "cai train dpo --data prefs.jsonl --model runs/sft --out runs/dpo --ref-mode precompute" + _SHARED_TRAIN,
    "cai train dpo --data prefs.jsonl --model runs/sft --out runs/dpo --ref-mode live --ref-model M",
    "cai train kto --data kto.jsonl --model runs/sft --out runs/kto --balance" + _SHARED_TRAIN,
    "cai train ppo --prompts p.jsonl --model runs/sft --reward pm:runs/pm --out runs/ppo"
    " --separate-value-model --target-kl 6.0 --missing-eos-penalty 1.0" + _SHARED_PPO,
]


def _parse(line: str):
    """Resolve the sub-command chain and parse the leaf's arguments (a click Context); raises UsageError."""
    argv = shlex.split(line)
    assert argv[0] == "cai"
    cmd = typer.main.get_command(app)
    name, args, ctx = "cai", argv[1:], None
    while True:
        ctx = cmd.make_context(name, args, parent=ctx, resilient_parsing=False)
        if not hasattr(cmd, "resolve_command"):  # a leaf command, not a group
            return ctx
        protected = getattr(ctx, "_protected_args", None)
        if protected is None:  # click < 8.2
            protected = ctx.protected_args
        name, sub, args = cmd.resolve_command(ctx, [*protected, *ctx.args])
        assert sub is not None
        cmd = sub


def _check(line: str) -> None:
    try:
        ctx = _parse(line)
    except UsageError as e:
        pytest.fail(f"0.1.0 command no longer accepted: {line}\n  {type(e).__name__}: {e.format_message()}")
    assert not ctx.args, f"{line}: arguments left unparsed: {ctx.args}"


@pytest.mark.parametrize("line", README_0_1_0)
def test_0_1_0_readme_command_parses(line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # parsing must not need (or touch) the files the command names
    _check(line)


@pytest.mark.parametrize("line", PROSE_FLAGS)
def test_0_1_0_readme_prose_flag_parses(line, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _check(line)


def test_list_of_commands_matches_the_0_1_0_readme():
    # Guard against the list being edited down: 22 commands in the 0.1.0 README, each sub-command covered.
    assert len(README_0_1_0) == 22
    leaves = {" ".join(_parse(line).command_path.split()[1:]) for line in README_0_1_0}
    assert leaves == {
        "constitution list", "constitution show", "constitution validate", "constitution import",
        "generate sl-cai", "generate pairs", "export",
        "label preference", "label binary", "label score", "label eval",
        "train sft", "train pm", "train dpo", "train kto", "train ppo",
    }


# ---- the commands that only need files, run for real ------------------------------------------------


def _run(line: str):
    result = CliRunner().invoke(app, shlex.split(line)[1:])
    assert result.exit_code == 0, f"{line}\nexit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result.output


def test_constitution_commands_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = _run(README_0_1_0[0])  # list
    assert "harmless" in out and "helpful_honest" in out
    assert "harmless" in _run(README_0_1_0[1])  # show harmless

    shutil.copy(REPO / "constitution" / "library" / "harmless.yaml", tmp_path / "my_rules.yaml")
    assert "OK" in _run(README_0_1_0[2])  # validate my_rules.yaml harmless

    fixtures = ASSETS / "constitutions"
    shutil.copy(fixtures / "anthropic_critiques_sample.json", tmp_path / "CritiqueRevisionInstructions.json")
    shutil.copy(fixtures / "anthropic_feedback_sample.json", tmp_path / "ConstitutionalPrinciples.json")
    shutil.copy(fixtures / "hf_llm_swarm_sample.json", tmp_path / "llm_swarm_constitution.json")
    _run(README_0_1_0[3])  # import --format anthropic --feedback … --name anthropic-cai -o anthropic.yaml
    _run(README_0_1_0[4])  # import --format hf -o hf.yaml
    for written in ("anthropic.yaml", "hf.yaml"):
        assert (tmp_path / written).stat().st_size > 0
        assert "OK" in _run(f"cai constitution validate {written}")


def test_export_runs_on_a_small_sl_cai_run(tmp_path, monkeypatch):
    from test_critique_revision import FakeEngine, make_constitution, make_prompts

    from engines.base import GenerationParams
    from generators.critique_revision import run_sl_cai

    monkeypatch.chdir(tmp_path)
    run_sl_cai(make_constitution(), make_prompts(3), FakeEngine(), tmp_path / "runs" / "slcai", rounds=1,
               params=GenerationParams(max_new_tokens=8), progress=False)
    shutil.rmtree(tmp_path / "runs" / "slcai" / "exports", ignore_errors=True)
    _run(README_0_1_0[6])  # cai export runs/slcai
    sft = (tmp_path / "runs" / "slcai" / "exports" / "sft.jsonl").read_text().splitlines()
    assert len(sft) == 3 and "messages" in json.loads(sft[0])
    _run(PROSE_FLAGS[0])  # --all-rounds
