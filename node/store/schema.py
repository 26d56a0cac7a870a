"""The node store's schema version: Alembic migrations applied when the store is opened.

Every process that opens the store (:func:`node.store.open_store`: ``rehealth node init``, the
data-plane commands, the scoring API, the SuperNode's ClientApp) brings it to this code's
newest revision first, so an upgraded node never reads a store in an older layout. The version
lives in the store's ``alembic_version`` table.

- A store at the newest revision costs one ``SELECT`` (no lock, nothing written).
- A store created before versions existed (tables made by ``create_all``, no version table) is
  adopted: the baseline revision ``0001`` creates only the tables it lacks, so its rows stay.
- A store whose revision this code does not know was written by a newer ReHealth Core: it is
  refused (:class:`SchemaTooNewError`) before anything reads or writes it — an older node would
  silently ignore columns it does not know, or fail half-way.

Two processes starting at once do not both migrate: the upgrade runs under the store's write
lock (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a transaction-scoped advisory lock) and re-reads
the version once it holds it. SQLite and PostgreSQL both make DDL transactional, so a failed
migration leaves the store at its previous revision.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, text

from shared.errors import SpecError

log = logging.getLogger(__name__)

#: Where the revisions live (inside the package, so an installed node finds them).
MIGRATIONS = Path(__file__).with_name("migrations")

#: The table holding the store's revision (Alembic's default name).
VERSION_TABLE = "alembic_version"

#: PostgreSQL advisory lock key ("RHMG") serialising migrations of one database.
_PG_LOCK_KEY = 0x52484D47


class SchemaTooNewError(SpecError):
    """The store's schema was written by a newer ReHealth Core than this one."""


def _config(script_location: Path, connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=8)
def _script(script_location: Path) -> ScriptDirectory:
    return ScriptDirectory.from_config(_config(script_location))


def head_revision(script_location: Path = MIGRATIONS) -> str:
    """The newest revision this code knows."""
    head = _script(script_location).get_current_head()
    assert head is not None, "the migrations have a single head"
    return head


def current_revision(conn: Connection) -> str | None:
    """The store's revision (None: no version table yet, a new or an unversioned store)."""
    return MigrationContext.configure(conn).get_current_revision()


def check_known(revision: str | None, where: str, script_location: Path = MIGRATIONS) -> None:
    """Refuse a revision this code does not know: it was written by a newer version.

    Raises:
        SchemaTooNewError: names the store's revision and this code's newest.
    """
    if revision is None:
        return
    try:
        known = _script(script_location).get_revision(revision) is not None
    except CommandError:
        known = False
    if not known:
        raise SchemaTooNewError(
            f"{where} has schema version {revision}, newer than this ReHealth Core knows (its "
            f"newest is {head_revision(script_location)}): upgrade ReHealth Core on this node, or "
            "point store_url at a store made by this version"
        )


def migrate(engine: Engine, where: str, *, script_location: Path = MIGRATIONS) -> tuple[str | None, str]:
    """Bring the store to the newest revision; return (revision before, revision after).

    Raises:
        SchemaTooNewError: the store's revision is unknown to this code (a newer version's).
    """
    head = head_revision(script_location)
    with engine.connect() as conn:
        before = current_revision(conn)
    check_known(before, where, script_location)
    if before == head:
        return before, head
    with engine.connect() as conn:
        _lock(conn)
        before = current_revision(conn)  # another process may have migrated meanwhile
        check_known(before, where, script_location)
        if before != head:
            command.upgrade(_config(script_location, conn), "head")
        conn.commit()
    if before is None:
        log.info("%s: schema created or adopted at version %s", where, head)
    elif before != head:
        log.info("%s: schema migrated from version %s to %s", where, before, head)
    return before, head


def _lock(conn: Connection) -> None:
    """Take the store's write lock for the migration's transaction (see the module notes)."""
    if conn.dialect.name == "sqlite":
        # pysqlite opens no transaction before DDL; this one also keeps other writers out
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
