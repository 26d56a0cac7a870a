"""Opening the store and the one write path ingestion needs: a bulk insert that skips rows
whose natural key is already stored, and says how many it inserted.

``INSERT … ON CONFLICT DO NOTHING`` on SQLite (≥ 3.24) and PostgreSQL alike.
Unlike ``INSERT OR IGNORE`` it skips only key conflicts: a NOT NULL violation still raises,
so a row can never vanish silently. Bulk rows go through the DBAPI directly (SQLAlchemy's
per-row parameter processing would cost more than the whole validation), which is why dates
arrive here as ISO strings — the storage format SQLAlchemy's ``Date`` uses on SQLite.
"""

from __future__ import annotations

import csv
import datetime as dt
import errno
import io
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Engine, Table, create_engine, delete, event, func, inspect, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from node.files import create_private_file
from node.store import models
from node.store.schema import migrate
from shared.errors import DataError, ReHealthError, SpecError
from shared.features import FEATURE_NAMES
from shared.study import StudySpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Store:
    """A node store: an engine whose tables exist (see :mod:`node.store.models`)."""

    engine: Engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def counts(self) -> dict[str, int]:
        """Row count of every table."""
        with self.engine.connect() as conn:
            return {
                t.name: conn.scalar(select(func.count()).select_from(t)) or 0
                for t in models.metadata.sorted_tables
            }

    def meta(self) -> dict[str, str]:
        """The store's own facts (``store_meta``): key fingerprint, pseudonym site id."""
        m = models.store_meta
        with self.engine.connect() as conn:
            return {r.name: r.value for r in conn.execute(select(m.c.name, m.c.value))}

    def set_meta(self, values: Mapping[str, str], *, conn: Connection | None = None) -> None:
        """Write ``values`` into ``store_meta`` (in ``conn``'s transaction if given)."""
        if conn is None:
            with self.engine.begin() as own:
                return self.set_meta(values, conn=own)
        m = models.store_meta
        now = dt.datetime.now(dt.timezone.utc)
        # an upsert: two first starts that record the same facts at once must not collide
        ins = (sqlite_insert if conn.dialect.name == "sqlite" else pg_insert)(m)
        conn.execute(
            ins.on_conflict_do_update(
                index_elements=[m.c.name], set_={"value": ins.excluded.value, "updated_at": now}
            ),
            [{"name": k, "value": v, "updated_at": now} for k, v in values.items()],
        )

    def person_counts(self, conn: Connection | None = None) -> dict[str, int]:
        """Rows of every person-linked table (:data:`node.store.models.PERSON_LINKED`)."""
        if conn is None:
            with self.engine.connect() as own:
                return self.person_counts(own)
        tables = models.metadata.tables
        return {
            name: conn.scalar(select(func.count()).select_from(tables[name])) or 0
            for name in models.PERSON_LINKED
        }

    def holds_person_data(self) -> bool:
        """Whether any person-linked table has a row (cheap: one row per table at most)."""
        tables = models.metadata.tables
        with self.engine.connect() as conn:
            return any(
                conn.execute(select(1).select_from(tables[n]).limit(1)).first() is not None
                for n in models.PERSON_LINKED
            )

    def delete_person_data(self, conn: Connection) -> dict[str, int]:
        """Delete every person-linked row in ``conn``'s transaction; rows deleted per table."""
        tables = models.metadata.tables
        return {name: conn.execute(delete(tables[name])).rowcount for name in models.PERSON_LINKED}

    def integrity_problems(self, *, full: bool = False) -> list[str]:
        """SQLite ``quick_check`` (``full``: ``integrity_check``, which also cross-checks every
        index against its table) as a list of problems, empty when the store is sound. The
        messages name pages and indexes, never values. PostgreSQL: empty (its page checksums
        are the server's; connectivity and schema were checked at open)."""
        if self.dialect != "sqlite":
            return []
        pragma = "integrity_check" if full else "quick_check"
        with self.engine.connect() as conn:
            rows = [r[0] for r in conn.exec_driver_sql(f"PRAGMA {pragma}").all()]
        return [] if rows == ["ok"] else rows

    def quarantine_frame(self, *, ingest_id: int | None = None) -> pd.DataFrame:
        """Quarantined rows (file, row, field, reason, detail, pseudonym), oldest first."""
        q = models.quarantine
        stmt = select(q).order_by(q.c.id)
        if ingest_id is not None:
            stmt = stmt.where(q.c.ingest_id == ingest_id)
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(stmt).mappings().all(), columns=list(q.c.keys()))

    def cohort_frame(self, spec: StudySpec) -> pd.DataFrame:
        """The flat cohort as ``spec`` needs it (see :meth:`cohort_columns`)."""
        return self.cohort_columns(
            covariates=[c.name for c in spec.covariates],
            treatment_column=spec.treatment.column,
            outcomes=[o.name for o in spec.analysed_outcomes],
        )

    def cohort_columns(
        self, *, covariates: Sequence[str], treatment_column: str, outcomes: Sequence[str]
    ) -> pd.DataFrame:
        """The flat cohort as a study needs it: covariates, treatment, outcomes; no pseudonyms.

        Covariates that are one of the 16 features come from their columns; any other
        covariate and every outcome comes from the numeric extras of the cohort file.
        Treatment is the cohort's ``treated`` column, named ``treatment_column``.
        Values are returned raw: ``shared.features.scale`` checks the spec's bounds.

        Raises:
            DataError: the cohort is empty, or a requested column was never loaded
                (names the column and the first row missing it).
        """
        c = models.cohort
        wanted = [*covariates, "treated", *outcomes]
        fixed = [n for n in wanted if n in _COHORT_FIXED]
        from_extras = [n for n in wanted if n not in _COHORT_FIXED]
        stmt = select(*[c.c[n] for n in fixed], *([c.c.extras] if from_extras else [])).order_by(
            c.c.pseudonym
        )
        with self.engine.connect() as conn:
            result = conn.execute(stmt)
            frame = pd.DataFrame(result.all(), columns=list(result.keys()))
        if frame.empty:
            raise DataError(
                "the cohort table is empty: ingest a cohort file first "
                "(rehealth node ingest --kind cohort FILE)"
            )
        if from_extras:
            extras = pd.DataFrame.from_records(list(frame.pop("extras")))
            for name in from_extras:
                if name not in extras.columns:
                    raise DataError(
                        f"cohort has no column {name!r} (extra columns loaded: "
                        f"{', '.join(sorted(extras.columns)) or 'none'})",
                        field=name,
                    )
                frame[name] = extras[name].to_numpy()
        out = {}
        for name in wanted:
            col = frame[name].to_numpy(dtype=float, na_value=np.nan)
            if np.isnan(col).any():
                raise DataError(
                    f"{int(np.isnan(col).sum())} of {len(col)} cohort rows lack "
                    f"{name!r} (loaded from a file without this column)",
                    field=name,
                )
            out[treatment_column if name == "treated" else name] = col
        return pd.DataFrame(out)


