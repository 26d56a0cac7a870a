"""``ingest_file``: stream a file into the store; every row is loaded, skipped as already
stored, or quarantined with its reason — and the three counts add up to the rows read.

Each chunk commits in one transaction together with its quarantine rows and the file's
progress (``ingested_files.rows_done``), so a crash never leaves part of a chunk and a re-run
resumes after the last chunk that survived (what survives a power loss: ``node.store.engine``).
A file whose SHA-256 was fully ingested before is not read again.
One writer thread commits chunk k while the caller's thread validates chunk k+1.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import pandas as pd
from sqlalchemy import Connection, insert, select, update

from node.ingest.quarantine import counts_by_reason, write_problems
from node.ingest.readers import file_sha256, iter_chunks, plan_columns, read_header
from node.ingest.schema import KindSpec, spec_for
from node.ingest.validate import ChunkResult, Pseudonymize, duplicate_flag, validate_chunk
from node.store import Store, fetch_by_pseudonyms, insert_ignore
from node.store.models import ingested_files
from shared.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_CHUNK_ROWS = 50_000


@dataclass(frozen=True)
class IngestSummary:
    """What happened to a file's rows: ``rows == loaded + already_present + quarantined``."""

    file: str
    kind: str
    sha256: str
    rows: int
    loaded: int
    already_present: int
    quarantined: int
    by_reason: dict[str, int] = field(default_factory=dict)
    already_ingested: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Job:
    id: int
    rows_done: int
    status: str


@dataclass(frozen=True)
class _Batch:
    """A validated chunk ready for the writer: ``columns`` holds the valid rows' columns as
    Python lists (see :func:`_column_lists`); ``last_row`` is the chunk's last data row."""

    result: ChunkResult
    columns: list[list]
    last_row: int


def ingest_file(
    store: Store,
    path: str | Path,
    *,
    kind: str,
    pseudonymize: Pseudonymize,
    site_id: str,
    mapping: Mapping[str, str] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    time_zone: str = "UTC",
) -> IngestSummary:
    """Validate, pseudonymise and store one CSV or Parquet file of ``kind``.

    Args:
        store: the node store.
        path: the input file.
        kind: ``persons``, ``interventions``, ``outcomes`` or ``cohort``.
        pseudonymize: raw ids -> pseudonyms (``Pseudonymizer.many``).
        site_id: the node's site (default ``site`` of persons).
        mapping: ``{site column: our column}`` for files with their own column names.
        chunk_rows: rows per chunk (memory is proportional to it).
        time_zone: the site's time zone (node config ``time_zone``): dates are calendar days there.

    Returns:
        The :class:`IngestSummary`.

    Raises:
        DataError: the file is missing, of an unknown type, lacks a required column, or is
            malformed CSV. Bad *rows* never raise: they are quarantined.
    """
    t0 = time.perf_counter()
    path = Path(path)
    spec = spec_for(kind)
    if not path.is_file():
        raise DataError(f"input file {path} not found")
    columns = plan_columns(read_header(path), spec, mapping or {})
    extras = [c for c in columns.values() if c not in {f.name for f in spec.fields}]
    if extras:  # names only: an operator should see every column that will be stored
        log.info("%s: storing extra numeric column(s) %s", path.name, ", ".join(extras))
    sha = file_sha256(path)
    job = _open_job(store, sha=sha, kind=spec.kind, name=path.name)
    if job.status == "done":
        log.info("%s (%s) was ingested before (sha256 %s…): nothing to do", path.name, kind, sha[:12])
        return _summary(store, job.id, already=True, seconds=time.perf_counter() - t0)
    if job.rows_done:
        log.info("resuming %s after data row %d", path.name, job.rows_done)
    chunks = _pending_chunks(path, columns, spec, chunk_rows=chunk_rows, rows_done=job.rows_done)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer") as writer:
        # Validate chunk k+1 while chunk k commits, which SQLite does without the GIL. Not
        # while chunk k's rows are inserted: the driver takes the GIL back for every row, so
        # the two threads would hand it over row by row, each far slower than alone.
        # At most two chunks are in memory.
        writing: Future | None = None
        for chunk, first_row, last_row in chunks:
            result = validate_chunk(
                chunk, spec, first_row=first_row, site_id=site_id, pseudonymize=pseudonymize,
                time_zone=time_zone,
            )
            del chunk
            batch = _Batch(result, _column_lists(result.rows), last_row)
            if writing is not None:
                writing.result()  # re-raises a failed write before anything else is queued
            staged = threading.Event()
            writing = writer.submit(_write_chunk, store, spec, job, batch, path.name, staged)
            staged.wait()
        if writing is not None:
            writing.result()
    with store.engine.begin() as conn:
        conn.execute(
            update(ingested_files)
            .where(ingested_files.c.id == job.id)
            .values(status="done", finished_at=_now())
        )
    summary = _summary(store, job.id, already=False, seconds=time.perf_counter() - t0)
    log.info(
        "ingested %s (%s): %d rows, %d loaded, %d already stored, %d quarantined %s",
        path.name,
        kind,
        summary.rows,
        summary.loaded,
        summary.already_present,
        summary.quarantined,
        summary.by_reason,
    )
    return summary


