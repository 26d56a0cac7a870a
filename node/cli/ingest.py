"""``rehealth node ingest``: load a CSV/Parquet file; print what was loaded and quarantined."""

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
    open_node,
)
from node.config import NodeConfig
from node.ingest import DEFAULT_CHUNK_ROWS, KINDS, IngestSummary, ingest_file
from node.ingest.pipeline import FileRefused
from node.ingest.validate import CONFLICTS_WITH_STORED
from shared.errors import DataError


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """``["Alter=age", ...]`` -> ``{"Alter": "age"}``."""
    mapping = {}
    for pair in pairs:
        theirs, sep, ours = pair.partition("=")
        if not sep or not theirs or not ours:
            raise DataError(f"--map expects site_column=our_column, got {pair!r}")
        mapping[theirs] = ours
    return mapping


@app.command("ingest")
def ingest(
    file: Path = typer.Argument(
        None, help="CSV or Parquet file (default: the config's [data] path for --kind)."
    ),
    kind: str = typer.Option(..., "--kind", "-k", help=f"One of: {', '.join(KINDS)}."),
    config: Path = CONFIG_OPTION,
    mapping: list[str] = typer.Option([], "--map", help="site_column=our_column (repeatable)."),
    chunk_rows: int = typer.Option(
        DEFAULT_CHUNK_ROWS, "--chunk-rows", min=1, help="Rows per chunk: memory grows with it."
    ),
    fmt: str = FORMAT_OPTION,
) -> None:
    """Validate, pseudonymise and store a CSV or Parquet FILE.

    Invalid rows go to quarantine with their reason; rows for people (or events) already
    stored with other values are refused into the quarantine too (corrections are not
    applied); re-ingesting the same file changes nothing. A file loads whole or not at all:
    exit code 0 even if rows were quarantined, 1 if the file was refused (nothing of it is
    stored; the error names the line or row group and what to do).
    """
    check_format(fmt)
    with errors_to_exit():
        cfg, store, pseudo = open_node(config)
        try:
            file = file or _configured_file(cfg, kind)
            try:
                summary = ingest_file(
                    store,
                    file,
                    kind=kind,
                    pseudonymize=pseudo.many,
                    site_id=cfg.site_id,
                    mapping=parse_mapping(mapping),
                    chunk_rows=chunk_rows,
                    time_zone=cfg.time_zone,
                )
            except DataError as e:
                print_refused(e, Path(file).name, kind, fmt)
                raise
        finally:
            store.engine.dispose()
    if fmt == "json":
        echo_json(summary.to_dict())
    else:
        print_summary(summary)


def _configured_file(cfg: NodeConfig, kind: str) -> Path:
    path = getattr(cfg.data, kind, None) if kind in KINDS else None
    if path is None:
        raise DataError(f"no FILE given and the node config has no [data] {kind} path")
    return path


def print_summary(s: IngestSummary) -> None:
    out = Console()
    title = f"{s.file} ({s.kind})" + (" - already ingested, nothing changed" if s.already_ingested else "")
    table = Table(title=title, show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("rows read", f"{s.rows:,}")
    table.add_row("[green]loaded[/green]", f"{s.loaded:,}")
    table.add_row("already stored", f"{s.already_present:,}")
    table.add_row("[yellow]quarantined[/yellow]", f"{s.quarantined:,}")
    for reason, n in sorted(s.by_reason.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {reason}", f"{n:,}")
    out.print(table)
    conflicts = s.by_reason.get(CONFLICTS_WITH_STORED, 0)
    if conflicts:
        out.print(
            f"{conflicts:,} row(s) differ from what is already stored for the same person or record: "
            "refused (corrections are not applied; see the ingest section of docs/USAGE.md)",
            highlight=False,
        )
    if s.quarantined:
        out.print(
            "quarantined rows (file, row, field, reason) are in the store's quarantine table", highlight=False
        )


def print_refused(e: DataError, file: str, kind: str, fmt: str) -> None:
    """The summary of a refused file on stdout (the error line itself goes to stderr)."""
    if isinstance(e, FileRefused):
        data = e.to_dict()
    else:  # refused before its first row was read
        data = FileRefused(str(e), file=file, kind=kind, rows_read=0).to_dict()
    if fmt == "json":
        echo_json(data)
        return
    table = Table(title=f"{data['file']} ({data['kind']}) - REFUSED", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    table.add_row("rows read before the error", f"{data['rows_read']:,}")
    if data["status"] == "failed":
        table.add_row("[red]loaded[/red]", "0 (the whole file was refused)")
        table.add_row("rows rolled back", f"{data['rolled_back']:,}")
    else:
        table.add_row("[red]status[/red]", "incomplete: run the command again to resume")
    Console().print(table)
