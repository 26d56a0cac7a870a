"""``ingest_file``: stream a file into the store; every row is loaded, skipped as already
stored, or quarantined with its reason — and the three counts add up to the rows read.

Each chunk commits in one transaction together with its quarantine rows and the file's
progress (``ingested_files.rows_done``), so a crash never leaves part of a chunk and a re-run
resumes after the last chunk that survived (what survives a power loss: ``node.store.engine``).
A file whose SHA-256 was fully ingested before is not read again.
One writer thread commits chunk k while the caller's thread validates chunk k+1.

A file loads whole or not at all. It is checked before its first row is stored (see
:mod:`node.ingest.readers`); an error found only mid-file (a malformed line, a corrupt
Parquet row group, a store that is full or refuses a value) rolls the file back: every row
and quarantine row this file's job stored is deleted (they all carry its ``ingest_id``),
the job is marked ``failed`` with the reason, and :class:`FileRefused` names file, line or
row group and what to do. A later run of the same file starts afresh. An *interruption*
(Ctrl-C, kill -9, a power loss) is not a file-level error: the job stays ``running`` and a
re-run resumes after the last committed chunk.

Corrections: a row whose natural key is already stored (by another file or the API) and whose
values are the same is counted ``already stored``; one whose values differ is refused into
the quarantine with reason :data:`CONFLICTS_WITH_STORED` (field: the first that differs). The
stored row is never changed and the correction never dropped silently. A corrected *file*
replaces the old one whole: ``replace=True`` (or :func:`undo_file` first) removes every row the
earlier ingest of that file stored, then loads it; the privacy ledger is never refunded.

A mapping file (:mod:`node.ingest.mapping`) converts a site's own extract chunk by chunk before
validation. ``dry_run=True`` runs the same reading, conversion and validation and writes
nothing. The quarantine gate (:func:`gate`) rejects a file with too many quarantined rows after
it loaded: its rows are removed again, its quarantine kept for the viewer.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import gzip
import json
import logging
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from node.ingest.mapping import ExtractMapping, apply_mapping
from node.ingest.quarantine import counts_by_reason, write_problems
from node.ingest.readers import (
    BLOCK,
    check_columns,
    file_format,
    iter_chunks,
    plan_columns,
    preflight,
    read_header,
    sniff,
)
from node.ingest.schema import ID_FIELD, KindSpec, spec_for
from node.ingest.validate import (
    BAD_DATE,
    CONFLICTS_WITH_STORED,
    WRONG_TYPE,
    ChunkResult,
    Pseudonymize,
    duplicate_flag,
    validate_chunk,
)
from node.store import Store, fetch_by_pseudonyms, insert_ignore
from node.store.models import ingested_files, quarantine
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
    #: the file's columns no field reads and the mapping does not ``ignore`` (names only)
    unmapped_columns: list[str] = field(default_factory=list)
    #: rows kept with a change (the node's site id, a missing value kept): counts by note
    notes: dict[str, int] = field(default_factory=dict)
    #: ``--dry-run``: nothing was written; ``loaded``/``quarantined`` say what would be
    dry_run: bool = False
    #: why the quarantine gate refused the file (its loaded rows were removed), else None
    rejected: str | None = None
    #: ids of earlier ingests of this file undone by ``replace``
    replaced: list[int] = field(default_factory=list)
    #: ``"field: reason"`` -> quarantined data-row numbers (dry run; never values)
    problem_rows: dict[str, list[int]] = field(default_factory=dict)
    #: the file's id in ``ingested_files`` (for ``rehealth node quarantine show`` / undo)
    file_id: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class FileRefused(DataError):
    """A file-level error: the file was refused whole (nothing of it stays stored).

    ``rows_read``: data rows read before the error; ``rolled_back``: rows (stored and
    quarantined) this file had committed and that were removed; ``status``: the job's state
    afterwards (``failed``; ``running`` if the roll-back itself failed, and a re-run resumes).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str,
        kind: str,
        rows_read: int,
        rolled_back: int = 0,
        status: str = "failed",
        row: int | None = None,
        field: str | None = None,
    ):
        super().__init__(message, row=row, field=field)
        self.file, self.kind, self.rows_read = file, kind, rows_read
        self.rolled_back, self.status = rolled_back, status

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "kind": self.kind,
            "status": self.status,
            "error": str(self),
            "rows_read": self.rows_read,
            "loaded": 0 if self.status == "failed" else None,
            "rolled_back": self.rolled_back,
            "refused_whole_file": self.status == "failed",
        }


@dataclass
class _Job:
    id: int
    rows_done: int
    status: str


@dataclass
class _Progress:
    """Data rows read so far (the caller's thread) — for the summary of a refused file."""

    read: int = 0


