"""`rehealth study` commands."""

import typer

app = typer.Typer(help="study", no_args_is_help=True)
