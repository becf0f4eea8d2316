"""`cai trainers` sub-commands (placeholder: being built)."""

import typer

app = typer.Typer(help="trainers commands.", no_args_is_help=True, rich_markup_mode=None)
