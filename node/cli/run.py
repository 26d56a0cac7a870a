"""`rehealth node run`: the node's SuperNode (TLS, authenticated) and optional scoring API."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from node.cli._app import app
from node.cli._dataplane import CONFIG_OPTION, errors_to_exit


@app.command("run")
def run(config: Path = CONFIG_OPTION) -> None:
    """Join the federation as node.toml's federation section says (a provisioned kit) and,
    if it has an api section, serve the scoring API; stop everything on SIGTERM or Ctrl-C."""
    from node.flower import node_run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with errors_to_exit():
        code = node_run.run(config)
    raise typer.Exit(code)