def _pending_chunks(
    path: Path, columns: Mapping[str, str], spec: KindSpec, *, chunk_rows: int, rows_done: int
) -> Iterator[tuple[pd.DataFrame, int, int]]:
    """``(chunk, first_row, last_row)`` for the data rows after ``rows_done`` (a resume)."""
    next_row = 1
    for chunk in iter_chunks(path, columns, chunk_rows=chunk_rows, text_columns=spec.text_columns):
        first_row, next_row = next_row, next_row + len(chunk)
        if next_row - 1 <= rows_done:
            continue  # committed by an earlier, interrupted run
        if first_row <= rows_done:
            chunk, first_row = chunk.iloc[rows_done - first_row + 1 :], rows_done + 1
        yield chunk, first_row, next_row - 1


def _write_chunk(
    store: Store, spec: KindSpec, job: _Job, batch: _Batch, file_name: str, staged: threading.Event
) -> None:
    """Store ``batch`` in one transaction; ``staged`` is set once only the commit is left."""
    try:
        with store.engine.begin() as conn:
            _commit_chunk(conn, spec, job, batch, file_name)
            staged.set()
    finally:
        staged.set()  # a failed write must not leave the caller waiting
    job.rows_done = batch.last_row


def _column_lists(rows: pd.DataFrame) -> list[list]:
    """``rows``' columns as Python lists for the DBAPI, in pseudonym order (key-ordered
    inserts keep B-tree writes local). Built on the caller's thread, off the writer's path;
    the writer zips them into one row tuple at a time."""
    order = np.argsort(rows["pseudonym"].to_numpy(dtype=str), kind="stable")
    lists = {c: rows[c].to_numpy()[order].tolist() for c in rows.columns}
    if "extras" in lists:
        lists["extras"] = [_db_value(v) for v in lists["extras"]]
    return list(lists.values())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _open_job(store: Store, *, sha: str, kind: str, name: str) -> _Job:
    f = ingested_files
    with store.engine.begin() as conn:
        row = conn.execute(
            select(f.c.id, f.c.rows_done, f.c.status).where(f.c.sha256 == sha, f.c.kind == kind)
        ).first()
        if row is not None:
            return _Job(row.id, row.rows_done, row.status)
        key = conn.execute(
            insert(f).values(
                sha256=sha,
                kind=kind,
                name=name[:255],
                status="running",
                rows_done=0,
                loaded=0,
                already_present=0,
                quarantined=0,
                started_at=_now(),
            )
        ).inserted_primary_key
        assert key is not None, "a single-row INSERT reports its primary key"
        new_id = key[0]
        return _Job(new_id, 0, "running")


