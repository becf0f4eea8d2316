"""`cai run PIPELINE.yaml` and `cai eval winrate`: argument parsing and error reporting only (options
generated from ``pipeline/config.py``); the work is in ``pipeline/run.py`` and ``pipeline/winrate.py``.
Expected failures exit with code 2 and one ``error:`` line."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from jobs.config import ConfigError, config_command, fail

from .config import RunConfig, WinrateConfig

eval_app = typer.Typer(help="Evaluate policies: win rate of one model over another, judged by the AI labeler and/or a preference model.",
                       no_args_is_help=True, rich_markup_mode=None)


def winrate(c: WinrateConfig) -> dict:
    """Win rate of policy B over policy A: both answer the same held-out prompts; the AI labeler compares
    each pair in both orders under the constitution's feedback principles (and, with --judge-pm, a
    preference model scores both answers). Writes OUT/summary.json (win / tie / loss of B with a 95 %
    Wilson interval, per principle, mean answer length in tokens and characters) and
    OUT/comparisons.jsonl. A tie is |p − 0.5| < --tie-margin (0.05), p = P(B better than A).
    Resumable: rerun the same command after an interruption.

    \b
    Examples:
      cai eval winrate --model-a runs/loop/sft --model-b runs/loop/ppo -p data/helpful_prompts.jsonl \\
          --judge smollm2-135m --limit 16 --out runs/eval-ppo
      cai eval winrate --model-a runs/loop/sft --model-b runs/loop/dpo -p data/red_team_prompts.jsonl \\
          --judge-pm runs/loop/pm --constitution harmless --ensemble 0 --out runs/eval-dpo
      cai eval winrate --model-a Qwen/Qwen2.5-7B-Instruct --model-b my-ppo --engine openai \\
          --base-url http://localhost:8000/v1 --judge Qwen/Qwen2.5-72B-Instruct --judge-engine vllm -p prompts.jsonl --out runs/eval
    """
    from constitution.loader import ConstitutionError
    from engines.base import EngineCapabilityError
    from generators.inputs import PromptFileError
    from jobs.rundir import RunDirError
    from labelers.inputs import InputError
    from trainers.rewards import RewardSpecError

    from .winrate import format_summary, run_winrate

    try:
        summary = run_winrate(c)
    except (ConfigError, ConstitutionError, RunDirError, PromptFileError, InputError, RewardSpecError, EngineCapabilityError,
            ConnectionError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail(f"interrupted; finished batches are saved in {c.out}. Rerun the same command to resume.", 130) from None
    typer.echo(format_summary(summary))
    typer.echo(f"summary: {Path(c.out) / 'summary.json'}")
    return summary


def run_pipeline(c: RunConfig) -> None:
    """Run a whole loop from one pipeline file: each stage names a command (sl-cai, pairs, sft,
    label-preference|label-binary|label-score, pm, dpo, kto, ppo|rloo, eval-winrate, label-eval) and that
    command's own config, with {from: STAGE} instead of paths to earlier stages' outputs. Stages run in
    this process, each in ROOT/<stage>/. Rerunning skips finished stages and resumes an interrupted one;
    a changed stage config, constitution or input file reruns that stage and every stage downstream of
    it, nothing else (fingerprints in ROOT/pipeline.json). The whole file is validated before anything
    runs.

    \b
    Examples:
      cai run pipelines/tiny-cpu.yaml --out runs/loop
      cai run pipelines/tiny-cpu.yaml --out runs/loop --dry-run       # the plan: run / skip / rerun, and why
      cai run pipelines/tiny-cpu.yaml --out runs/loop --from pm       # redo pm and what follows
      cai run pipelines/tiny-cpu.yaml --out runs/loop --until label   # stop after the label stage
    """
    from .run import StageFailed, execute, format_plan, lock
    from .spec import PipelineError, load_pipeline
    from .state import load_state, plan

    root = Path(c.out)
    try:
        stages = load_pipeline(c.pipeline, root)
        names = [s.name for s in stages]
        for flag, value in (("--from", c.from_stage), ("--until", c.until)):
            if value is not None and value not in names:
                raise PipelineError(f"{flag} {value}: no such stage in {c.pipeline}; stages: {', '.join(names)}")
        if c.from_stage and c.until and names.index(c.until) < names.index(c.from_stage):
            raise PipelineError(f"--until {c.until} comes before --from {c.from_stage}")
        if root.exists() and not root.is_dir():
            raise PipelineError(f"{root} is a file; --out must be a folder")
        state = load_state(root) if root.exists() else {"stages": {}}
        steps = plan(stages, root, state, from_stage=c.from_stage, until=c.until)
    except (PipelineError, ValueError) as exc:
        raise fail(str(exc)) from None
    typer.echo(format_plan(steps, c.pipeline, root))
    if c.dry_run:
        return
    try:
        held = lock(root)
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    try:
        timings = execute(steps, root, quiet=c.quiet)
    except StageFailed as exc:
        raise fail(f"{exc}; fix it and rerun the same `cai run` to resume from this stage", exc.code) from None
    except KeyboardInterrupt:
        raise fail("interrupted; rerun the same `cai run` to resume", 130) from None
    finally:
        held.close()
    total = sum(timings.values())
    typer.echo(f"pipeline done: {len(timings)} stage(s) ran in {total:.1f} s, {len(steps) - len(timings)} not run; state: "
               f"{root / 'pipeline.json'}")
    for step in steps:
        summary = root / step.stage.name / "summary.json"
        if step.stage.command.name == "eval-winrate" and summary.exists() and step.action != "hold":
            s = json.loads(summary.read_text(encoding="utf-8"))
            lab = s["judges"]["labeler"]
            typer.echo(f"{step.stage.name}: B wins {100 * lab['win']:.0f}% [{100 * lab['win_ci95'][0]:.0f}–"
                       f"{100 * lab['win_ci95'][1]:.0f}%] (n={s['n']}), ties {100 * lab['tie']:.0f}%, loses {100 * lab['loss']:.0f}%")


winrate_command = eval_app.command("winrate")(config_command(WinrateConfig, winrate))
run_command = config_command(RunConfig, run_pipeline)  # registered as `cai run` by cai_cli.py
