"""`cai generate sl-cai`, `cai generate pairs` and `cai export`.

Argument parsing and error reporting only; the work is done by ``run_sl_cai``, ``run_pairs`` and
``export_run``. Heavy imports (torch, transformers, datasets) happen inside the commands so
``cai --help`` stays instant. Expected failures (bad constitution, bad prompt file, a run directory
started with other settings, a model that does not load) exit with code 2 and one clear message.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import typer

from engines import ENGINE_OPT_HELP, EngineCapabilityError

generate_app = typer.Typer(
    help="Generate datasets: SL-CAI critique/revision records, or N sampled responses per prompt for AI labeling.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

DEFAULT_MODEL = "smollm2-135m"


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


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


def _load_engine(engine: str, model: str, *, batch_size: int, base_url: str | None, device: str | None, dtype: str | None,
                 trust_remote_code: bool, engine_opt: list[str] | None = None, on_long: str | None = None):
    """Build the engine, passing each option only to back ends that take it."""
    from engines import ENGINES, engine_options, load_engine

    if engine not in ENGINES:
        raise _fail(f"unknown --engine {engine!r}; choose one of: {', '.join(sorted(ENGINES))}")
    flags = {"batch_size": batch_size, "base_url": base_url, "device": device, "dtype": dtype, "trust_remote_code": trust_remote_code or None, "on_long": on_long}
    try:  # engine_options imports the back end, so a missing optional dependency shows here
        options = engine_options(engine, flags, engine_opt or ())
    except ImportError as e:
        raise _fail(f"the {engine!r} engine is not available: {e}") from None
    except ValueError as e:
        raise _fail(str(e)) from None
    try:
        return load_engine(engine, model, **options)
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise _fail(f"cannot load model {model!r} with the {engine!r} engine: {e}") from None


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


@generate_app.command("sl-cai")
def sl_cai_command(
    constitution: str = typer.Option(..., "--constitution", "-c", help="Constitution YAML/JSON file, or the name of a shipped one (e.g. harmless)."),
    prompts: Path = typer.Option(..., "--prompts", "-p", help="Prompt file: .jsonl (prompt / messages / hh-rlhf chosen), .txt (one per line) or an hh-rlhf transcript .txt."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (created; rerun the same command to resume)."),
    rounds: int = typer.Option(1, help="Critique→revision rounds per prompt (the paper used 4)."),
    revision_only: bool = typer.Option(False, "--revision-only", help="Skip the critique turn: ask for the revision directly."),
    few_shot: Optional[int] = typer.Option(None, "--few-shot", help="Show only the first N few-shot examples of the constitution (default all; each costs prompt tokens in every request)."),
    engine: str = typer.Option("transformers", help="Back end: transformers, openai or vllm."),
    model: str = typer.Option(DEFAULT_MODEL, help="Model: the embedded smollm2-135m, a local folder, or (for openai) the served model name."),
    base_url: Optional[str] = typer.Option(None, help="Server URL for --engine openai (e.g. http://localhost:8000/v1)."),
    engine_opt: Optional[list[str]] = typer.Option(None, "--engine-opt", help=ENGINE_OPT_HELP),
    on_long: Optional[str] = typer.Option(None, "--on-long", help="transformers/vllm: a prompt too long for the model's context with --max-new-tokens is cut to its last tokens (truncate, the default; the record says so), skipped (listed in OUT/skipped.jsonl) or an error."),
    device: Optional[str] = typer.Option(None, help="transformers device (default: cuda if available, else cpu)."),
    dtype: Optional[str] = typer.Option(None, help="Model dtype: auto, float32, bfloat16, float16."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the model folder (off by default)."),
    max_new_tokens: int = typer.Option(256, help="Token limit of every answer, critique and revision."),
    temperature: float = typer.Option(0.7, help="Sampling temperature (0 = greedy). The paper sampled at 1.0; 0.7 keeps small models coherent."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling threshold."),
    seed: int = typer.Option(0, help="Seed of the principle draws and of sampling."),
    batch_size: int = typer.Option(8, help="Requests per forward batch; a chunk of 4 × batch-size prompts is generated and saved together."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N prompts."),
    skip_bad_lines: bool = typer.Option(False, "--skip-bad-lines", help="Set malformed prompt lines aside (in --rejects) instead of stopping."),
    rejects: Optional[Path] = typer.Option(None, help="Where skipped lines go (default: <prompts>.rejects.jsonl)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over: replace this run (only files a run owns; other files stay) once the new run has written its first records."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    show_example: bool = typer.Option(False, "--show-example", help="Print one prompt with its answer, critique and revision at the end."),
) -> None:
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

    from .critique_revision import RUN_KIND, run_sl_cai, sl_cai_identity
    from .exports import ExportError, export_sl_cai
    from jobs.rundir import RunDirError

    try:
        cons = resolve_constitution(constitution)
    except ConstitutionError as e:
        raise _fail(str(e)) from None
    if not cons.critique_revision:
        raise _fail(f"constitution {cons.ref} has no critique_revision principles; SL-CAI needs at least one")
    if rounds < 1:
        raise _fail(f"--rounds must be ≥ 1, got {rounds}")
    if few_shot is not None and few_shot < 0:
        raise _fail(f"--few-shot must be ≥ 0, got {few_shot}")
    items = _read_prompts(prompts, limit, skip_bad_lines, rejects)
    params = _params(max_new_tokens, temperature, top_p, seed)

    named = SimpleNamespace(name=engine, model_id=model)  # what the identity needs, before the model loads
    _precheck_run_dir(out, RUN_KIND, sl_cai_identity(cons, named, rounds=rounds, revision_only=revision_only, seed=seed, params=params, few_shot=few_shot), overwrite)
    eng = _load_engine(engine, model, batch_size=batch_size, base_url=base_url, device=device, dtype=dtype, trust_remote_code=trust_remote_code, engine_opt=engine_opt, on_long=on_long)
    try:
        summary = run_sl_cai(cons, items, eng, out, rounds=rounds, revision_only=revision_only, seed=seed, params=params,
                             batch_size=batch_size, few_shot=few_shot, overwrite=overwrite, progress=not quiet, input_files=[prompts])
        exported = export_sl_cai(out)
    except (RunDirError, ExportError, ValueError, EngineCapabilityError, ConnectionError) as e:  # ConnectionError: the openai engine's OpenAIServerError
        raise _fail(str(e)) from None
    except KeyboardInterrupt:
        raise _fail(f"interrupted; finished chunks are saved in {out}. Rerun the same command to resume.", 130) from None

    if show_example:
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


@generate_app.command("pairs")
def pairs_command(
    prompts: Path = typer.Option(..., "--prompts", "-p", help="Prompt file (.jsonl, .txt, hh-rlhf), as for sl-cai."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (created; rerun the same command to resume)."),
    n: int = typer.Option(2, "--n", help="Responses sampled per prompt."),
    engine: str = typer.Option("transformers", help="Back end: transformers, openai or vllm."),
    model: str = typer.Option(DEFAULT_MODEL, help="Policy model: the embedded smollm2-135m, a local folder, or a served model name."),
    base_url: Optional[str] = typer.Option(None, help="Server URL for --engine openai."),
    engine_opt: Optional[list[str]] = typer.Option(None, "--engine-opt", help=ENGINE_OPT_HELP),
    on_long: Optional[str] = typer.Option(None, "--on-long", help="transformers/vllm: a prompt too long for the model's context with --max-new-tokens is cut to its last tokens (truncate, the default; the record says so), skipped (listed in OUT/skipped.jsonl) or an error."),
    device: Optional[str] = typer.Option(None, help="transformers device."),
    dtype: Optional[str] = typer.Option(None, help="Model dtype: auto, float32, bfloat16, float16."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the model folder."),
    system_prompt: Optional[str] = typer.Option(None, help="A system message put before every prompt."),
    max_new_tokens: int = typer.Option(256, help="Token limit of every response."),
    temperature: float = typer.Option(1.0, help="Sampling temperature; > 0 so the N responses differ."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling threshold."),
    seed: int = typer.Option(0, help="Sampling seed."),
    batch_size: int = typer.Option(8, help="Requests per forward batch."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N prompts."),
    skip_bad_lines: bool = typer.Option(False, "--skip-bad-lines", help="Set malformed prompt lines aside instead of stopping."),
    rejects: Optional[Path] = typer.Option(None, help="Where skipped lines go (default: <prompts>.rejects.jsonl)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over: replace this run (only files a run owns; other files stay) once the new run has written its first records."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """N sampled responses per prompt from one policy model, for AI preference labeling
    (`cai label …`). Records {id, prompt_id, messages, responses} go to OUT/records.jsonl (resumable)
    and OUT/exports/pairs.jsonl + OUT/exports/pairs/ (a datasets folder).

    \b
    Examples:
      cai generate pairs --prompts data/helpful_prompts.jsonl --n 2 --max-new-tokens 128 --out runs/pairs
      cai generate pairs -p data/red_team_prompts.jsonl --model runs/sft-model --n 4 --temperature 0.9 --out runs/pairs4
    """
    from .exports import ExportError, export_pairs
    from .pairs import RUN_KIND, run_pairs
    from .critique_revision import sampling_identity
    from jobs.rundir import RunDirError

    if n < 2:
        raise _fail(f"--n must be ≥ 2 (a pair needs two responses), got {n}")
    items = _read_prompts(prompts, limit, skip_bad_lines, rejects)
    params = _params(max_new_tokens, temperature, top_p, seed)
    identity = {"model": model, "engine": engine, "n": n, "seed": seed, "params": sampling_identity(params), "system_prompt": system_prompt}
    _precheck_run_dir(out, RUN_KIND, identity, overwrite)
    eng = _load_engine(engine, model, batch_size=batch_size, base_url=base_url, device=device, dtype=dtype, trust_remote_code=trust_remote_code, engine_opt=engine_opt, on_long=on_long)
    try:
        summary = run_pairs(items, eng, out, n=n, seed=seed, params=params, batch_size=batch_size,
                            system_prompt=system_prompt, overwrite=overwrite, progress=not quiet, input_files=[prompts])
        exported = export_pairs(out)
    except (RunDirError, ExportError, ValueError, EngineCapabilityError, ConnectionError) as e:  # ConnectionError: the openai engine's OpenAIServerError
        raise _fail(str(e)) from None
    except KeyboardInterrupt:
        raise _fail(f"interrupted; finished chunks are saved in {out}. Rerun the same command to resume.", 130) from None
    _print_summary(summary, exported)


def export_command(
    run_dir: Path = typer.Argument(..., help="The --out folder of a `cai generate` run."),
    all_rounds: bool = typer.Option(False, "--all-rounds", help="SL-CAI: one SFT row per round's revision (as the paper trained), not only the final one."),
) -> None:
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

    try:
        exported = export_run(run_dir, all_rounds=all_rounds)
    except ExportError as e:
        raise _fail(str(e)) from None
    typer.echo(f"{exported['records']} records in {run_dir}")
    for name, info in exported.items():
        if isinstance(info, dict):
            folder = f" and {info['dataset']}" if info["dataset"] else ""
            typer.echo(f"{name}: {info['rows']} rows → {info['jsonl']}{folder}")


def _iter_records(out: Path):
    with open(Path(out) / "records.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(typer.main.get_command(generate_app)())
