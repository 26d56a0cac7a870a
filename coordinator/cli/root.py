"""The ``rehealth`` command: a root that mounts the command groups each side registers.

Groups come from the ``rehealth.cli`` entry points (pyproject), so the node and the coordinator
each own their commands and neither imports the other. A node-only install shows node commands.

Why here: the repository's layout is fixed (``shared``, ``node``, ``coordinator``, ``protos``),
and ``shared`` must not hold it — ``shared`` is the pure core both sides import (no I/O, no CLI
frameworks, no Flower, no torch; ``tests/unit/test_layering.py``). It sits beside the operator's
command groups, but imports only ``typer`` and ``shared`` and finds each side's groups (the
node's included) through entry-point metadata at run time, so the static import graph has no
edge from it to ``node`` (checked by the layering test) and ``rehealth node …`` loads no
coordinator code beyond this module.
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
    # The root runs every command: a bug's Rich traceback must not print local variables
    # (raw ids and health rows on a node, grant and key material on the coordinator).
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rehealth-core {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """ReHealth Core command line."""


def _mount_groups(argv: list[str] | None = None) -> None:
    """Mount the group named on the command line only (so ``rehealth report verify`` does not
    import pandas or torch); all of them when none is named (``--help``) or ``argv`` is None.
    Idempotent."""
    eps = sorted(entry_points(group="rehealth.cli"), key=lambda e: e.name)
    named = [ep for ep in eps if argv is not None and ep.name in argv[1:2]]
    mounted = {g.name for g in app.registered_groups} | {c.name for c in app.registered_commands}
    for ep in named or eps:
        if ep.name in mounted:
            continue
        sub = ep.load()
        if isinstance(sub, typer.Typer):
            app.add_typer(sub, name=ep.name)
        else:  # a single command
            app.command(ep.name)(sub)


def main() -> None:
    import sys

    _mount_groups(sys.argv)
    app()