#: Page size of a new SQLite store (existing stores keep theirs).
SQLITE_PAGE_SIZE = 16384

#: Cohort columns stored as columns; anything else a study asks for lives in ``extras``.
_COHORT_FIXED = frozenset(FEATURE_NAMES) | {"treated"}


def open_store(url: str, *, check: bool = True, create: bool = True) -> Store:
    """Connect to ``url`` (``sqlite:///path`` or ``postgresql+psycopg2://…``), check the store
    and bring its schema to this version's (:func:`node.store.schema.migrate`: creates a new
    store's tables, adopts one made before schema versions, applies pending migrations).

    The check (``check=True``, every caller's default) runs before anything is written:

    - SQLite: the store's folder exists (a mistyped ``store_url`` must not silently create a
      new, empty store somewhere else), the file is a database, and ``PRAGMA quick_check``
      passes (every page of every table and index is read: ~0.4 s warm, ~1.5 s cold at
      1M persons). A corrupt store is refused before an ingest adds to it or a study reads it.
    - PostgreSQL: the server answers and the schema has every table and column. Page
      checksums are the server's business (``initdb --data-checksums``).
    - Both: every table has the columns this version expects.

    ``create=False`` refuses a SQLite store file that does not exist yet (a command that only
    inspects the store must not leave a new, empty one behind).

    Raises:
        SpecError: ``url`` is not a supported database URL, the SQLite store's folder does
            not exist, or the store was created by an incompatible version.
        SchemaTooNewError: the store's schema was written by a newer ReHealth Core (a
            :class:`SpecError`; names both versions).
        DataError: the store cannot be opened (not a database, corrupt, unreadable, disk
            full, server unreachable); one line that says what to do, never a value.
    """
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
    except Exception:  # noqa: BLE001 - any parse failure is a config error
        raise SpecError("store_url is not a database URL") from None
    if backend not in ("sqlite", "postgresql"):
        raise SpecError(f"unsupported store backend {backend!r}: sqlite or postgresql")
    if backend == "sqlite":
        _check_sqlite_location(parsed.database, create=create)
    # SQLite has one writer at a time: a second ingest or an API append waits for a chunk's
    # transaction instead of failing after the driver's default 5 s.
    engine = create_engine(url, connect_args={"timeout": 120} if backend == "sqlite" else {})
    where = _where(parsed)
    try:
        if backend == "sqlite":
            create_private_file(engine.url.database)
            event.listen(engine, "connect", _sqlite_pragmas)

        def first_start() -> None:
            with engine.connect() as conn:  # connects: an unreachable server fails here
                if check and backend == "sqlite":
                    _quick_check(conn, where)
            migrate(engine, where)  # refuses a newer schema before anything reads the store

        _when_unlocked(first_start, where, sqlite=backend == "sqlite")
        if check:
            _check_schema(engine, where)
    except ReHealthError:
        engine.dispose()
        raise
    except (OSError, SQLAlchemyError) as e:
        engine.dispose()
        raise _open_error(e, backend, where) from None
    log.info("store ready: %s", engine.url.render_as_string(hide_password=True))
    return Store(engine)


