"""Plumbing shared by the data-plane commands (init, ingest, intervention): opening a node
from its config, and turning typed errors into one line on stderr and exit code 1."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console

from node.config import NodeConfig
from node.pseudonym import Pseudonymizer, open_pseudonymizer
from node.store import Store, open_store
from shared.errors import ReHealthError

CONFIG_OPTION = typer.Option(Path("node.toml"), "--config", "-c", help="The node's node.toml.")
FORMAT_OPTION = typer.Option("table", "--format", help="Output: table (human) or json.")


def open_node(config_path: Path) -> tuple[NodeConfig, Store, Pseudonymizer]:
    cfg = NodeConfig.from_toml(config_path)
    store = open_store(cfg.store_url)  # integrity-checked; the key is then checked against it
    return cfg, store, open_pseudonymizer(store, cfg.key_path, site_id=cfg.site_id)


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    """A typed error becomes ``error: <message>`` on stderr and exit code 1 (no traceback)."""
    try:
        yield
    except ReHealthError as e:
        Console(stderr=True).print(
            f"[red]error:[/red] {e}", highlight=False, markup=True, soft_wrap=True
        )  # one line, whatever the terminal width
        raise typer.Exit(1) from None


def check_format(fmt: str) -> None:
    if fmt not in ("table", "json"):
        raise typer.BadParameter("use --format table or --format json", param_hint="--format")


def echo_json(data: dict) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
