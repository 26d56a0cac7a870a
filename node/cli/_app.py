"""The ``rehealth node`` Typer group the command modules register on.

Its own module so that the command modules import it from here rather than from the package
``node.cli`` that imports them (which was an import cycle that worked only because ``app`` was
defined before the imports in ``__init__``).
"""

import typer

app = typer.Typer(
    help="On-premise node: set up, ingest data, serve, inspect the privacy budget.",
    no_args_is_help=True,
    # A bug's traceback must never print local variables: they hold raw ids and health rows.
    pretty_exceptions_show_locals=False,
)