#: How long a first start waits for another process's first start to finish migrating.
LOCKED_RETRY_S = 60.0


def _when_unlocked(step: Callable[[], None], where: str, *, sqlite: bool) -> None:
    """A first start's ``step`` (connect, check, :func:`migrate`), retried while SQLite says
    "database is locked".

    Two first starts at once (a node's API and its SuperNode) both migrate a new store. SQLite
    answers a transaction that read and then wants to write while another writes with an
    immediate SQLITE_BUSY — its busy timeout does not apply to that lock upgrade — so the second
    start failed now and then (seen in CI). It waits and tries again; the first one's
    migration is then found done. Other errors, and PostgreSQL, are not retried."""
    deadline = time.monotonic() + LOCKED_RETRY_S
    delay = 0.05
    while True:
        try:
            step()
            return
        except OperationalError as e:
            if not (sqlite and "database is locked" in str(e.orig)) or time.monotonic() > deadline:
                raise
            log.info("%s is locked by another first start: migrating again in %.2f s", where, delay)
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


#: What to do with a store that fails its integrity check.
RESTORE_HINT = (
    "stop the node, restore the store from its latest backup and re-ingest the files loaded "
    "since (the privacy ledger is a separate database and is not affected)"
)


def _where(u: URL) -> str:
    """The store as an operator recognises it, without credentials or URL options."""
    if u.get_backend_name() == "sqlite":
        return f"SQLite store {u.database}"
    return f"PostgreSQL store {u.host or 'localhost'}:{u.port or 5432}/{u.database or ''}"


