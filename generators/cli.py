"""`cai generate …` and `cai export` (placeholder: being built)."""

import typer

generate_app = typer.Typer(help="Generate datasets.", no_args_is_help=True, rich_markup_mode=None)


def export_command(run_dir: str) -> None:
    """Rebuild the exported datasets of RUN_DIR."""
    raise typer.Exit(2)