class _WriteFailed(Exception):
    """A chunk's transaction failed; ``__cause__`` is the store's error."""

    def __init__(self, first_row: int, last_row: int):
        super().__init__(f"storing data rows {first_row}..{last_row} failed")
        self.first_row, self.last_row = first_row, last_row


@dataclass(frozen=True)
class _Batch:
    """A validated chunk ready for the writer: ``columns`` holds the valid rows' columns as
    Python lists (see :func:`_column_lists`); ``last_row`` is the chunk's last data row."""

    result: ChunkResult
    columns: list[list]
    first_row: int
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
    extract: ExtractMapping | None = None,
    missing_ok: frozenset[str] = frozenset(),
    dry_run: bool = False,
    max_quarantine: float | None = None,
    replace: bool = False,
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
        extract: a mapping file (:mod:`node.ingest.mapping`): columns, codes, units, dates,
            delimiter, decimal comma, encoding. Not together with ``mapping``.
        missing_ok: persons number fields kept as missing when blank (the node config's
            ``indicator`` policy) instead of quarantining the row.
        dry_run: validate and count only; nothing is written (not even the file's job).
        max_quarantine: the quarantine gate, a fraction of the rows (0.05 = 5 %). Beyond it,
            and always when no row loads, the file is rejected: its loaded rows are removed,
            its quarantine rows kept for the viewer, the job marked ``failed``
            (``summary.rejected`` says why).
        replace: undo earlier ingests of this file (same name or same bytes, same kind) before
            loading it: how a corrected file, or the same file with a corrected mapping, is
            re-ingested. Releases already made from the old rows stay charged in the ledger.

    Returns:
        The :class:`IngestSummary`.

    Raises:
        DataError: the file is missing, of an unknown type, lacks a required column or
            repeats one, or fails a check before its first row is stored (empty, not UTF-8,
            a NUL byte, not CSV, a cut-off gzip stream or Parquet file): nothing was stored.
        FileRefused: a file-level error found mid-file (a malformed line, a corrupt Parquet
            row group, a write the store refused): the file was rolled back. Bad *rows*
            never raise: they are quarantined.
    """
    t0 = time.perf_counter()
    path = Path(path)
    spec = spec_for(kind)
    if not path.is_file():
        raise DataError(f"input file {path} not found")
    if extract is not None and mapping:
        raise DataError("give the column mapping either as --map flags or in a mapping file, not both")
    if max_quarantine is not None and not 0 <= max_quarantine <= 1:
        raise DataError("the quarantine limit must be a fraction in [0, 1] (e.g. 0.05 or 5%)")
    if extract is not None:
        extract.check(spec)
    ignore = set(extract.ignore) if extract else set()
    plan = _Plan(
        spec=spec,
        extract=extract,
        missing_ok=missing_ok if spec.kind == "persons" else frozenset(),
        delimiter=extract.delimiter if extract else None,
        site_id=site_id,
        pseudonymize=pseudonymize,
        time_zone=time_zone,
        chunk_rows=chunk_rows,
    )
    with _utf8(path, extract) as src:
        sniff(src)  # the first block: empty, a workbook or archive, UTF-16 — before the header
        header = read_header(src, delimiter=plan.delimiter)
        columns = plan_columns(header, spec, dict(extract.columns) if extract else (mapping or {}))
        check_columns(src, columns)
        # a kind's ``ignored`` columns (the flat cohort's site, index_date) are expected there
        unmapped = [c for c in header if c.strip() and c not in columns and c not in ignore | spec.ignored]
        if unmapped:  # names only, never silently dropped
            log.info("%s: column(s) not read: %s", path.name, ", ".join(unmapped))
        extras = [c for c in columns.values() if c not in {f.name for f in spec.fields}]
        if extras:  # names only: an operator should see every column that will be stored
            log.info("%s: storing extra numeric column(s) %s", path.name, ", ".join(extras))
        sha = preflight(src)  # every byte, in the pass that hashes the file
        if dry_run:
            return _dry_run(store, src, plan, columns, sha=sha, unmapped=unmapped, t0=t0)
        replaced = _undo_earlier(store, spec.kind, name=path.name, sha=sha) if replace else []
        job = _open_job(store, sha=sha, kind=spec.kind, name=path.name)
        if job.status == "done":
            log.info("%s (%s) was ingested before (sha256 %s…): nothing to do", path.name, kind, sha[:12])
            return _summary(store, job.id, already=True, seconds=time.perf_counter() - t0, unmapped=unmapped)
        if job.rows_done:
            log.info("resuming %s after data row %d", path.name, job.rows_done)
        progress = _Progress(read=job.rows_done)
        try:
            notes = _load(store, src, plan, job, columns, progress)
        except Exception as e:  # noqa: BLE001 - any failure but an interruption rolls the file back
            refused = _roll_back(store, path, spec, job, progress, e)
            if refused is None:  # a bug, not the file's fault: its traceback (never locals) is needed
                if isinstance(e, _WriteFailed) and e.__cause__ is not None:
                    raise e.__cause__  # noqa: B904 - the bug itself, raised on the writer thread
                raise
            raise refused from None
    with store.engine.begin() as conn:
        conn.execute(
            update(ingested_files)
            .where(ingested_files.c.id == job.id)
            .values(status="done", finished_at=_now())
        )
    summary = _summary(
        store,
        job.id,
        already=False,
        seconds=time.perf_counter() - t0,
        unmapped=unmapped,
        notes=notes,
        replaced=replaced,
    )
    rejected = gate(summary, max_quarantine)
    if rejected is not None:
        _reject(store, spec, job.id, rejected)
        log.info("%s: rejected by the quarantine gate: %s", path.name, rejected)
        return _replace_summary(summary, rejected=rejected)
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


@dataclass(frozen=True)
class _Plan:
    """How a file's chunks are read, converted and validated (the same for load and dry run)."""

    spec: KindSpec
    extract: ExtractMapping | None
    missing_ok: frozenset[str]
    delimiter: str | None
    site_id: str
    pseudonymize: Pseudonymize
    time_zone: str
    chunk_rows: int

    def chunks(
        self, path: Path, columns: Mapping[str, str], *, rows_done: int = 0
    ) -> Iterator[tuple[pd.DataFrame, int, int]]:
        text = self.spec.text_columns
        if self.extract is not None:
            text |= self.extract.text_columns(self.spec)
        for chunk, first_row, last_row in _pending_chunks(
            path,
            columns,
            self.spec,
            chunk_rows=self.chunk_rows,
            rows_done=rows_done,
            text_columns=text,
            delimiter=self.delimiter,
        ):
            _check_text(path, self.spec, chunk, first_row)
            if self.extract is not None:
                chunk = apply_mapping(chunk, self.spec, self.extract)
            yield chunk, first_row, last_row

    def validate(self, chunk: pd.DataFrame, first_row: int) -> ChunkResult:
        result = validate_chunk(
            chunk,
            self.spec,
            first_row=first_row,
            site_id=self.site_id,
            pseudonymize=self.pseudonymize,
            time_zone=self.time_zone,
            missing_ok=self.missing_ok,
        )
        if self.extract is None or result.problems.empty:
            return result
        return ChunkResult(
            result.rows, describe_in_mapping_terms(result.problems, self.extract), result.notes
        )


def describe_in_mapping_terms(problems: pd.DataFrame, extract: ExtractMapping) -> pd.DataFrame:
    """Details in the file's own terms: a bad date against the mapping's date format, a wrong
    type against the mapping's codes (the codes are the mapping's, never a row's value)."""
    p = problems.copy()
    if extract.date_format:
        bad_date = (p["reason"] == BAD_DATE).to_numpy() & p["detail"].astype(str).str.contains(
            "YYYY-MM-DD"
        ).to_numpy()
        fmt = extract.date_format.replace("%d", "dd").replace("%m", "mm").replace("%Y", "yyyy")
        p.loc[bad_date, "detail"] = p.loc[bad_date, "field"] + f" is not a date {fmt} in 1900..2100"
    for name, codes in extract.codes.items():
        wrong = ((p["reason"] == WRONG_TYPE) & (p["field"] == name)).to_numpy()
        p.loc[wrong, "detail"] = (
            f"{name} is none of the mapping's codes ({', '.join(codes)}) and not a number"
        )
    return p


def gate(summary: IngestSummary, max_quarantine: float | None) -> str | None:
    """Why the quarantine gate refuses ``summary``'s file, or None: more than
    ``max_quarantine`` of its rows quarantined, or (always) rows read and none of them kept."""
    if summary.rows and summary.loaded + summary.already_present == 0:
        return f"every row ({summary.rows:,}) was quarantined"
    if max_quarantine is not None and summary.quarantined > max_quarantine * summary.rows:
        return (
            f"{summary.quarantined:,} of {summary.rows:,} rows quarantined "
            f"({summary.quarantined / summary.rows:.1%}), more than the limit of {max_quarantine:.1%}"
        )
    return None


def _replace_summary(summary: IngestSummary, **changes) -> IngestSummary:
    return IngestSummary(**{**asdict(summary), **changes})


def _load(
    store: Store,
    path: Path,
    plan: _Plan,
    job: _Job,
    columns: Mapping[str, str],
    progress: _Progress,
) -> dict[str, int]:
    """Validate and store the chunks after ``job.rows_done``, one transaction per chunk;
    returns the chunks' notes, summed."""
    spec = plan.spec
    notes: Counter[str] = Counter()
    chunks = plan.chunks(path, columns, rows_done=job.rows_done)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer") as writer:
        # Validate chunk k+1 while chunk k commits, which SQLite does without the GIL. Not
        # while chunk k's rows are inserted: the driver takes the GIL back for every row, so
        # the two threads would hand it over row by row, each far slower than alone.
        # At most two chunks are in memory.
        writing: Future | None = None
        for chunk, first_row, last_row in chunks:
            progress.read = last_row
            result = plan.validate(chunk, first_row)
            notes.update(result.notes)
            del chunk
            batch = _Batch(result, _column_lists(result.rows), first_row, last_row)
            if writing is not None:
                writing.result()  # re-raises a failed write before anything else is queued
            staged = threading.Event()
            writing = writer.submit(_write_chunk, store, spec, job, batch, path.name, staged)
            staged.wait()
        if writing is not None:
            writing.result()
    return dict(notes)


def _check_text(path: Path, spec: KindSpec, chunk: pd.DataFrame, first_row: int) -> None:
    """A stored text field must not hold a NUL character: PostgreSQL refuses it and SQLite
    would keep it, so the file is refused on both. (A CSV file's NUL bytes are refused by
    :func:`node.ingest.readers.preflight`; this catches Parquet strings.)"""
    for f in spec.fields:
        if f.type != "text" or f.name not in chunk.columns:
            continue
        col = chunk[f.name]
        if not (col.dtype == object or pd.api.types.is_string_dtype(col.dtype)):
            continue
        has_nul = col.str.contains("\x00", regex=False, na=False).to_numpy(dtype=bool)
        if has_nul.any():
            row = first_row + int(np.argmax(has_nul))
            raise DataError(
                f"{path.name}: data row {row}, column {f.name}: the text holds a NUL character "
                "(0x00), which the store cannot keep: remove it from the file and run the command again",
                row=row,
                field=f.name,
            )


def _pending_chunks(
    path: Path,
    columns: Mapping[str, str],
    spec: KindSpec,
    *,
    chunk_rows: int,
    rows_done: int,
    text_columns: frozenset[str],
    delimiter: str | None,
) -> Iterator[tuple[pd.DataFrame, int, int]]:
    """``(chunk, first_row, last_row)`` for the data rows after ``rows_done`` (a resume)."""
    next_row = 1
    for chunk in iter_chunks(
        path, columns, chunk_rows=chunk_rows, text_columns=text_columns, delimiter=delimiter
    ):
        first_row, next_row = next_row, next_row + len(chunk)
        if next_row - 1 <= rows_done:
            continue  # committed by an earlier, interrupted run
        if first_row <= rows_done:
            chunk, first_row = chunk.iloc[rows_done - first_row + 1 :], rows_done + 1
        yield chunk, first_row, next_row - 1


def _write_chunk(
    store: Store, spec: KindSpec, job: _Job, batch: _Batch, file_name: str, staged: threading.Event
) -> None:
    """Store ``batch`` in one transaction; ``staged`` is set once only the commit is left.

    Raises:
        _WriteFailed: the transaction failed (rolled back); its cause is the store's error.
    """
    try:
        with store.engine.begin() as conn:
            _commit_chunk(conn, spec, job, batch, file_name)
            staged.set()
    except DataError:
        raise
    except Exception as e:
        raise _WriteFailed(batch.first_row, batch.last_row) from e
    finally:
        staged.set()  # a failed write must not leave the caller waiting
    job.rows_done = batch.last_row


def _roll_back(
    store: Store, path: Path, spec: KindSpec, job: _Job, progress: _Progress, error: Exception
) -> FileRefused | None:
    """Remove everything ``job`` stored, mark it ``failed`` with the reason, and return the
    :class:`FileRefused` to raise — or None when ``error`` is a bug (the job is still rolled
    back and marked failed; the caller re-raises ``error`` with its traceback)."""
    message, bug = _reason(path, store, error)
    if isinstance(error, _WriteFailed):  # the reader may be a chunk ahead of the writer
        progress.read = min(progress.read, error.last_row)
    row = error.row if isinstance(error, DataError) else None
    field_name = error.field if isinstance(error, DataError) else None
    refused = f"{message}; the whole file was refused (nothing of it is stored)"
    f = ingested_files
    try:
        with store.engine.begin() as conn:
            removed = conn.execute(delete(spec.table).where(spec.table.c.ingest_id == job.id)).rowcount
            removed += conn.execute(delete(quarantine).where(quarantine.c.ingest_id == job.id)).rowcount
            conn.execute(
                update(f)
                .where(f.c.id == job.id)
                .values(
                    status="failed",
                    rows_done=0,
                    loaded=0,
                    already_present=0,
                    quarantined=0,
                    finished_at=_now(),
                    error=refused[:255],
                )
            )
    except Exception as e:  # noqa: BLE001 - the store itself is failing: say so, keep the job resumable
        # info, not error: the CLI prints the one error line (a handler-less logger would add one)
        log.info("%s: the roll-back failed too (%s)", path.name, store_error_text(e))
        message = (
            f"{message}. The rows this file stored before the error could not be removed "
            f"({store_error_text(e)}): once the cause is fixed, run the same command again; "
            f"it resumes after data row {job.rows_done}"
        )
        return (
            None
            if bug
            else FileRefused(
                message, file=path.name, kind=spec.kind, rows_read=progress.read, status="running", row=row
            )
        )
    log.info("%s: refused, %d stored row(s) of it rolled back: %s", path.name, removed, message)
    if bug:
        return None
    return FileRefused(
        refused,
        file=path.name,
        kind=spec.kind,
        rows_read=progress.read,
        rolled_back=removed,
        row=row,
        field=field_name,
    )


def _reason(path: Path, store: Store, error: Exception) -> tuple[str, bool]:
    """``(one-line reason, is_bug)`` of a failed load; never a row's value."""
    if isinstance(error, DataError):
        return str(error), False
    if isinstance(error, _WriteFailed):
        cause = error.__cause__
        dbapi_error = getattr(store.engine.dialect.dbapi, "Error", ())
        if isinstance(cause, (SQLAlchemyError, OSError, dbapi_error)):
            text = store_error_text(cause)
            full = "full" in text.lower() or "no space" in text.lower()
            todo = (
                "free space on the store's disk (or raise its quota), then run the command again"
                if full
                else "fix the store, then run the command again"
            )
            return (
                f"{path.name}: the store refused data rows {error.first_row}..{error.last_row} "
                f"({text}): {todo}",
                False,
            )
        return (
            f"{path.name}: internal error while storing data rows {error.first_row}..{error.last_row}",
            True,
        )
    return f"{path.name}: internal error while loading ({type(error).__name__})", True


#: PostgreSQL error classes (SQLSTATE) whose server message may quote a value: named by code.
_PG_STATES = {
    "53100": "PostgreSQL: disk full",
    "53200": "PostgreSQL: out of memory",
    "22021": "PostgreSQL: a character not valid in the database encoding (a NUL byte?)",
    "22P05": "PostgreSQL: a character that cannot be converted to the database encoding",
    "22001": "PostgreSQL: a value too long for its column",
    "57014": "PostgreSQL: the statement was cancelled",
}


def store_error_text(e: BaseException) -> str:
    """What the store said, without a value: SQLite's messages are fixed texts naming tables
    and columns; PostgreSQL's may quote a value, so only its SQLSTATE is shown."""
    orig = getattr(e, "orig", None)
    if isinstance(orig, BaseException):
        e = orig
    pgcode = getattr(e, "pgcode", None)
    if pgcode:
        return _PG_STATES.get(pgcode, f"PostgreSQL error SQLSTATE {pgcode}")
    if type(e).__module__.startswith("psycopg2"):
        return f"PostgreSQL: {type(e).__name__}"
    if isinstance(e, OSError):
        return f"{e.strerror or type(e).__name__}"
    if type(e).__module__ == "sqlite3":
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"SQLite: {first}"
    return type(e).__name__


def _column_lists(rows: pd.DataFrame) -> list[list]:
    """``rows``' columns as Python lists for the DBAPI, in pseudonym order (key-ordered
    inserts keep B-tree writes local). Built on the caller's thread, off the writer's path;
    the writer zips them into one row tuple at a time."""
    order = np.argsort(rows["pseudonym"].to_numpy(dtype=str), kind="stable")
    lists = {c: _nulls(rows[c].to_numpy()[order]) for c in rows.columns}
    if "extras" in lists:
        lists["extras"] = [_db_value(v) for v in lists["extras"]]
    return list(lists.values())


def _nulls(v: np.ndarray) -> list:
    """A column as a Python list, NaN as None: a missing feature kept by the ``indicator``
    policy must reach PostgreSQL as NULL, not as the float NaN."""
    out = v.tolist()
    if v.dtype.kind == "f" and np.isnan(v).any():
        out = [None if x != x else x for x in out]
    return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _open_job(store: Store, *, sha: str, kind: str, name: str) -> _Job:
    f = ingested_files
    with store.engine.begin() as conn:
        row = conn.execute(
            select(f.c.id, f.c.rows_done, f.c.status).where(f.c.sha256 == sha, f.c.kind == kind)
        ).first()
        if row is not None and row.status in ("failed", "undone"):  # refused, rejected or undone: afresh
            conn.execute(delete(quarantine).where(quarantine.c.ingest_id == row.id))
            conn.execute(
                update(f)
                .where(f.c.id == row.id)
                .values(
                    status="running",
                    name=name[:255],
                    rows_done=0,
                    loaded=0,
                    already_present=0,
                    quarantined=0,
                    started_at=_now(),
                    finished_at=None,
                    error=None,
                )
            )
            return _Job(row.id, 0, "running")
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
    """Rows the store skipped: duplicates within this file (quarantined), rows an earlier
    file or the trajectory API already stored with the same values (counted, left alone), and
    rows whose key is stored with *other* values (corrections: quarantined as
    :data:`CONFLICTS_WITH_STORED`, the stored row unchanged).

    Raises:
        DataError: a row was neither inserted nor matched by a stored key (never expected;
            raised rather than losing the row silently).
    """
    key = list(spec.key)
    values = _compared_columns(spec, rows)
    stored = fetch_by_pseudonyms(
        conn, spec.table, key + ["ingest_id", "ingest_row"] + values, rows["pseudonym"].tolist()
    )
    for k in key:
        if k != "pseudonym":  # dates come back as date objects; ours are ISO text
            stored[k] = stored[k].map(_iso_or_self)
    stored["found"] = True
    merged = rows[key + ["ingest_row"] + values].merge(
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
    other = ~this_row & ~ours
    conflicts = _conflicts(conn, spec, merged[other], values)
    return pd.concat([dups, conflicts], ignore_index=True), int(other.sum()) - len(conflicts)


#: Stored columns that are not the row's values (provenance, surrogate keys, derived).
_NOT_COMPARED = frozenset({"id", "ingest_id", "ingest_row", "source", "recorded_at", "age_band"})


def _compared_columns(spec: KindSpec, rows: pd.DataFrame) -> list[str]:
    """The value columns a correction is judged on, in the file's field order (so the first
    differing one is the one an operator reads first); ``extras`` last."""
    names = [f.name for f in spec.fields if f.name != ID_FIELD] + ["extras"]
    return [n for n in names if n in rows.columns and n not in spec.key and n not in _NOT_COMPARED]


def _iso_or_self(v):
    return v.isoformat() if hasattr(v, "isoformat") else v


def _same(ours: np.ndarray, stored: np.ndarray, kind: str) -> np.ndarray:
    """Element-wise equality of a column (``kind``: number, date or text); two missing values
    are equal (NaN, NaT and None alike). Vectorised: a re-exported file of stored people
    compares every row."""
    if kind == "number":
        a = pd.to_numeric(pd.Series(ours, dtype=object), errors="coerce").to_numpy(dtype=float)
        b = pd.to_numeric(pd.Series(stored, dtype=object), errors="coerce").to_numpy(dtype=float)
        return (a == b) | (np.isnan(a) & np.isnan(b))
    if kind == "date":  # ours: ISO text; stored: date objects (or ISO text on SQLite raw reads)
        da = pd.to_datetime(pd.Series(ours, dtype=object), errors="coerce").to_numpy()
        db = pd.to_datetime(pd.Series(stored, dtype=object), errors="coerce").to_numpy()
        return (da == db) | (np.isnat(da) & np.isnat(db))
    sa, sb = pd.Series(ours, dtype=object), pd.Series(stored, dtype=object)
    miss_a, miss_b = sa.isna().to_numpy(), sb.isna().to_numpy()
    equal = sa.to_numpy(dtype=object) == sb.to_numpy(dtype=object)
    return (miss_a & miss_b) | (equal & ~miss_a & ~miss_b)


def _conflicts(conn: Connection, spec: KindSpec, skipped: pd.DataFrame, values: list[str]) -> pd.DataFrame:
    """Quarantine rows for skipped rows whose values differ from the stored row's. The
    detail names the differing fields' count and where the stored row came from, never a
    value; ``field`` is the first differing field (an extra's own name for ``extras``)."""
    n = len(skipped)
    first = np.full(n, None, dtype=object)
    differ = np.zeros(n, dtype=int)
    kinds = {
        f.name: "number" if f.type in ("number", "binary") else "date" if f.type == "date" else "text"
        for f in spec.fields
    }
    for name in values:
        ours, theirs = skipped[name].to_numpy(dtype=object), skipped[f"{name}_stored"].to_numpy(dtype=object)
        if name == "extras":
            theirs = np.array([json.loads(v) if isinstance(v, str) else v for v in theirs], dtype=object)
            ours = np.array([json.loads(v) if isinstance(v, str) else v for v in ours], dtype=object)
            same = np.array([x == y for x, y in zip(ours, theirs)], dtype=bool)
            labels = np.array([_first_extra(x, y) for x, y in zip(ours, theirs)], dtype=object)
        else:
            same = _same(ours, theirs, kinds[name])
            labels = np.full(n, name, dtype=object)
        new = ~same & (differ == 0)
        first[new] = labels[new]
        differ += ~same
    bad = differ > 0
    if not bad.any():
        return pd.DataFrame(columns=["row", "field", "reason", "detail", "pseudonym"])
    ids = sorted({int(i) for i in skipped["ingest_id"].to_numpy()[bad] if pd.notna(i)})
    names = (
        dict(
            conn.execute(
                select(ingested_files.c.id, ingested_files.c.name).where(ingested_files.c.id.in_(ids))
            ).all()
        )
        if ids
        else {}
    )

    def source(ingest_id, ingest_row) -> str:
        if pd.isna(ingest_id):
            return "added through the CLI or API"
        return f"from {names.get(int(ingest_id), 'an earlier file')} row {int(ingest_row)}"

    detail = [
        f"differs from the stored row ({source(i, r)}) in {int(k)} field(s); corrections are not applied"
        for i, r, k in zip(
            skipped["ingest_id"].to_numpy()[bad], skipped["ingest_row_stored"].to_numpy()[bad], differ[bad]
        )
    ]
    return pd.DataFrame(
        {
            "row": skipped["ingest_row"].to_numpy()[bad],
            "field": first[bad],
            "reason": CONFLICTS_WITH_STORED,
            "detail": detail,
            "pseudonym": skipped["pseudonym"].to_numpy()[bad],
        }
    )


def _first_extra(ours: dict | None, theirs: dict | None) -> str:
    """The first (file-order) extra column whose value differs, or is in one row only."""
    ours, theirs = ours or {}, theirs or {}
    for k in [*ours, *(k for k in theirs if k not in ours)]:
        if ours.get(k) != theirs.get(k):
            return str(k)[:64]
    return "extras"


def _summary(
    store: Store,
    job_id: int,
    *,
    already: bool,
    seconds: float,
    unmapped: Sequence[str] = (),
    notes: Mapping[str, int] | None = None,
    replaced: Sequence[int] = (),
) -> IngestSummary:
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
        unmapped_columns=list(unmapped),
        notes=dict(notes or {}),
        replaced=list(replaced),
        file_id=job_id,
    )


# --- text encodings ------------------------------------------------------------------------


@contextlib.contextmanager
def _utf8(path: Path, extract: ExtractMapping | None) -> Iterator[Path]:
    """``path`` itself, or a UTF-8 copy of it under the same name when the mapping names
    another encoding (a Windows-1252 export). The copy sits in a private temporary folder
    (mode 0700) on this machine and is removed afterwards; the file's identity (SHA-256) is
    then that of the UTF-8 text, the same for every run.

    Raises:
        DataError: a byte is not valid in the named encoding (offset given, never the byte).
    """
    if extract is None or extract.utf8 or file_format(path) != "csv":
        yield path
        return
    gz = path.name.lower().endswith(".gz")
    with tempfile.TemporaryDirectory(prefix="rehealth-ingest-") as tmp:
        out = Path(tmp) / path.name
        decoder = codecs.getincrementaldecoder(extract.encoding)("strict")
        offset = 0
        with (
            gzip.open(path, "rb") if gz else open(path, "rb") as src,
            gzip.open(out, "wb") if gz else open(out, "wb") as dst,
        ):
            while block := src.read(BLOCK):
                try:
                    dst.write(decoder.decode(block).encode("utf-8"))
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path.name}: byte {offset + e.start} is not valid {extract.encoding}: "
                        "check the mapping file's encoding; no row was stored"
                    ) from None
                offset += len(block)
            dst.write(decoder.decode(b"", final=True).encode("utf-8"))
        yield out


