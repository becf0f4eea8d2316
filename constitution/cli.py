"""`cai constitution` sub-commands (placeholder: being built)."""

import typer

app = typer.Typer(help="constitution commands.", no_args_is_help=True, rich_markup_mode=None)