def _db_value(v):
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"))
    return v


def _commit_chunk(conn: Connection, spec: KindSpec, job: _Job, batch: _Batch, file_name: str) -> None:
    rows = batch.result.rows
    cols = list(rows.columns) + ["ingest_id"]
    data = [*batch.columns, repeat(job.id)]  # zip stops at the shortest: the real columns
    if "recorded_at" in spec.table.c:  # the trajectory log notes where an event came from
        cols += ["source", "recorded_at"]
        data += [repeat("file"), repeat(_now().isoformat(sep=" "))]
    inserted = insert_ignore(conn, spec.table, cols, zip(*data))
    problems, already = batch.result.problems, 0
    if inserted < len(rows):
        dups, already = _classify_skipped(conn, spec, job.id, rows, inserted)
        problems = pd.concat([problems, dups], ignore_index=True)
    write_problems(conn, problems, ingest_id=job.id, file=file_name, kind=spec.kind)
    f = ingested_files
    conn.execute(
        update(f)
        .where(f.c.id == job.id)
        .values(
            rows_done=batch.last_row,
            loaded=f.c.loaded + inserted,
            already_present=f.c.already_present + already,
            quarantined=f.c.quarantined + len(problems),
        )
    )


def _classify_skipped(
    conn: Connection, spec: KindSpec, job_id: int, rows: pd.DataFrame, inserted: int
) -> tuple[pd.DataFrame, int]:
    """Rows the store skipped: duplicates within this file (quarantined) or rows an earlier
    file or the trajectory API already stored (counted, left alone).

    Raises:
        DataError: a row was neither inserted nor matched by a stored key (never expected;
            raised rather than losing the row silently).
    """
    key = list(spec.key)
    stored = fetch_by_pseudonyms(
        conn, spec.table, key + ["ingest_id", "ingest_row"], rows["pseudonym"].tolist()
    )
    for k in key:
        if k != "pseudonym":  # dates come back as date objects; ours are ISO text
            stored[k] = stored[k].map(lambda v: v.isoformat() if hasattr(v, "isoformat") else v)
    stored["found"] = True
    merged = rows[key + ["ingest_row"]].merge(
        stored, on=key, how="left", suffixes=("", "_stored"), validate="one_to_one"
    )
    found = merged["found"].eq(True).to_numpy()
    ours = merged["ingest_id"].eq(job_id).to_numpy()
    this_row = ours & merged["ingest_row_stored"].eq(merged["ingest_row"]).to_numpy()
    if int(this_row.sum()) != inserted or not found.all():
        raise DataError(
            f"store reported {inserted} inserted rows but {int(this_row.sum())} carry "
            f"this chunk's provenance and {int((~found).sum())} are missing; refusing "
            "to continue rather than lose rows"
        )
    dup = ~this_row & ours
    field_name, reason = duplicate_flag(spec)
    dups = pd.DataFrame(
        {
            "row": merged["ingest_row"].to_numpy()[dup],
            "field": field_name,
            "reason": reason,
            "detail": [f"same key as row {int(r)}" for r in merged["ingest_row_stored"].to_numpy()[dup]],
            "pseudonym": merged["pseudonym"].to_numpy()[dup],
        }
    )
    return dups, int((~this_row & ~ours).sum())


def _summary(store: Store, job_id: int, *, already: bool, seconds: float) -> IngestSummary:
    f = ingested_files
    with store.engine.connect() as conn:
        job = conn.execute(select(f).where(f.c.id == job_id)).mappings().one()
        by_reason = counts_by_reason(conn, job_id)
    return IngestSummary(
        file=job["name"],
        kind=job["kind"],
        sha256=job["sha256"],
        rows=job["rows_done"],
        loaded=job["loaded"],
        already_present=job["already_present"],
        quarantined=job["quarantined"],
        by_reason=by_reason,
        already_ingested=already,
        seconds=round(seconds, 3),
    )
