"""Copying the node store out of and back into its database, consistently.

Methods (the manifest records which one made a backup; restore uses the same):

- ``sqlite``: SQLite's online backup API — a page-by-page copy of one consistent snapshot,
  taken while the node may keep reading and writing (WAL). Restore copies the backup's pages
  into the store file through the same API, under an exclusive lock: the store is refused if
  another process holds it open (stop the node first).
- ``pg_dump``: PostgreSQL's own tools, ``pg_dump --format=custom`` of the store's tables
  (one snapshot) and ``pg_restore --clean --single-transaction`` — when they are installed
  and at least as new as the server.
- ``logical``: otherwise, for PostgreSQL, every row of every store table read in one
  ``REPEATABLE READ`` transaction and written back in one transaction (rows deleted and
  copied in with ``COPY``, id sequences reset). Needs the backup's schema version to be this code's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

from sqlalchemy import JSON, Connection, Integer, Table, delete, select, text
from sqlalchemy.engine import URL, make_url

from node.files import create_private_file
from node.store import Store, insert_ignore, models
from node.store.engine import _check_sqlite_location
from node.store.schema import VERSION_TABLE, check_known, head_revision
from shared.errors import DataError, SpecError

#: The file each method writes inside the archive.
FILES = {"sqlite": "store.sqlite", "pg_dump": "store.pgdump", "logical": "store.jsonl"}
_BATCH = 20_000  # rows per read (yield_per) and per COPY on restore
_IN_USE = (
    "the store is in use by another process: stop the node (rehealth node run/serve, the SuperNode) first"
)


def pg_tools_usable(store: Store) -> bool:
    """``pg_dump`` and ``pg_restore`` are on PATH and not older than the server (an older
    ``pg_dump`` refuses a newer server)."""
    if not (shutil.which("pg_dump") and shutil.which("pg_restore")):
        return False
    try:
        out = subprocess.run(["pg_dump", "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return False
    m = re.search(r"(\d+)(?:\.\d+)?", out)
    with store.engine.connect() as conn:
        server = int(conn.execute(text("SHOW server_version_num")).scalar_one()) // 10000
    return m is not None and int(m.group(1)) >= server


def dump_store(store: Store, into: Path, *, method: str | None = None) -> tuple[str, Path]:
    """Copy the store into ``into``; return (method, file). ``method`` None: the best one."""
    if store.dialect == "sqlite":
        method = method or "sqlite"
        if method != "sqlite":
            raise SpecError(f"backup method {method!r} is not for a SQLite store (use sqlite)")
    else:
        method = method or ("pg_dump" if pg_tools_usable(store) else "logical")
        if method not in ("pg_dump", "logical"):
            raise SpecError(f"backup method {method!r} is not for a PostgreSQL store (pg_dump or logical)")
    out = into / FILES[method]
    if method == "sqlite":
        _sqlite_dump(store, out)
    elif method == "pg_dump":
        _pg_dump(store, out)
    else:
        _logical_dump(store, out)
    return method, out


def schema_of(store: Store) -> str | None:
    """The PostgreSQL schema the store's tables live in (None on SQLite)."""
    if store.dialect == "sqlite":
        return None
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT current_schema()")).scalar_one()


# -- SQLite ---------------------------------------------------------------------------------


def _sqlite_path(url: str | URL) -> Path:
    database = make_url(url).database
    assert database, "a file store"
    return Path(database)


def _sqlite_dump(store: Store, out: Path) -> None:
    src = sqlite3.connect(_sqlite_path(store.engine.url), timeout=120)
    dst = sqlite3.connect(out)
    try:
        src.backup(dst)  # one step: one consistent snapshot
        dst.execute("PRAGMA journal_mode=DELETE")  # the copy is a single file
    finally:
        dst.close()
        src.close()