# --- dry run -------------------------------------------------------------------------------

#: Row numbers listed per (field, reason) in a dry run's summary (the counts are complete).
MAX_LISTED_ROWS = 1000


def _dry_run(
    store: Store,
    path: Path,
    plan: _Plan,
    columns: Mapping[str, str],
    *,
    sha: str,
    unmapped: Sequence[str],
    t0: float,
) -> IngestSummary:
    """What ingesting would do, written nowhere: rows that would load, rows whose key is
    already stored (loaded as ``already stored`` if equal, quarantined as conflicts if not),
    and the quarantine by field and reason with row numbers."""
    spec = plan.spec
    key = list(spec.key)
    seen: set[tuple] = set()
    rows = valid = stored_keys = 0
    notes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    listed: dict[str, list[int]] = {}

    def note_problems(frame: pd.DataFrame) -> None:
        for r in frame.itertuples(index=False):
            reasons[r.reason] += 1
            where = listed.setdefault(f"{r.field}: {r.reason}", [])
            if len(where) < MAX_LISTED_ROWS:
                where.append(int(r.row))

    with store.engine.connect() as conn:
        f = ingested_files
        done = conn.execute(
            select(f.c.id).where(f.c.sha256 == sha, f.c.kind == spec.kind, f.c.status == "done")
        ).first()
        for chunk, _first, last in plan.chunks(path, columns):
            rows = last
            result = plan.validate(chunk, _first)
            notes.update(result.notes)
            note_problems(result.problems)
            ok = result.rows
            keys = [tuple(_iso_or_self(v) for v in k) for k in ok[key].itertuples(index=False, name=None)]
            dup = np.array([k in seen for k in keys], dtype=bool)
            seen.update(keys)
            if dup.any():  # a repeat of a key from an earlier chunk: the store would refuse it
                field_name, reason = duplicate_flag(spec)
                rows_dup = ok["ingest_row"].to_numpy()[dup]
                note_problems(pd.DataFrame({"row": rows_dup, "field": field_name, "reason": reason}))
            ok = ok[~dup]
            valid += len(ok)
            if len(ok):
                have = fetch_by_pseudonyms(conn, spec.table, key, ok["pseudonym"].tolist())
                for k in key[1:]:
                    have[k] = have[k].map(_iso_or_self)
                stored_keys += len(ok[key].merge(have.drop_duplicates(), on=key, how="inner"))
    return IngestSummary(
        file=path.name,
        kind=spec.kind,
        sha256=sha,
        rows=rows,
        loaded=valid - stored_keys,
        already_present=stored_keys,
        quarantined=sum(reasons.values()),
        by_reason=dict(sorted(reasons.items())),
        already_ingested=done is not None,
        seconds=round(time.perf_counter() - t0, 3),
        unmapped_columns=list(unmapped),
        notes=dict(notes),
        dry_run=True,
        problem_rows=dict(sorted(listed.items())),
        file_id=done.id if done is not None else None,
    )


