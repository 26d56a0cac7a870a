"""Log options of the node's long-running commands (``serve``, ``run``) and the one call that
applies them (:func:`shared.logsetup.setup_logging`): the option, else ``REHEALTH_LOG_FORMAT``
/ ``REHEALTH_LOG_LEVEL``, else node.toml's ``[log]`` section, else text at INFO."""

from __future__ import annotations

import os

import typer

from node.config import NodeConfig
from shared.logsetup import FORMATS, LEVELS, setup_logging

FORMAT_ENV, LEVEL_ENV = "REHEALTH_LOG_FORMAT", "REHEALTH_LOG_LEVEL"
LOG_FORMAT_OPTION = typer.Option(
    None, "--log-format", envvar=FORMAT_ENV, help="Logs: text or json (default: node.toml [log], else text)."
)
LOG_LEVEL_OPTION = typer.Option(
    None, "--log-level", envvar=LEVEL_ENV, help="DEBUG, INFO, WARNING or ERROR (default: node.toml [log])."
)


def setup_node_logging(cfg: NodeConfig | None, fmt: str | None, level: str | None) -> tuple[str, str]:
    """Apply the chosen format and level; return them.

    They are also put in the environment, so a process this one starts (``node run``'s
    scoring API) logs the same way.

    Raises:
        typer.BadParameter: an unknown format or level.
    """
    fmt = fmt or (cfg.log.format if cfg is not None else "text")
    level = (level or (cfg.log.level if cfg is not None else "INFO")).upper()
    if fmt not in FORMATS:
        raise typer.BadParameter(f"{fmt!r}: one of {', '.join(FORMATS)}", param_hint="--log-format")
    if level not in LEVELS:
        raise typer.BadParameter(f"{level!r}: one of {', '.join(LEVELS)}", param_hint="--log-level")
    setup_logging(fmt, level)
    os.environ[FORMAT_ENV], os.environ[LEVEL_ENV] = fmt, level
    return fmt, level
