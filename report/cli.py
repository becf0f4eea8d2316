"""`cai report` (and, registered under `cai constitution`, `diff` and `try`): argument parsing and printing
only; the work is in :mod:`report.render`, :mod:`report.constitution_diff` and :mod:`report.try_principles`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from jobs.config import fail


def report_command(
    roots: List[Path] = typer.Argument(..., help="Run directories, `cai run` roots, or folders holding runs (searched 4 levels deep).",
                                       metavar="ROOT..."),
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
