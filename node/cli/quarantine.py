"""``rehealth node quarantine list|show``: ingested files and why rows were quarantined.

Reasons, fields and data-row numbers only: a quarantine row never holds a value (it might be
an identifier typed into the wrong column), and the viewer leaves the pseudonym out too.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from node.cli._app import app
from node.cli._dataplane import (
    CONFIG_OPTION,
    FORMAT_OPTION,
    check_format,
    echo_json,
    errors_to_exit,
    opened_node,
)
from node.ingest.quarantine import file_problems, list_files

quarantine_app = typer.Typer(
    help="Ingested files and their quarantined rows (reasons and row numbers, never values)."
)
app.add_typer(quarantine_app, name="quarantine")


@quarantine_app.command("list")
def list_cmd(config: Path = CONFIG_OPTION, fmt: str = FORMAT_OPTION) -> None:
    """Every ingested file: id, name, kind, status and counts (newest first)."""
    check_format(fmt)
    with errors_to_exit():
        with opened_node(config) as (_cfg, store, _p):
            with store.engine.connect() as conn:
                files = list_files(conn)
    if fmt == "json":
        echo_json({"files": files})
        return
    table = Table(title="ingested files")
    for name in ("id", "file", "kind", "status", "rows", "loaded", "already", "quarantined", "note"):
        table.add_column(
            name, justify="right" if name in ("id", "rows", "loaded", "already", "quarantined") else "left"
        )
    for f in files:
        table.add_row(
            str(f["id"]),
            f["name"],
            f["kind"],
            f["status"],
            f"{f['rows']:,}",
            f"{f['loaded']:,}",
            f"{f['already_present']:,}",
            f"{f['quarantined']:,}",
            f["error"] or "",
        )
    Console().print(table)


@quarantine_app.command("show")
def show_cmd(
    file_id: int = typer.Argument(..., help="The file's id (rehealth node quarantine list)."),
    config: Path = CONFIG_OPTION,
    fmt: str = FORMAT_OPTION,
) -> None:
    """One file's quarantine: counts and row numbers by field and reason, then each row."""
    check_format(fmt)
    with errors_to_exit():
        with opened_node(config) as (_cfg, store, _p):
            with store.engine.connect() as conn:
                data = file_problems(conn, file_id)
    if fmt == "json":
        echo_json(data)
        return
    out = Console()
    out.print(
        f"{data['file']} ({data['kind']}, id {data['file_id']}, {data['status']}): "
        f"{data['quarantined']:,} row(s) quarantined" + (f" - {data['error']}" if data["error"] else ""),
        highlight=False,
    )
    table = Table(title="by field and reason")
    for name in ("field", "reason", "rows quarantined", "data rows"):
        table.add_column(name)
    for g in data["by_field_and_reason"]:
        rows = ", ".join(map(str, g["rows"][:30])) + (" …" if g["count"] > 30 else "")
        table.add_row(g["field"], g["reason"], f"{g['count']:,}", rows)
    out.print(table)
    detail = Table(title="rows (data rows, the header not counted)")
    for name in ("row", "field", "reason", "detail"):
        detail.add_column(name)
    for r in data["rows"][:200]:
        detail.add_row(str(r["row"]), r["field"], r["reason"], r["detail"])
    out.print(detail)
