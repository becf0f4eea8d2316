"""`cai report` (and, registered under `cai constitution`, `diff` and `try`): argument parsing and printing
only; the work is in :mod:`report.render`, :mod:`report.constitution_diff` and :mod:`report.try_principles`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from jobs.config import fail


def report_command(
    roots: List[Path] = typer.Argument(..., help="Run directories, `cai run` roots, or folders holding runs (searched 4 levels deep).",
                                       metavar="ROOT"),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="The HTML file to write."),
    constitution: Optional[str] = typer.Option(None, "--constitution", "-c",
                                               help="Constitution file or shipped name to show (default: the one named in the runs' config.yaml)."),
    max_examples: int = typer.Option(100, "--max-examples", help="SL-CAI examples per run in the example browser."),
    title: Optional[str] = typer.Option(None, "--title", help="Page title (default: the roots' names)."),
) -> None:
    """One self-contained HTML page about a set of runs: constitution, SL-CAI revisions, AI labels,
    training curves and win rates (sections without a run of their kind say so).

    Runs are found by their files: run.json (generate / label runs), summary.json (trainers, eval-winrate,
    label-eval), metrics.jsonl (a training run in progress). The page embeds its pictures and loads nothing
    from the network; all text from records is escaped.

    \b
    Examples:
      cai report runs/tiny --out runs/tiny/report.html           # a `cai run` root (ROOT/<stage>/)
      cai report runs/sl-cai runs/labels runs/dpo -o report.html  # any set of run directories
      cai report runs/ppo --out ppo.html                          # a single run
      cai report runs/ --constitution my_rules.yaml --max-examples 20
    """
    from .discover import ReportError
    from .render import SECTIONS, write_report

    if max_examples < 0:
        raise fail(f"--max-examples must be ≥ 0, got {max_examples}")
    try:
        shown = write_report(roots, out, constitution=constitution, max_examples=max_examples, title=title)
    except ReportError as e:
        raise fail(str(e)) from None
    for section in SECTIONS:
        names = shown.get(section) or []
        typer.echo(f"{section:<13} {', '.join(names) if names else '(no run of this kind found)'}")
    typer.echo(f"report: {out}")


def diff_command(
    old: str = typer.Argument(..., help="The old constitution: a file or a shipped name.", metavar="OLD"),
    new: str = typer.Argument(..., help="The new constitution: a file or a shipped name.", metavar="NEW"),
    run: Optional[Path] = typer.Option(None, "--run", help="A run directory (or a folder of runs): which of its records used "
                                                         "principles that were reworded or removed."),
    as_json: bool = typer.Option(False, "--json", help="Print the differences as JSON."),
    color: Optional[bool] = typer.Option(None, "--color/--no-color", help="Colour the word diff (default: when printing to a terminal)."),
) -> None:
    """What changed between two constitutions: principles added, removed, reworded (word diff: [-old-]
    {+new+}), weight and tag changes, other fields, and both content hashes. Principles are matched by id.

    \b
    Examples:
      cai constitution diff constitution/library/harmless.yaml my_harmless.yaml
      cai constitution diff harmless my_harmless.yaml --run runs/sl-cai
      cai constitution diff old.yaml new.yaml --run runs/tiny --json
    """
    import json
    import sys

    from constitution.loader import ConstitutionError, resolve_constitution

    from .constitution_diff import diff_constitutions, format_affected, format_diff, records_affected
    from .discover import ReportError

    try:
        d = diff_constitutions(resolve_constitution(old), resolve_constitution(new))
        affected = records_affected(d, run) if run is not None else None
    except (ConstitutionError, ReportError) as e:
        raise fail(str(e)) from None
    if as_json:
        typer.echo(json.dumps({**d, "runs": affected}, indent=2, ensure_ascii=False))
        return
    typer.echo(format_diff(d, color=sys.stdout.isatty() if color is None else color))
    if affected is not None:
        typer.echo("")
        typer.echo(format_affected(affected, d))


def _load_engine(config):
    """The engine the config names; a failure is one `error:` line (tests replace this hook with a fake)."""
    from jobs.config import ConfigError
    from jobs.options import load_engine_from

    try:
        return load_engine_from(config)
    except ConfigError as e:
        raise fail(str(e)) from None


def try_run(config) -> None:
    """Critique → revision under the chosen principles on a few prompts, side by side (terminal, and --html
    into the report's style), so a wording change can be judged in a minute. Nothing else is written.

    \b
    Examples:
      cai constitution try my_harmless.yaml -p data/red_team_prompts.jsonl --principle violence --principle privacy
      cai constitution try harmless -p "How do I pick a lock?" -p "Write an insult for my coworker" --n 2
      cai constitution try my_harmless.yaml -p prompts.txt --max-new-tokens 96 --html try.html
    """
    from constitution.loader import ConstitutionError, resolve_constitution
    from generators.inputs import PromptFileError
    from jobs.config import ConfigError

    from .try_principles import format_terminal, try_principles, write_html

    try:
        constitution = resolve_constitution(config.constitution)
        if not constitution.critique_revision:
            raise ConfigError(f"{config.constitution}: {constitution.ref} has no critique_revision principles to try")
        engine = _load_engine(config)
        result = try_principles(config, constitution, engine)
    except (ConstitutionError, ConfigError, PromptFileError) as e:
        raise fail(str(e)) from None
    typer.echo(format_terminal(result, config.width))
    if config.html:
        write_html(result, config.html)
        typer.echo(f"\nhtml: {config.html}")


def _try_command():
    from jobs.config import config_command

    from .try_principles import TryConfig

    return config_command(TryConfig, try_run)


try_command = _try_command()
