"""`rehealth node` commands: init, ingest, serve, budget, export-profile."""

import typer

app = typer.Typer(help="On-premise node: ingest data, serve, inspect the privacy budget.",
                  no_args_is_help=True)