# --- undo, replace and the gate ------------------------------------------------------------


@dataclass(frozen=True)
class UndoSummary:
    """What undoing one ingested file removed."""

    file_id: int
    file: str
    kind: str
    rows_removed: int
    quarantine_removed: int

    def to_dict(self) -> dict:
        return asdict(self)


def undo_file(store: Store, file_id: int) -> UndoSummary:
    """Remove every row one ingested file stored, and its quarantine rows, in one transaction;
    the file is marked ``undone`` and can be ingested again.

    Rows the file found *already stored* (from another file or the API) are not its own and
    stay. The privacy ledger is a separate database and is not touched: releases already made
    from these rows stay charged (a refund would let an analyst spend the budget twice on the
    same people).

    Raises:
        DataError: no such file id, or its ingest is still running or interrupted (finish it
            by running the same ingest again, then undo).
    """
    f = ingested_files
    with store.engine.begin() as conn:
        job = conn.execute(select(f).where(f.c.id == file_id)).mappings().first()
        if job is None:
            raise DataError(f"no ingested file with id {file_id} (see: rehealth node quarantine list)")
        if job["status"] == "running":
            raise DataError(
                f"file {file_id} ({job['name']}) is still running or was interrupted: run the same "
                "ingest again to finish it, then undo it"
            )
        table = spec_for(job["kind"]).table
        removed = conn.execute(delete(table).where(table.c.ingest_id == file_id)).rowcount
        q_removed = conn.execute(delete(quarantine).where(quarantine.c.ingest_id == file_id)).rowcount
        conn.execute(
            update(f)
            .where(f.c.id == file_id)
            .values(
                status="undone",
                rows_done=0,
                loaded=0,
                already_present=0,
                quarantined=0,
                finished_at=_now(),
                error="undone",
            )
        )
    log.info("undid %s (%s, id %d): %d row(s) removed", job["name"], job["kind"], file_id, removed)
    return UndoSummary(file_id, job["name"], job["kind"], int(removed), int(q_removed))


def _undo_earlier(store: Store, kind: str, *, name: str, sha: str) -> list[int]:
    """Undo every finished ingest of ``kind`` with this file name or these bytes."""
    f = ingested_files
    with store.engine.connect() as conn:
        ids = [
            int(i)
            for i in conn.execute(
                select(f.c.id)
                .where(f.c.kind == kind, f.c.status.in_(("done", "failed")))
                .where((f.c.name == name[:255]) | (f.c.sha256 == sha))
                .order_by(f.c.id)
            ).scalars()
        ]
    for i in ids:
        undo_file(store, i)
    return ids


def _reject(store: Store, spec: KindSpec, job_id: int, why: str) -> None:
    """The gate refused the file: its loaded rows go, its quarantine rows stay (for the
    viewer), the job is ``failed`` with the reason (a re-run starts afresh)."""
    f = ingested_files
    with store.engine.begin() as conn:
        conn.execute(delete(spec.table).where(spec.table.c.ingest_id == job_id))
        conn.execute(
            update(f)
            .where(f.c.id == job_id)
            .values(status="failed", loaded=0, finished_at=_now(), error=f"rejected: {why}"[:255])
        )
