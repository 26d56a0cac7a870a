"""`rehealth coordinator run`: the SuperLink from a provisioned coordinator kit."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

app = typer.Typer(
    help="Run the coordinator's SuperLink from its kit.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _group() -> None:
    """Coordinator services."""


@app.command("run")
def run(
    kit: Path = typer.Option(..., "--kit", exists=True, file_okay=False, help="The coordinator kit."),
    bind: str = typer.Option(None, "--bind", help="Listen host (default: the kit address's host)."),
) -> None:
    """Start the SuperLink (TLS, SuperNode authentication, the kit's registered node keys) and
    its SuperExec; stop both on SIGTERM or Ctrl-C."""
    from coordinator.federation import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise typer.Exit(serve.run(kit, bind=bind))
