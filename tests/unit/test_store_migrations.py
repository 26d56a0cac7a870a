"""Schema versions of the node store: new stores, unversioned stores adopted without loss, a
pending migration applied, a newer schema refused, two first starts at once."""

import datetime as dt
import json
import shutil
import threading
from pathlib import Path

import pytest
from setuptools import find_packages
from sqlalchemy import create_engine, insert, inspect, select, text
from typer.testing import CliRunner

from node.cli import app
from node.store import models, open_store
from node.store.schema import (
    MIGRATIONS,
    VERSION_TABLE,
    SchemaTooNewError,
    current_revision,
    head_revision,
    migrate,
)
from shared.features import FEATURES

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)

_PENDING = '''"""A test-only revision: store_meta gets a note column."""
import sqlalchemy as sa
from alembic import op

revision = "{next}"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("store_meta", sa.Column("note", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("store_meta", "note")
'''


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return current_revision(conn)
    finally:
        engine.dispose()


def _legacy_store(url: str, tables=None) -> None:
    """What the unversioned code made: ``create_all``, then some rows."""
    engine = create_engine(url)
    models.metadata.create_all(engine, tables=tables)
    with engine.begin() as conn:
        conn.execute(
            insert(models.store_meta), [{"name": "key_fingerprint", "value": "ab" * 16, "updated_at": NOW}]
        )
        if tables is None or models.persons in tables:
            conn.execute(
                insert(models.persons),
                [
                    {
                        "pseudonym": f"p{i:03d}",
                        "site": "a",
                        "age_band": "40-49",
                        "index_date": dt.date(2024, 1, 1),
                        **{f.name: float(f.lo) for f in FEATURES},
                    }
                    for i in range(50)
                ],
            )
    engine.dispose()


def test_a_new_store_is_created_at_the_newest_revision(store_url):
    store = open_store(store_url)
    names = set(inspect(store.engine).get_table_names())
    assert {t.name for t in models.metadata.sorted_tables} | {VERSION_TABLE} <= names
    assert _revision(store_url) == head_revision()
    store.engine.dispose()


def test_an_unversioned_store_is_adopted_and_keeps_its_rows(store_url):
    _legacy_store(store_url)
    assert _revision(store_url) is None  # the create_all store has no version table
    store = open_store(store_url)
    assert _revision(store_url) == head_revision()
    assert store.counts()["persons"] == 50
    assert store.meta() == {"key_fingerprint": "ab" * 16}
    store.engine.dispose()


def test_an_unversioned_store_missing_tables_gets_them(store_url):
    # an older unversioned build had fewer tables; adoption adds them and keeps the rest
    _legacy_store(store_url, tables=[models.ingested_files, models.persons, models.store_meta])
    store = open_store(store_url)
    assert {"cohort", "quarantine", "outcomes"} <= set(inspect(store.engine).get_table_names())
    assert store.counts()["persons"] == 50
    store.engine.dispose()


def test_a_pending_migration_is_applied_and_older_code_then_refuses(store_url, tmp_path):
    # a newer build's migrations: the package's plus the next revision, which adds a column
    newer = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, newer, ignore=shutil.ignore_patterns("__pycache__"))
    nxt = f"{int(head_revision()) + 1:04d}"  # the revision after the package's newest
    (newer / "versions" / f"{nxt}_note.py").write_text(_PENDING.format(head=head_revision(), next=nxt))
    open_store(store_url).engine.dispose()  # at the package's head, with rows below
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(insert(models.store_meta), [{"name": "k", "value": "v", "updated_at": NOW}])
    where = "the test store"
    assert migrate(engine, where, script_location=newer) == (head_revision(), nxt)
    assert migrate(engine, where, script_location=newer) == (nxt, nxt)  # idempotent
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name, value, note FROM store_meta")).all() == [("k", "v", None)]
    engine.dispose()
    # this (older) code refuses the store, naming both versions, and leaves it as it was
    with pytest.raises(SchemaTooNewError) as err:
        open_store(store_url)
    assert f"schema version {nxt}" in str(err.value)
    assert f"newest is {head_revision()}" in str(err.value)
    assert _revision(store_url) == nxt


def test_a_store_of_an_unknown_revision_is_refused_before_it_is_read(store_url):
    _legacy_store(store_url)
    engine = create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(text(f"INSERT INTO {VERSION_TABLE} VALUES ('9f3a77c0d1e2')"))
    engine.dispose()
    with pytest.raises(SchemaTooNewError, match=rf"9f3a77c0d1e2.*newest is {head_revision()}"):
        open_store(store_url)
    assert _revision(store_url) == "9f3a77c0d1e2"


def test_two_first_starts_at_once_both_open_the_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'node.db'}"
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            barrier.wait()
            open_store(url).engine.dispose()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(text("count(*)")).select_from(text(VERSION_TABLE))).scalar() == 1
    engine.dispose()
    assert _revision(url) == head_revision()


def test_node_init_creates_a_versioned_store(tmp_path):
    res = CliRunner().invoke(app, ["init", "--dir", str(tmp_path), "--site-id", "employer_x"])
    assert res.exit_code == 0, res.output
    assert _revision(f"sqlite:///{tmp_path / 'node.db'}") == head_revision()
    res = CliRunner().invoke(app, ["store", "check", "-c", str(tmp_path / "node.toml"), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["schema_version"] == head_revision()


def test_node_run_refuses_to_start_on_a_newer_schema(tmp_path):
    from node.flower import node_run

    (tmp_path / "node.toml").write_text('site_id = "a"\n[federation]\nsuperlink = "127.0.0.1:9092"\n')
    url = f"sqlite:///{tmp_path / 'node.db'}"
    open_store(url).engine.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9f3a77c0d1e2'"))
    engine.dispose()
    with pytest.raises(SchemaTooNewError, match="schema version 9f3a77c0d1e2"):  # before any process starts
        node_run.run(tmp_path / "node.toml")


def test_the_migrations_ship_inside_the_package():
    root = Path(__file__).resolve().parents[2]
    assert MIGRATIONS.is_relative_to(root / "node")
    found = find_packages(str(root), include=["node*"])
    assert {"node.store.migrations", "node.store.migrations.versions"} <= set(found)
    assert (MIGRATIONS / "script.py.mako").is_file() and (MIGRATIONS / "env.py").is_file()
