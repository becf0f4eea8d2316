"""`cai label preference|binary|score|eval`: AI feedback labels and labeler evaluation.

Argument parsing and error reporting only; the work is done by ``label_preferences``,
``label_binary``, ``label_scores`` and ``evaluate_labeler``. Heavy imports happen inside the
commands so ``cai --help`` stays instant. Expected failures exit with code 2 and one clear message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from engines import ENGINE_OPT_HELP

app = typer.Typer(
    help="AI feedback: preference labels from option log-probs (both orders averaged), binary KTO labels, "
    "direct 1-10 scores, and evaluation of a labeler against gold comparisons.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

DEFAULT_MODEL = "smollm2-135m"

ENGINE_HELP = "Back end: transformers (local), openai (any OpenAI-compatible server), vllm."
MODEL_HELP = "Labeler model: the embedded smollm2-135m, a Hugging Face id or a local folder."
BASE_URL_HELP = "Server URL for --engine openai (default $OPENAI_BASE_URL or http://localhost:8000/v1)."
TOKENIZER_HELP = "--engine openai: local tokenizer (HF id or folder) for chat templates (--template chat)."


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from constitution.loader import ConstitutionError
    from constitution.templating import TemplateRenderError
    from engines.base import EngineCapabilityError
    from jobs.rundir import RunDirError

    from .inputs import InputError

    return (ConstitutionError, TemplateRenderError, EngineCapabilityError, RunDirError, InputError, ValueError,
            OSError, ImportError)


def _load_engine(engine: str, model: str, base_url: Optional[str], tokenizer: Optional[str], batch_size: int,
                 device: Optional[str], engine_opt: Optional[list[str]] = None):
    from engines import engine_options, load_engine

    try:
        options = engine_options(engine, {"base_url": base_url, "tokenizer": tokenizer, "batch_size": batch_size, "device": device},
                                 engine_opt or ())
        return load_engine(engine, model, **options)
    except (ImportError, RuntimeError, OSError, TypeError) as e:  # missing extra, unknown model, no GPU ...
        raise ValueError(f"cannot load --engine {engine} with model {model!r}: {e}") from None


def _constitution(name: Optional[str]):
    from constitution.loader import resolve_constitution

    return resolve_constitution(name) if name else None


def _clamp(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--cot-clamp expects two numbers 'low,high' (e.g. 0.4,0.6), got {text!r}") from None
    return low, high


def _run(fn):
    """Call fn(); expected failures become one 'error:' line and exit code 2."""
    try:
        return fn()
    except _expected_errors() as e:
        raise _fail(str(e)) from None


@app.command("preference")
def preference_command(
    pairs: Path = typer.Argument(..., help="A pair run directory (cai generate pairs) or a JSONL file of "
                                 "{prompt, chosen, rejected} / {prompt, response_a, response_b}."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory for records.jsonl, exports/ and summary.json."),
    constitution: str = typer.Option("harmless", help="Library name or path of the constitution."),
    engine: str = typer.Option("transformers", help=ENGINE_HELP),
    labeler_model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    base_url: Optional[str] = typer.Option(None, help=BASE_URL_HELP),
    engine_opt: Optional[list[str]] = typer.Option(None, "--engine-opt", help=ENGINE_OPT_HELP),
    tokenizer: Optional[str] = typer.Option(None, help=TOKENIZER_HELP),
    template: str = typer.Option("cai_mc", help="cai_mc (Anthropic-style options), rlaif (Preferred Response=), chat (instruct models)."),
    ensemble: int = typer.Option(1, help="Principles per comparison: 1 = one drawn per comparison; K = average of K distinct ones."),
    single_order: bool = typer.Option(False, "--single-order", help="Score only in the order given (faster, keeps position bias)."),
    cot: bool = typer.Option(False, "--cot", help="Generate a rationale before scoring; probabilities are clamped."),
    cot_clamp: str = typer.Option("0.4,0.6", help="Clamp range for --cot probabilities."),
    cot_max_tokens: int = typer.Option(128, help="Rationale length limit for --cot."),
    all_pairs: bool = typer.Option(False, "--all-pairs", help="With >2 responses per prompt, label every pair (default: the first two)."),
    min_margin: float = typer.Option(0.0, help="Exports drop near-ties: |p - 0.5| < margin."),
    batch_size: int = typer.Option(32, help="Prompts scored per forward pass."),
    seed: int = typer.Option(0, help="Seeds principle draws (per comparison id)."),
    device: Optional[str] = typer.Option(None, help="--engine transformers: cpu, cuda, cuda:1 ..."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over: replace this run (only files a run owns; other files stay) once the new run has written its first records."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Label comparisons with p(A better) from normalized option log-probs, both orders averaged.

    Resumable: rerunning the same command continues where it stopped. Writes RUN_DIR/records.jsonl,
    RUN_DIR/exports/prefs.jsonl and a datasets folder RUN_DIR/exports/prefs (prompt/chosen/rejected/p_chosen).

    \b
    Examples:
      cai label preference runs/pairs --out runs/prefs
      cai label preference pairs.jsonl --out runs/prefs --ensemble 3 --min-margin 0.1
      cai label preference runs/pairs --out runs/prefs-chat --template chat --labeler-model HuggingFaceTB/SmolLM2-360M-Instruct
      cai label preference runs/pairs --out runs/prefs-cot --cot --cot-clamp 0.4,0.6
      cai label preference runs/pairs --out runs/prefs-srv --engine openai --base-url http://localhost:8000/v1 --labeler-model my-model
    """
    from .preference import label_preferences

    def work():
        clamp = _clamp(cot_clamp)
        const = _constitution(constitution)
        eng = _load_engine(engine, labeler_model, base_url, tokenizer, batch_size, device, engine_opt)
        return label_preferences(const, pairs, eng, out, template=template, ensemble=ensemble,
                                 both_orders=not single_order, cot=cot, cot_clamp=clamp, cot_max_tokens=cot_max_tokens,
                                 seed=seed, batch_size=batch_size, all_pairs=all_pairs, min_margin=min_margin,
                                 overwrite=overwrite, progress=not quiet)

    summary = _run(work)
    typer.echo(json.dumps(summary, indent=2))


