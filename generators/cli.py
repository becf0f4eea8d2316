"""`cai generate sl-cai`, `cai generate pairs` and `cai export`.

Argument parsing and error reporting only: the options are generated from the configs in
``generators/config.py`` (``--config file.yaml`` on every command; the resolved config is saved as
OUT/config.yaml); the work is done by ``run_sl_cai``, ``run_pairs`` and ``export_run``. Heavy
imports (torch, transformers, datasets) happen inside the commands so ``cai --help`` stays instant. Expected failures (bad constitution, bad prompt file, a run directory
started with other settings, a model that does not load) exit with code 2 and one clear message.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import typer

from engines import EngineCapabilityError
from jobs.config import ConfigError, config_command, config_to_dict, fail
from jobs.options import engine_spec_from, load_engine_from

from .config import DEFAULT_MODEL, ExportConfig, PairsConfig, SLCAIConfig  # noqa: F401  (DEFAULT_MODEL: kept importable)

generate_app = typer.Typer(
    help="Generate datasets: SL-CAI critique/revision records, or N sampled responses per prompt for AI labeling.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

_fail = fail  # one `error: …` line, exit 2 (jobs/config.py)


# ---- shared steps ----------------------------------------------------------------------------------


def _read_prompts(path: Path, limit: int | None, skip_bad_lines: bool, rejects: Path | None):
    from .inputs import PromptFileError, read_prompts

    try:
        prompts = read_prompts(path, skip_bad_lines=skip_bad_lines, rejects_path=rejects)
    except PromptFileError as e:
        raise _fail(str(e)) from None
    if limit is not None:
        if limit < 1:
            raise _fail(f"--limit must be ≥ 1, got {limit}")
        prompts = prompts[:limit]
    return prompts


def _precheck_run_dir(out: Path, kind: str, identity: dict, overwrite: bool) -> None:
    """Refuse a foreign folder, a mismatching or damaged run directory, or a run in progress BEFORE
    loading a model (which can take a minute); creates, writes and locks nothing."""
    from jobs.rundir import RunDir, RunDirError

    try:
        RunDir.check(out, identity, kind=kind, overwrite=overwrite)
    except RunDirError as e:
        raise _fail(str(e)) from None


def _load_engine(config):
    """The engine the config names; a failure is one `error:` line (tests replace this hook with a fake)."""
    try:
        return load_engine_from(config)
    except ConfigError as e:
        raise _fail(str(e)) from None


def _engine_and_executor(config):
    """(engine, executor, engine spec) for a run. Local: the engine loaded here, no executor, no spec.
    ``--executor ray``: each worker loads its own engine from the spec; this process loads none (it may
    have no GPU) and the engine stand-in only names back end and model for the run identity."""
    if config.executor != "ray":
        return _load_engine(config), None, None
    from jobs.ray_executor import RayMissingError, make_executor

    try:
        spec = engine_spec_from(config)
        executor = make_executor(config)
    except (ConfigError, RayMissingError) as e:
        raise _fail(str(e)) from None
    return SimpleNamespace(name=config.engine, model_id=config.model), executor, spec


def _executor_errors() -> tuple[type[BaseException], ...]:
    from jobs.ray_executor import RayExecutorError

    return (RayExecutorError,)


def _params(max_new_tokens: int, temperature: float, top_p: float, seed: int):
    from engines.base import GenerationParams

    if max_new_tokens < 1:
        raise _fail(f"--max-new-tokens must be ≥ 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise _fail(f"--temperature must be ≥ 0 and --top-p in (0, 1], got {temperature} and {top_p}")
    return GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)


def _show(label: str, text: str | None) -> None:
    if text is None:
        return
    typer.echo(f"--- {label} ---")
    typer.echo(textwrap.indent(text.strip() or "(empty)", "  "))


def _print_summary(summary: dict, exported: dict) -> None:
    skipped = f", {summary['skipped']} skipped as too long (listed in skipped.jsonl)" if summary.get("skipped") else ""
    typer.echo(
        f"{summary['generated']} prompts generated, {summary['already_done']} already done{skipped} "
        f"({summary['completion_tokens']} tokens in {summary['seconds']:.1f} s, {summary['tokens_per_s']:.1f} tokens/s)"
    )
    typer.echo(f"records: {summary['records']}")
    for name, info in exported.items():
        if isinstance(info, dict) and "jsonl" in info:
            folder = f" and {info['dataset']}" if info["dataset"] else ""
            typer.echo(f"export {name}: {info['rows']} rows → {info['jsonl']}{folder}")


# ---- commands --------------------------------------------------------------------------------------


def sl_cai(c: SLCAIConfig) -> None:
    """Critique-and-revision data (SL-CAI): for each prompt an initial answer, then ROUNDS × (critique
    against a randomly drawn principle → revision), in one conversation with the constitution's
    few-shot examples in front. Records go to OUT/records.jsonl (resumable: rerun the same command
    after an interruption); exports are rebuilt in OUT/exports/ (sft, prefs) at the end.

    \b
    Examples:
      cai generate sl-cai --constitution constitution/library/harmless.yaml \\
          --prompts data/red_team_prompts.jsonl --limit 8 --max-new-tokens 64 --out runs/demo --show-example
      cai generate sl-cai -c harmless -p data/red_team_prompts.jsonl --rounds 4 --temperature 1.0 --out runs/harmless
      cai generate sl-cai -c my_constitution.yaml -p prompts.txt --engine openai \\
          --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct --out runs/qwen
    """
    from constitution.loader import ConstitutionError, resolve_constitution
    from jobs.rundir import RunDirError

    from .critique_revision import RUN_KIND, run_sl_cai, sl_cai_identity
    from .exports import ExportError, export_sl_cai

    try:
        cons = resolve_constitution(c.constitution)
    except ConstitutionError as e:
        raise _fail(str(e)) from None
    if not cons.critique_revision:
        raise _fail(f"constitution {cons.ref} has no critique_revision principles; SL-CAI needs at least one")
    if c.rounds < 1:
        raise _fail(f"--rounds must be ≥ 1, got {c.rounds}")
    if c.few_shot is not None and c.few_shot < 0:
        raise _fail(f"--few-shot must be ≥ 0, got {c.few_shot}")
    items = _read_prompts(c.prompts, c.limit, c.skip_bad_lines, c.rejects)
    params = _params(c.max_new_tokens, c.temperature, c.top_p, c.seed)
    out = c.out

    named = SimpleNamespace(name=c.engine, model_id=c.model)  # what the identity needs, before the model loads
    _precheck_run_dir(out, RUN_KIND, sl_cai_identity(cons, named, rounds=c.rounds, revision_only=c.revision_only, seed=c.seed, params=params, few_shot=c.few_shot), c.overwrite)
    eng, executor, spec = _engine_and_executor(c)
    try:
        summary = run_sl_cai(cons, items, eng, out, rounds=c.rounds, revision_only=c.revision_only, seed=c.seed, params=params,
                             batch_size=c.batch_size, few_shot=c.few_shot, overwrite=c.overwrite, progress=not c.quiet,
                             input_files=[c.prompts], config=config_to_dict(c, resolved=True), executor=executor, engine_spec=spec)
        exported = export_sl_cai(out)
    except (RunDirError, ExportError, ValueError, EngineCapabilityError, ConnectionError, *_executor_errors()) as e:  # ConnectionError: the openai engine's OpenAIServerError
        raise _fail(str(e)) from None
    except KeyboardInterrupt:
        raise _fail(f"interrupted; finished chunks are saved in {out}. Rerun the same command to resume.", 130) from None

    if c.show_example:
        first = next((r for r in _iter_records(out) if r["id"] == items[0].id), None)
        if first:
            typer.echo("")
            _show("prompt", first["prompt"][-1]["content"])
            _show("initial answer", first["initial_response"])
            for rd in first["rounds"]:
                _show(f"critique request (round {rd['round']}, principle {rd['principle_id']})", rd["critique_request"])
                _show("critique", rd["critique"])
                _show("revision request", rd["revision_request"])
                _show("revision", rd["revision"])
            typer.echo("")
    _print_summary(summary, exported)


def pairs(c: PairsConfig) -> None:
    """N sampled responses per prompt from one policy model, for AI preference labeling
    (`cai label …`). Records {id, prompt_id, messages, responses} go to OUT/records.jsonl (resumable)
    and OUT/exports/pairs.jsonl + OUT/exports/pairs/ (a datasets folder).

    \b
    Examples:
      cai generate pairs --prompts data/helpful_prompts.jsonl --n 2 --max-new-tokens 128 --out runs/pairs
      cai generate pairs -p data/red_team_prompts.jsonl --model runs/sft-model --n 4 --temperature 0.9 --out runs/pairs4
    """
    from jobs.rundir import RunDirError

    from .critique_revision import sampling_identity
    from .exports import ExportError, export_pairs
    from .pairs import RUN_KIND, run_pairs

    if c.n < 2:
        raise _fail(f"--n must be ≥ 2 (a pair needs two responses), got {c.n}")
    items = _read_prompts(c.prompts, c.limit, c.skip_bad_lines, c.rejects)
    params = _params(c.max_new_tokens, c.temperature, c.top_p, c.seed)
    out = c.out
    identity = {"model": c.model, "engine": c.engine, "n": c.n, "seed": c.seed, "params": sampling_identity(params), "system_prompt": c.system_prompt}
    _precheck_run_dir(out, RUN_KIND, identity, c.overwrite)
    eng, executor, spec = _engine_and_executor(c)
    try:
        summary = run_pairs(items, eng, out, n=c.n, seed=c.seed, params=params, batch_size=c.batch_size, system_prompt=c.system_prompt,
                            overwrite=c.overwrite, progress=not c.quiet, input_files=[c.prompts], config=config_to_dict(c, resolved=True),
                            executor=executor, engine_spec=spec)
        exported = export_pairs(out)
    except (RunDirError, ExportError, ValueError, EngineCapabilityError, ConnectionError, *_executor_errors()) as e:  # ConnectionError: the openai engine's OpenAIServerError
        raise _fail(str(e)) from None
    except KeyboardInterrupt:
        raise _fail(f"interrupted; finished chunks are saved in {out}. Rerun the same command to resume.", 130) from None
    _print_summary(summary, exported)


def export(c: ExportConfig) -> None:
    """Rebuild the exported datasets of RUN_DIR from its records.jsonl (safe to run any time, also
    while or after a run; the output is replaced, never appended to). SL-CAI runs give
    exports/sft(.jsonl) and exports/prefs(.jsonl); pairs runs give exports/pairs(.jsonl). The folders
    load with datasets.load_from_disk.

    \b
    Examples:
      cai export runs/demo
      cai export runs/harmless --all-rounds
      python -c "import datasets; print(datasets.load_from_disk('runs/demo/exports/sft'))"
    """
    from .exports import ExportError, export_run

    run_dir = c.run_dir
    try:
        exported = export_run(run_dir, all_rounds=c.all_rounds)
    except ExportError as e:
        raise _fail(str(e)) from None
    typer.echo(f"{exported['records']} records in {run_dir}")
    for name, info in exported.items():
        if isinstance(info, dict):
            folder = f" and {info['dataset']}" if info["dataset"] else ""
            typer.echo(f"{name}: {info['rows']} rows → {info['jsonl']}{folder}")


sl_cai_command = generate_app.command("sl-cai")(config_command(SLCAIConfig, sl_cai))
pairs_command = generate_app.command("pairs")(config_command(PairsConfig, pairs))
export_command = config_command(ExportConfig, export)  # registered as `cai export` by cai_cli.py


def _iter_records(out: Path):
    with open(Path(out) / "records.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(typer.main.get_command(generate_app)())
