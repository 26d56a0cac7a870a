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
    opened_node,
)
from node.config import NodeConfig
from node.ingest import DEFAULT_CHUNK_ROWS, KINDS, IngestSummary, ingest_file
from node.ingest.mapping import load_mapping
from node.ingest.pipeline import FileRefused, gate, undo_file
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


#: Exit code of a file the quarantine gate rejected (1: an error; 2: a usage error).
EXIT_GATE = 3


def parse_fraction(text: str | None) -> float | None:
    """``"5%"`` or ``"0.05"`` -> 0.05; None stays None."""
    if text is None:
        return None
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise DataError(
            f"--max-quarantine expects a percentage (5%) or a fraction (0.05), got {text!r}"
        ) from None
    if not 0 <= value <= 1:
        raise DataError(f"--max-quarantine must lie between 0% and 100%, got {text!r}")
    return value


@app.command("ingest")
def ingest(
    file: Path = typer.Argument(
        None, help="CSV or Parquet file (default: the config's [data] path for --kind)."
    ),
    kind: str = typer.Option(..., "--kind", "-k", help=f"One of: {', '.join(KINDS)}."),
    config: Path = CONFIG_OPTION,
    mapping: list[str] = typer.Option([], "--map", help="site_column=our_column (repeatable)."),
    mapping_file: Path = typer.Option(
        None,
        "--mapping",
        help="A mapping file (TOML): columns, codes, units, date format, delimiter, decimal comma, encoding.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would load and be quarantined; write nothing."
    ),
    max_quarantine: str = typer.Option(
        None,
        "--max-quarantine",
        help="Reject the file (exit 3) if more rows than this are quarantined: 5% or 0.05.",
    ),
    replace: bool = typer.Option(
        False, "--replace", help="Undo earlier ingests of this file (same name or bytes) first, then load it."
    ),
    chunk_rows: int = typer.Option(
        DEFAULT_CHUNK_ROWS, "--chunk-rows", min=1, help="Rows per chunk: memory grows with it."
    ),
    fmt: str = FORMAT_OPTION,
) -> None:
    """Validate, pseudonymise and store a CSV or Parquet FILE.

    Invalid rows go to quarantine with their reason; rows for people (or events) already
    stored with other values are refused into the quarantine too (corrections are not
    applied); re-ingesting the same file changes nothing (--replace undoes the earlier
    ingest first). Exit code 0 when the file loaded (even with rows quarantined), 1 if it was
    refused (nothing of it is stored; the error names the line or row group and what to do),
    3 if the quarantine gate rejected it: every row quarantined, or more than
    --max-quarantine (its loaded rows are removed again, its quarantine rows kept for
    `rehealth node quarantine show`). --dry-run exits 3 too when the file would be rejected.
    """
    check_format(fmt)
    with errors_to_exit():
        limit = parse_fraction(max_quarantine)
        extract = load_mapping(mapping_file) if mapping_file is not None else None
        with opened_node(config) as (cfg, store, pseudo):
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
                    extract=extract,
                    missing_ok=cfg.ingest.missing_ok,
                    dry_run=dry_run,
                    max_quarantine=limit,
                    replace=replace,
                )
            except DataError as e:
                print_refused(e, Path(file).name, kind, fmt)
                raise
    rejected = summary.rejected or (gate(summary, limit) if summary.dry_run else None)
    if fmt == "json":
        echo_json({**summary.to_dict(), "rejected": rejected})
    else:
        print_summary(summary, rejected)
    if rejected is not None:
        raise typer.Exit(EXIT_GATE)


@app.command("ingest-undo")
def ingest_undo(
    file_id: int = typer.Argument(..., help="The file's id (rehealth node quarantine list)."),
    config: Path = CONFIG_OPTION,
    fmt: str = FORMAT_OPTION,
) -> None:
    """Remove every row one ingested file stored (and its quarantine rows), so a corrected
    file, or the same file with a corrected mapping, can be ingested again.

    Privacy budget already spent on releases that used these rows stays spent: the ledger is
    never refunded.
    """
    check_format(fmt)
    with errors_to_exit():
        with opened_node(config) as (_cfg, store, _pseudo):
            done = undo_file(store, file_id)
    if fmt == "json":
        echo_json(done.to_dict())
    else:
        typer.echo(
            f"undid {done.file} ({done.kind}, id {done.file_id}): {done.rows_removed:,} row(s) and "
            f"{done.quarantine_removed:,} quarantine row(s) removed; the privacy ledger is unchanged"
        )


def _configured_file(cfg: NodeConfig, kind: str) -> Path:
    path = getattr(cfg.data, kind, None) if kind in KINDS else None
    if path is None:
        raise DataError(f"no FILE given and the node config has no [data] {kind} path")
    return path


def print_summary(s: IngestSummary, rejected: str | None = None) -> None:
    out = Console()
    title = f"{s.file} ({s.kind})" + (" - already ingested, nothing changed" if s.already_ingested else "")
    if s.dry_run:
        title = f"{s.file} ({s.kind}) - DRY RUN, nothing written" + (
            " (this file was ingested before)" if s.already_ingested else ""
        )
    table = Table(title=title, show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    would = "would be " if s.dry_run else ""
    table.add_row("rows read", f"{s.rows:,}")
    table.add_row(f"[green]{would}loaded[/green]", f"{s.loaded:,}")
    table.add_row("already stored" if not s.dry_run else "key already stored", f"{s.already_present:,}")
    table.add_row(f"[yellow]{would}quarantined[/yellow]", f"{s.quarantined:,}")
    for reason, n in sorted(s.by_reason.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {reason}", f"{n:,}")
    for note, n in s.notes.items():
        table.add_row(f"kept: {note}", f"{n:,}")
    out.print(table)
    for where, rows in s.problem_rows.items():
        shown = ", ".join(str(r) for r in rows[:20]) + (" …" if len(rows) > 20 else "")
        out.print(f"  {where}: rows {shown}", highlight=False)
    if s.unmapped_columns:
        out.print(
            f"column(s) not read (map them, or list them under ignore in the mapping file): "
            f"{', '.join(s.unmapped_columns)}",
            highlight=False,
        )
    if s.replaced:
        out.print(
            f"replaced earlier ingest(s) {', '.join(map(str, s.replaced))} (undone first)", highlight=False
        )
    if rejected is not None:
        what = "would be rejected" if s.dry_run else "REJECTED: its loaded rows were removed again"
        out.print(f"[red]{what}[/red]: {rejected}", highlight=False)
    conflicts = s.by_reason.get(CONFLICTS_WITH_STORED, 0)
    if conflicts:
        out.print(
            f"{conflicts:,} row(s) differ from what is already stored for the same person or record: "
            "refused (corrections are not applied; see the ingest section of docs/USAGE.md)",
            highlight=False,
        )
    if s.quarantined and not s.dry_run:
        out.print(
            f"quarantined rows (row, field, reason): rehealth node quarantine show {s.file_id}",
            highlight=False,
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