@app.command("binary")
def binary_command(
    inputs: Path = typer.Argument(..., help="A pair run directory (each response separately) or a JSONL file of "
                                  "{prompt, response} / {prompt, completion}."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory."),
    constitution: str = typer.Option("harmless", help="Library name or path; one feedback principle is drawn per response."),
    question: Optional[str] = typer.Option(None, help="Judge every response by this standard instead of the constitution's principles."),
    engine: str = typer.Option("transformers", help=ENGINE_HELP),
    labeler_model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    base_url: Optional[str] = typer.Option(None, help=BASE_URL_HELP),
    engine_opt: Optional[list[str]] = typer.Option(None, "--engine-opt", help=ENGINE_OPT_HELP),
    tokenizer: Optional[str] = typer.Option(None, help=TOKENIZER_HELP),
    template: str = typer.Option("binary", help="Template name (labelers/templates/binary.j2, or the constitution's override)."),
    min_margin: float = typer.Option(0.0, help="The KTO export drops responses with |p_desirable - 0.5| < margin."),
    batch_size: int = typer.Option(32, help="Responses scored per forward pass."),
    seed: int = typer.Option(0, help="Seeds principle draws."),
    device: Optional[str] = typer.Option(None, help="--engine transformers: cpu, cuda ..."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over: replace this run (only files a run owns; other files stay) once the new run has written its first records."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Label single responses desirable/undesirable from p(" Yes") vs p(" No"), for KTO.

    Writes RUN_DIR/records.jsonl and RUN_DIR/exports/kto.jsonl + datasets folder (prompt/completion/label).

    \b
    Examples:
      cai label binary runs/pairs --out runs/kto
      cai label binary responses.jsonl --out runs/kto --question "Is the reply harmless and polite?"
    """
    from .binary import label_binary

    def work():
        const = None if question else _constitution(constitution)
        eng = _load_engine(engine, labeler_model, base_url, tokenizer, batch_size, device, engine_opt)
        return label_binary(const, inputs, eng, out, question=question, template=template, seed=seed,
                            batch_size=batch_size, min_margin=min_margin, overwrite=overwrite, progress=not quiet)

    typer.echo(json.dumps(_run(work), indent=2))


@app.command("score")
def score_command(
    inputs: Path = typer.Argument(..., help="A pair run directory (each response separately) or a JSONL file of "
                                  "{prompt, response} / {prompt, completion}."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory."),
    constitution: str = typer.Option("harmless", help="Library name or path; one feedback principle is drawn per response."),
    question: Optional[str] = typer.Option(None, help="Rate every response by this standard instead of the constitution's principles."),
    engine: str = typer.Option("transformers", help=ENGINE_HELP),
    labeler_model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    base_url: Optional[str] = typer.Option(None, help=BASE_URL_HELP),
    engine_opt: Optional[list[str]] = typer.Option(None, "--engine-opt", help=ENGINE_OPT_HELP),
    tokenizer: Optional[str] = typer.Option(None, help=TOKENIZER_HELP),
    template: str = typer.Option("score", help="Template name (labelers/templates/score.j2, or the constitution's override)."),
    batch_size: int = typer.Option(32, help="Responses scored per call (each needs 10 option rows)."),
    seed: int = typer.Option(0, help="Seeds principle draws."),
    device: Optional[str] = typer.Option(None, help="--engine transformers: cpu, cuda ..."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over: replace this run (only files a run owns; other files stay) once the new run has written its first records."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Direct RLAIF: expected 1-10 rating Σ i·P(i), rescaled to a score in [-1, 1].

    Writes RUN_DIR/records.jsonl and RUN_DIR/exports/scores.jsonl + datasets folder (prompt/completion/score).

    \b
    Examples:
      cai label score runs/pairs --out runs/scores
      cai label score responses.jsonl --out runs/scores --question "Is the reply helpful and honest?"
    """
    from .score import label_scores

    def work():
        const = None if question else _constitution(constitution)
        eng = _load_engine(engine, labeler_model, base_url, tokenizer, batch_size, device, engine_opt)
        return label_scores(const, inputs, eng, out, question=question, template=template, seed=seed,
                            batch_size=batch_size, overwrite=overwrite, progress=not quiet)

    typer.echo(json.dumps(_run(work), indent=2))


@app.command("eval")
def eval_command(
    gold: Path = typer.Option(..., "--gold", help="Gold comparisons: {prompt, chosen, rejected} lines and/or Anthropic "
                              "multiple-choice lines {prompt, corrects, incorrects}."),
    labeler_model: str = typer.Option(DEFAULT_MODEL, help=MODEL_HELP),
    engine: str = typer.Option("transformers", help=ENGINE_HELP),
    base_url: Optional[str] = typer.Option(None, help=BASE_URL_HELP),
    engine_opt: Optional[list[str]] = typer.Option(None, "--engine-opt", help=ENGINE_OPT_HELP),
    tokenizer: Optional[str] = typer.Option(None, help=TOKENIZER_HELP),
    constitution: str = typer.Option("harmless", help="Feedback principles for prompt/chosen/rejected gold lines."),
    template: str = typer.Option("cai_mc", help="Template for prompt/chosen/rejected gold lines (MC lines are scored as given)."),
    out: Optional[Path] = typer.Option(None, "--out", help="One JSON line per comparison, in input order: p_first_raw, "
                                       "p_first_swapped, p_first_avg, gold_first."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a reliability diagram (PNG)."),
    metrics_out: Optional[Path] = typer.Option(None, "--metrics", help="Write the metrics as JSON."),
    batch_size: int = typer.Option(32, help="Prompts scored per forward pass."),
    seed: int = typer.Option(0, help="Seeds principle draws and which gold items list the better response first."),
    device: Optional[str] = typer.Option(None, help="--engine transformers: cpu, cuda ..."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Agreement of a labeler with gold labels (raw order, swapped, both), position consistency and ECE.

    \b
    Examples:
      cai label eval --gold data/gold/harmless_gold.jsonl --labeler-model smollm2-135m
      cai label eval --gold data/gold/anthropic_mc_sample.jsonl --out eval.jsonl --plot calibration.png
      cai label eval --gold gold.jsonl --engine openai --base-url http://localhost:8000/v1 --labeler-model my-model
    """
    from .evaluate import evaluate_labeler, format_summary, plot_reliability

    def work():
        from .evaluate import load_gold

        items = load_gold(gold, seed)
        needs_constitution = any(i.format == "pair" for i in items)
        const = _constitution(constitution) if needs_constitution else None
        eng = _load_engine(engine, labeler_model, base_url, tokenizer, batch_size, device, engine_opt)
        return evaluate_labeler(eng, items, constitution=const, template=template, seed=seed,
                                batch_size=batch_size, progress=not quiet)

    rows, metrics = _run(work)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    if metrics_out:
        metrics_out.write_text(json.dumps(metrics, indent=2) + "\n")
    if plot:
        plot_reliability(rows, plot)
    typer.echo(f"labeler {labeler_model} ({engine}) on {gold}")
    typer.echo(format_summary(metrics))
