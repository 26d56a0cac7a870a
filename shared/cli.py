"""The ``rehealth`` command: a root that mounts the command groups each side registers.

Groups come from the ``rehealth.cli`` entry points (pyproject), so the node and the coordinator
each own their commands and neither imports the other. A node-only install shows node commands.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import typer

from shared import __version__

app = typer.Typer(
    name="rehealth",
    help="ReHealth Core: federated causal evidence for cardiovascular prevention.",
    no_args_is_help=True,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rehealth-core {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """ReHealth Core command line."""


def _mount_groups() -> None:
    for ep in sorted(entry_points(group="rehealth.cli"), key=lambda e: e.name):
        sub = ep.load()
        if isinstance(sub, typer.Typer):
            app.add_typer(sub, name=ep.name)
        else:  # a single command
            app.command(ep.name)(sub)


def main() -> None:
    _mount_groups()
    app()
