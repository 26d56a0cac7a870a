"""`rehealth node apikey add`: create an API key for the scoring API (shown once)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from node.cli._app import app
from node.cli._dataplane import errors_to_exit
from node.cli._risk import keys_file, node_config

apikey_app = typer.Typer(
    help="API keys of the node's scoring API.", no_args_is_help=True, pretty_exceptions_show_locals=False
)
app.add_typer(apikey_app, name="apikey")


@apikey_app.command("add")
def add(
    role: str = typer.Option(..., "--role", help="underwriter, hr or admin."),
    config: Path = typer.Option(None, "--config", "-c", help="The node's node.toml."),
    keys: Path = typer.Option(None, "--keys-file", help="API keys file (default: api_keys_path)."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Create a key; only its SHA-256 is stored, the key itself is printed once."""
    from node.api.auth import add_key

    with errors_to_exit():
        path = keys_file(node_config(config), keys)
        entry, key = add_key(path, role=role)
    if fmt == "json":
        typer.echo(json.dumps({"id": entry.key_id, "role": entry.role, "key": key, "keys_file": str(path)}))
    else:
        typer.echo(f"{entry.key_id} ({entry.role}) added to {path}\nkey (shown once): {key}")