def check_sqlite_copy(path: Path, where: str) -> str | None:
    """The restored copy is a sound SQLite database of a schema this code knows; its revision."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        problems = [r[0] for r in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise DataError(f"{where}: the store in it is corrupt (SQLite quick_check)")
        has_version = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (VERSION_TABLE,)
        ).fetchone()
        rev = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchone() if has_version else None
    except sqlite3.DatabaseError:
        raise DataError(f"{where}: the store in it is not a SQLite database") from None
    finally:
        conn.close()
    revision = rev[0] if rev else None
    check_known(revision, where)
    return revision


def sqlite_restore(copy: Path, url: str) -> None:
    """Copy the backup's pages into the store file (created if missing) under an exclusive
    lock; refuse a store another process holds open."""
    live = _sqlite_path(url)
    _check_sqlite_location(str(live), create=True)
    create_private_file(str(live))
    dst = sqlite3.connect(live, timeout=5)
    src = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        try:
            # leaving WAL needs the only connection; it also lets the page size follow the backup's
            mode = dst.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
        except sqlite3.OperationalError:
            raise DataError(_IN_USE) from None
        if mode.lower() != "delete":
            raise DataError(_IN_USE)
        try:
            src.backup(dst)
        except sqlite3.OperationalError:
            raise DataError(_IN_USE) from None
        dst.execute("PRAGMA journal_mode=WAL")
    finally:
        src.close()
        dst.close()


# -- PostgreSQL: pg_dump / pg_restore ---------------------------------------------------------


def _pg_args(url: str | URL) -> tuple[list[str], dict[str, str]]:
    u = make_url(url)
    args = ["-h", u.host or "localhost", "-p", str(u.port or 5432), "-d", u.database or "postgres"]
    if u.username:
        args += ["-U", u.username]
    env = {**os.environ, "PGCONNECT_TIMEOUT": "30"}
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    return args, env


def _store_tables() -> list[str]:
    return [*(t.name for t in models.metadata.sorted_tables), VERSION_TABLE]


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        # pg_dump/pg_restore name objects and connection problems; the first line is enough
        first = (res.stderr.strip().splitlines() or ["no message"])[0]
        raise DataError(f"{what} failed: {first}")


def _pg_dump(store: Store, out: Path) -> None:
    args, env = _pg_args(store.engine.url)
    schema = schema_of(store)
    tables = [arg for t in _store_tables() for arg in ("-t", f'"{schema}"."{t}"')]
    _run(
        ["pg_dump", "--format=custom", "--no-owner", "--no-privileges", *args, *tables, "-f", str(out)],
        env,
        "pg_dump",
    )


def pg_restore(dump: Path, store: Store, schema: str) -> None:
    """``pg_restore --clean --single-transaction`` of the store's tables into ``schema``."""
    if schema_of(store) != schema:
        raise SpecError(
            f"the backup's tables are in schema {schema!r}, store_url's search path selects "
            f"{schema_of(store)!r}: restore into the same schema"
        )
    args, env = _pg_args(store.engine.url)
    cmd = ["pg_restore", "--clean", "--if-exists", "--single-transaction", "--no-owner", "--no-privileges"]
    _run([*cmd, *args, str(dump)], env, "pg_restore")


# -- PostgreSQL: a logical copy ----------------------------------------------------------------


def _logical_dump(store: Store, out: Path) -> None:
    with (
        store.engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
        open(out, "w", encoding="utf-8") as f,
    ):
        with conn.begin():
            rev = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one()
            f.write(json.dumps({"revision": rev}) + "\n")
            for table in models.metadata.sorted_tables:
                cols = list(table.c.keys())
                f.write(json.dumps({"table": table.name, "columns": cols}) + "\n")
                for row in conn.execute(select(table)).yield_per(_BATCH):
                    f.write(json.dumps([_plain(v) for v in row], ensure_ascii=False) + "\n")


def _plain(v):
    return v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v


def logical_restore(path: Path, store: Store, where: str) -> None:
    """Replace every store row by the backup's, in one transaction."""
    with open(path, encoding="utf-8") as f:
        rev = json.loads(f.readline())["revision"]
        check_known(rev, where)
        if rev != head_revision():
            raise SpecError(
                f"{where} is a logical copy of schema version {rev}; this version restores logical "
                f"copies of version {head_revision()} only: restore it with the version that made it, "
                "then upgrade"
            )
        with store.engine.begin() as conn:
            for old in reversed(models.metadata.sorted_tables):
                conn.execute(delete(old))
            table: Table | None = None
            cols: list[str] = []
            batch: list[list] = []
            for line in f:
                item = json.loads(line)
                if isinstance(item, dict):
                    _insert(conn, table, cols, batch)
                    table, cols, batch = models.metadata.tables[item["table"]], item["columns"], []
                    continue
                batch.append(item)
                if len(batch) >= _BATCH:
                    _insert(conn, table, cols, batch)
                    batch = []
            _insert(conn, table, cols, batch)
            _reset_sequences(conn)


def _insert(conn: Connection, table: Table | None, cols: list[str], batch: list[list]) -> None:
    """``COPY`` the rows in (:func:`node.store.insert_ignore`, the ingest path): dates and
    times stay ISO text, which PostgreSQL parses; JSON columns go back to JSON text."""
    if table is None or not batch:
        return
    as_json = [isinstance(table.c[c].type, JSON) for c in cols]
    rows = (tuple(json.dumps(v) if j and v is not None else v for j, v in zip(as_json, r)) for r in batch)
    if insert_ignore(conn, table, cols, rows) != len(batch):
        raise DataError(f"the logical copy holds duplicate rows in table {table.name}")


def _reset_sequences(conn: Connection) -> None:
    """After explicit ids, the serial sequences continue above the largest id."""
    for table in models.metadata.sorted_tables:
        if (
            "id" in table.c
            and table.c.id.primary_key
            and table.c.id.autoincrement is not False
            and isinstance(table.c.id.type, Integer)  # a text id (plans) has no sequence
        ):
            name = table.name
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                    f"COALESCE(MAX(id), 1), MAX(id) IS NOT NULL) FROM {name}"
                )
            )
