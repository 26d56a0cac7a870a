"""``rehealth node backup`` and ``rehealth node restore``: the store and the privacy ledger in
one encrypted archive (see :mod:`node.backup`)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from node.cli._app import app
from node.cli._dataplane import CONFIG_OPTION, FORMAT_OPTION, check_format, echo_json, errors_to_exit
from node.config import NodeConfig


@app.command("backup")
def backup(
    to: Path = typer.Option(..., "--to", help="The archive to write (a new file; 0600)."),
    config: Path = CONFIG_OPTION,
    method: str = typer.Option(
        None,
        "--method",
        help="sqlite (SQLite stores), pg_dump or logical (PostgreSQL; default pg_dump when installed).",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing archive."),
    fmt: str = FORMAT_OPTION,
) -> None:
    """Back up the store and the privacy ledger into one archive, encrypted and authenticated
    with a key derived from the node's pseudonym key (back the key file up separately)."""
    check_format(fmt)
    with errors_to_exit():
        from node.backup import backup_node  # cryptography and the store: only when run

        info = backup_node(NodeConfig.from_toml(config), to, method=method, force=force)
    if fmt == "json":
        echo_json(info)
        return
    rows = ", ".join(f"{k} {v:,}" for k, v in info["store"]["rows"].items() if v) or "no rows"
    led = info["ledger"]
    Console().print(
        f"[green]backed up[/green] to {to} ({info['archive_bytes'] / 2**20:.1f} MiB, "
        f"{info['store']['method']}, schema {info['store']['revision']}): {rows}; ledger: "
        + (f"{led['releases']} release(s)" if led["present"] else "none yet"),
        highlight=False,
        soft_wrap=True,
    )


@app.command("restore")
def restore(
    src: Path = typer.Option(..., "--from", help="An archive made by rehealth node backup."),
    config: Path = CONFIG_OPTION,
    fmt: str = FORMAT_OPTION,
) -> None:
    """Replace the store with a backup's and merge the backup's ledger into the node's: the
    ledger keeps every release of both (ε spent never drops). Stop the node first."""
    check_format(fmt)
    with errors_to_exit():
        from node.backup import restore_node

        info = restore_node(NodeConfig.from_toml(config), src)
    if fmt == "json":
        echo_json(info)
        return
    rows = ", ".join(f"{k} {v:,}" for k, v in info["rows"].items() if v) or "no rows"
    out = Console()
    out.print(
        f"[green]restored[/green] the store from {src} (made {info['backup_created_at']}): {rows}",
        highlight=False,
        soft_wrap=True,
    )
    led = info["ledger"]
    if led:
        spent = led["spent_after"]
        out.print(
            f"ledger: {led['releases_added']} release(s) from the backup added, "
            f"{led['releases_after']} in all; ε spent "
            + (f"{spent:.4g}" if spent is not None else "- (no budget set)")
            + " (never lowered by a restore)",
            highlight=False,
            soft_wrap=True,
        )
    if info.get("ledger_anchor"):
        # restored, but the node will refuse to release from this ledger (node.ledger_anchor)
        out.print(f"[red]warning:[/red] {escape(info['ledger_anchor'])}", highlight=False, soft_wrap=True)