def _check_sqlite_location(database: str | None, *, create: bool) -> None:
    """A SQLite store's folder must exist: SQLite would fail with "unable to open database
    file", and creating the folder would put a new, empty store wherever a typo points."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.is_dir():
        raise SpecError(f"store_url names a folder, not a file ({path}): fix store_url in node.toml")
    if not path.parent.is_dir():
        raise SpecError(
            f"the store's folder {path.parent} does not exist: create it, or fix store_url in node.toml"
        )
    if not create and not path.exists():
        raise SpecError(f"there is no store at {path}: fix store_url, or create it (rehealth node init)")


def _quick_check(conn: Connection, where: str) -> None:
    """``PRAGMA quick_check``: every b-tree page is well formed and every record fits its page
    (it skips only the index-to-table cross-check of ``integrity_check``, which would double the
    cost). Its messages name pages, never values; they stay out of the error anyway."""
    problems = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check").all()]
    if problems != ["ok"]:
        log.info("%s failed PRAGMA quick_check: %d problem(s), first: %s", where, len(problems), problems[0])
        raise DataError(f"{where} is corrupt (SQLite quick_check found problems): {RESTORE_HINT}")


def _check_schema(engine: Engine, where: str) -> None:
    """Every table this version writes has every column it expects (a store adopted at the
    baseline revision may have been made by an older, unversioned build)."""
    insp = inspect(engine)
    for table in models.metadata.sorted_tables:
        have = {c["name"] for c in insp.get_columns(table.name)}
        missing = [c.name for c in table.columns if c.name not in have]
        if missing:
            raise SpecError(
                f"{where}: table {table.name} lacks column(s) {', '.join(missing)}: it was created "
                "by an incompatible version of ReHealth Core (point store_url at a store of this "
                "version, or at a new one and re-ingest)"
            )


def _open_error(e: Exception, backend: str, where: str) -> DataError:
    """One line for a store that cannot be opened: the driver's first line (it names files,
    hosts and users, never a row's value), never the URL's password."""
    orig = getattr(e, "orig", None) or e
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    low = first.lower()
    full = isinstance(orig, OSError) and orig.errno == errno.ENOSPC
    if full or "disk is full" in low or "no space" in low:
        return DataError(f"{where}: the disk is full: free space, then retry")
    if "disk i/o error" in low:  # also what a write beyond a file-size limit gives
        return DataError(f"{where}: disk I/O error (is the disk full or failing?): check it, then retry")
    if "not a database" in low:
        return DataError(
            f"{where} is not a SQLite database (or its first page is corrupt): fix store_url, "
            f"or {RESTORE_HINT}"
        )
    if "malformed" in low or "corrupt" in low:
        return DataError(f"{where} is corrupt ({first}): {RESTORE_HINT}")
    if isinstance(orig, PermissionError) or "readonly" in low or "permission denied" in low:
        return DataError(
            f"{where} is not writable by this user: check the owner and mode of the file and its folder"
        )
    if backend == "postgresql":
        return DataError(f"cannot open the {where}: {first} (check that the server runs and store_url)")
    return DataError(f"cannot open the {where}: {first}")


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    """Per-connection settings.

    Notes:
        Durability: in WAL mode with ``synchronous=NORMAL`` every commit is atomic and a
        process crash loses no committed transaction; a power loss or OS crash may roll back
        the commits since the last WAL sync (a checkpoint), whole transactions only. An ingest
        chunk commits together with its progress, so the store stays consistent and a re-run
        resumes after the last chunk that survived.
    """
    cur = dbapi_conn.cursor()
    # Only takes effect on a new, empty database, so it must precede journal_mode. A chunk
    # of random-keyed inserts dirties most leaf pages of the pseudonym index, and every
    # commit writes each dirty page to the WAL and back: larger pages cut the per-page
    # cost (a third less commit time at 1M persons than 4 KiB pages).
    cur.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
    cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the ingest writer
    cur.execute("PRAGMA synchronous=NORMAL")  # see Notes
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA cache_size=-131072")  # 128 MiB: random-keyed inserts stay in memory
    cur.close()


def insert_ignore(conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[tuple]) -> int:
    """Insert ``rows`` (tuples in ``columns`` order), skipping natural-key conflicts.

    SQLite: one prepared ``INSERT … ON CONFLICT DO NOTHING`` run over all rows. PostgreSQL:
    ``COPY`` into a temporary table, then one ``INSERT … SELECT … ON CONFLICT DO NOTHING``
    (a row-by-row INSERT is an order of magnitude slower there). Both count exactly.
    ``rows`` is read once, so it may be a generator: a large batch then never exists as a
    list of tuples.

    Returns:
        How many rows were inserted; the caller finds out which were skipped and why.
    """
    rows = iter(rows)
    first = next(rows, None)
    if first is None:
        return 0
    rows = itertools.chain((first,), rows)
    q = conn.dialect.identifier_preparer
    cols = ", ".join(q.quote(c) for c in columns)
    target = q.format_table(table)
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None, "an open connection has a DBAPI connection"
    cur = dbapi.cursor()
    try:
        if conn.dialect.name == "sqlite":
            # sqlite3 streams any iterable of rows; SQLAlchemy's DBAPI protocol asks for a Sequence
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {target} ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING"
            cur.executemany(sql, rows)  # type: ignore[arg-type]
            return cur.rowcount
        stage = q.quote(f"_stage_{table.name}")
        cur.execute(f"CREATE TEMP TABLE {stage} AS SELECT {cols} FROM {target} WITH NO DATA")
        cur.copy_expert(f"COPY {stage} ({cols}) FROM STDIN WITH (FORMAT csv)", _csv_stream(rows))
        cur.execute(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING")
        inserted = cur.rowcount
        cur.execute(f"DROP TABLE {stage}")
        return inserted
    finally:
        cur.close()


def _csv_stream(rows: Iterable[tuple]) -> io.StringIO:
    """Rows as CSV for ``COPY … (FORMAT csv)``: None becomes an unquoted empty field (NULL);
    text is never empty here (ingestion turns empty cells into None)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    buf.seek(0)
    return buf


def fetch_by_pseudonyms(
    conn: Connection, table: Table, columns: Sequence[str], pseudonyms: Sequence[str], *, batch: int = 5000
) -> pd.DataFrame:
    """Rows of ``table`` whose pseudonym is in ``pseudonyms`` (batched under bind limits)."""
    cols = [table.c[c] for c in columns]
    parts = []
    uniq = list(dict.fromkeys(pseudonyms))
    for i in range(0, len(uniq), batch):
        stmt = select(*cols).where(table.c.pseudonym.in_(uniq[i : i + batch]))
        parts.append(pd.DataFrame(conn.execute(stmt).all(), columns=list(columns)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(columns))
