"""The ``cai`` command: a thin dispatcher over the sub-commands each package defines.

Each package owns its own Typer sub-app (``constitution/cli.py``, ``generators/cli.py``,
``labelers/cli.py``, ``trainers/cli.py``), its options generated from one pydantic config per command
(``jobs/config.py``: ``--config file.yaml`` everywhere); heavy imports (torch, transformers) happen inside
the command functions so ``cai --help`` stays instant.
"""

from __future__ import annotations

import typer

from constitution.cli import app as constitution_app
from generators.cli import export_command, generate_app
from labelers.cli import app as label_app
from pipeline.cli import eval_app, run_command
from report.cli import diff_command, report_command, try_command
from trainers.cli import app as train_app

app = typer.Typer(
    help="The open toolkit for Constitutional AI and RLAIF: constitutions → SL-CAI data → AI preference labels → trained models.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
app.add_typer(constitution_app, name="constitution")
app.add_typer(generate_app, name="generate")
app.command("export")(export_command)
app.add_typer(label_app, name="label")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.command("run")(run_command)
app.command("report")(report_command)
constitution_app.command("diff")(diff_command)  # report floor: --run reads stage records
constitution_app.command("try")(try_command)  # report floor: runs generators.critique_revision


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
