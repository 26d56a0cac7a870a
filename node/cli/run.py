"""`rehealth node run`: the node's SuperNode (TLS, authenticated) and optional scoring API."""

from __future__ import annotations

from pathlib import Path

import typer

from node.cli._app import app
from node.cli._dataplane import CONFIG_OPTION, errors_to_exit
from node.cli._logging import LOG_FORMAT_OPTION, LOG_LEVEL_OPTION, setup_node_logging


@app.command("run")
def run(
    config: Path = CONFIG_OPTION, log_format: str = LOG_FORMAT_OPTION, log_level: str = LOG_LEVEL_OPTION
) -> None:
    """Join the federation as node.toml's federation section says (a provisioned kit) and,
    if it has an api section, serve the scoring API; stop everything on SIGTERM or Ctrl-C."""
    from node.config import NodeConfig
    from node.flower import node_run

    with errors_to_exit():
        # the scoring API it starts inherits the format and level (through the environment)
        setup_node_logging(NodeConfig.from_toml(config), log_format, log_level)
        code = node_run.run(config)
    raise typer.Exit(code)
