"""`cai label preference|binary|score|eval`: AI feedback labels and labeler evaluation.

Argument parsing and error reporting only; the options are generated from the configs in
``labelers/config.py`` (``--config file.yaml`` on every command), the work is done by
``label_preferences``, ``label_binary``, ``label_scores`` and ``evaluate_labeler``. Heavy imports happen
inside the commands so ``cai --help`` stays instant. Expected failures exit with code 2 and one clear message.
"""

from __future__ import annotations

import json

import typer

from jobs.config import config_command, config_to_dict, fail
from jobs.options import engine_spec_from, load_engine_from

from .config import DEFAULT_MODEL, BinaryConfig, EvalConfig, PreferenceConfig, ScoreConfig  # noqa: F401

app = typer.Typer(
    help="AI feedback: preference labels from option log-probs (both orders averaged), binary KTO labels, "
    "direct 1-10 scores, and evaluation of a labeler against gold comparisons.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

_fail = fail  # one `error: …` line, exit 2 (jobs/config.py)


def _expected_errors() -> tuple[type[BaseException], ...]:
    from constitution.loader import ConstitutionError
    from constitution.templating import TemplateRenderError
    from engines.base import EngineCapabilityError
    from jobs.ray_executor import RayExecutorError
    from jobs.rundir import RunDirError

    from .inputs import InputError

    return (ConstitutionError, TemplateRenderError, EngineCapabilityError, RunDirError, InputError, ValueError,
            OSError, ImportError, RayExecutorError)


def _load_engine(config):
    """The engine the config names (a ConfigError, i.e. a ValueError, if it cannot load); tests replace
    this hook with a fake."""
    return load_engine_from(config)


def _executor(config) -> dict:
    """``executor=`` and ``engine_spec=`` for a label function: none for a local run; with ``--executor
    ray`` the Ray executor and the spec each worker builds its engine from."""
    if config.executor != "ray":
        return {}
    from jobs.ray_executor import make_executor

    spec = engine_spec_from(config)  # a ConfigError is a ValueError: one `error:` line
    return {"executor": make_executor(config), "engine_spec": spec}


def _engine(config, run_on: dict):
    """The engine this process labels with (a local run), or with ``--executor ray`` what the checks before
    the run need of it (can it score, does the template render): an ``EngineView`` that loads the model's
    tokenizer but not the model, since the driver of a cluster run may have no GPU. An ``openai`` client
    loads no model, so it is built as it is."""
    spec = run_on.get("engine_spec")
    if spec is None or spec.name == "openai":
        return _load_engine(config)
    from engines.view import EngineView

    return EngineView(spec.name, spec.model, **spec.options)


def _constitution(name):
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


def preference(c: PreferenceConfig):
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
        clamp = _clamp(c.cot_clamp)
        const = _constitution(c.constitution)
        run_on = _executor(c)
        eng = _engine(c, run_on)
        return label_preferences(const, c.pairs, eng, c.out, template=c.template, ensemble=c.ensemble,
                                 both_orders=not c.single_order, cot=c.cot, cot_clamp=clamp, cot_max_tokens=c.cot_max_tokens,
                                 seed=c.seed, batch_size=c.batch_size, all_pairs=c.all_pairs, min_margin=c.min_margin,
                                 overwrite=c.overwrite, progress=not c.quiet, config=config_to_dict(c, resolved=True), **run_on)

    summary = _run(work)
    typer.echo(json.dumps(summary, indent=2))


def binary(c: BinaryConfig):
    """Label single responses desirable/undesirable from p(" Yes") vs p(" No"), for KTO.

    Writes RUN_DIR/records.jsonl and RUN_DIR/exports/kto.jsonl + datasets folder (prompt/completion/label).

    \b
    Examples:
      cai label binary runs/pairs --out runs/kto
      cai label binary responses.jsonl --out runs/kto --question "Is the reply harmless and polite?"
    """
    from .binary import label_binary

    def work():
        const = None if c.question else _constitution(c.constitution)
        run_on = _executor(c)
        eng = _engine(c, run_on)
        return label_binary(const, c.inputs, eng, c.out, question=c.question, template=c.template, seed=c.seed,
                            batch_size=c.batch_size, min_margin=c.min_margin, overwrite=c.overwrite, progress=not c.quiet,
                            config=config_to_dict(c, resolved=True), **run_on)

    typer.echo(json.dumps(_run(work), indent=2))


def score(c: ScoreConfig):
    """Direct RLAIF: expected 1-10 rating Σ i·P(i), rescaled to a score in [-1, 1].

    Writes RUN_DIR/records.jsonl and RUN_DIR/exports/scores.jsonl + datasets folder (prompt/completion/score).

    \b
    Examples:
      cai label score runs/pairs --out runs/scores
      cai label score responses.jsonl --out runs/scores --question "Is the reply helpful and honest?"
    """
    from .score import label_scores

    def work():
        const = None if c.question else _constitution(c.constitution)
        run_on = _executor(c)
        eng = _engine(c, run_on)
        return label_scores(const, c.inputs, eng, c.out, question=c.question, template=c.template, seed=c.seed,
                            batch_size=c.batch_size, overwrite=c.overwrite, progress=not c.quiet,
                            config=config_to_dict(c, resolved=True), **run_on)

    typer.echo(json.dumps(_run(work), indent=2))


def evaluate(c: EvalConfig):
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

        items = load_gold(c.gold, c.seed)
        needs_constitution = any(i.format == "pair" for i in items)
        const = _constitution(c.constitution) if needs_constitution else None
        eng = _load_engine(c)
        return evaluate_labeler(eng, items, constitution=const, template=c.template, seed=c.seed,
                                batch_size=c.batch_size, progress=not c.quiet)

    rows, metrics = _run(work)
    if c.out:
        c.out.parent.mkdir(parents=True, exist_ok=True)
        with open(c.out, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    if c.metrics_out:
        c.metrics_out.write_text(json.dumps(metrics, indent=2) + "\n")
    if c.plot:
        plot_reliability(rows, c.plot)
    typer.echo(f"labeler {c.labeler_model} ({c.engine}) on {c.gold}")
    typer.echo(format_summary(metrics))


preference_command = app.command("preference")(config_command(PreferenceConfig, preference))
binary_command = app.command("binary")(config_command(BinaryConfig, binary))
score_command = app.command("score")(config_command(ScoreConfig, score))
eval_command = app.command("eval")(config_command(EvalConfig, evaluate))
