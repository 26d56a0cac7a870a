"""`rehealth node` commands. One module per command; each registers itself on ``app``."""

import typer

app = typer.Typer(help="On-premise node: set up, ingest data, serve, inspect the privacy budget.",
                  no_args_is_help=True)

# Command modules register on import; add one line per command module.
from node.cli import init, ingest, intervention  # noqa: E402,F401
from node.cli import serve  # noqa: E402,F401
from node.cli import score  # noqa: E402,F401
from node.cli import apikey  # noqa: E402,F401
from node.cli import budget  # noqa: E402,F401
from node.cli import model  # noqa: E402,F401
