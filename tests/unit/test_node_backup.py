"""`rehealth node backup` / `restore`: round trips on SQLite and PostgreSQL (pg_dump and the
logical copy), an archive that reveals nothing, refusals (another site, an existing file, a
store in use, a newer schema), an older store migrated on restore, a node rebuilt from nothing."""

import json
import shutil
import sqlite3

import pytest
from backup_node import SITE, make_node
from sqlalchemy import create_engine, inspect, select

from node.backup import backup_node, restore_node
from node.backup.archive import write_archive
from node.pseudonym import key_fingerprint, load_or_create_key
from node.store import models, open_store
from node.store.schema import VERSION_TABLE, SchemaTooNewError, head_revision
from shared.errors import DataError, SpecError


@pytest.fixture
def node(tmp_path, store_url, valid_person):
    n = make_node(tmp_path, store_url)
    n.ingest([valid_person(f"E-{i}") for i in range(20)], "first")
    cohort = [
        {**valid_person(f"C-{i}"), "treated": str(i % 2), "claims_cost": str(10.5 * i)} for i in range(6)
    ]
    n.ingest(cohort, "cohort", kind="cohort")  # a JSON column (extras) in the round trip
    n.charge("s1", 2)
    return n


def _methods(store_url: str) -> list[str | None]:
    return [None] if store_url.startswith("sqlite") else ["pg_dump", "logical"]


def test_restore_brings_back_the_store_as_backed_up(node, store_url, tmp_path, valid_person):
    for method in _methods(store_url):
        before, cohort_before = node.pseudonyms(), _cohort(node)
        assert sorted(e["claims_cost"] for _, e in cohort_before) == [10.5 * i for i in range(6)]
        archive = tmp_path / f"b-{method}.rhb"
        info = backup_node(node.cfg, archive, method=method)
        assert info["store"]["method"] == (method or "sqlite")
        assert info["store"]["rows"]["persons"] == 20 and info["ledger"]["releases"] == 2
        node.ingest([valid_person(f"L-{i}") for i in range(7)], f"later-{method}")
        assert len(node.pseudonyms()) == 27
        out = restore_node(node.cfg, archive)
        assert node.pseudonyms() == before
        assert out["rows"]["persons"] == 20 and out["rows"]["ingested_files"] == 2
        assert _cohort(node) == cohort_before
        # the restored store takes new rows again (PostgreSQL: id sequences continue)
        node.ingest([valid_person(f"N-{i}") for i in range(3)], f"next-{method}")
        assert len(node.pseudonyms()) == 23
        restore_node(node.cfg, archive)


def _cohort(node) -> list:
    store = open_store(node.cfg.store_url)
    try:
        with store.engine.connect() as conn:
            c = models.cohort
            return [
                tuple(r)
                for r in conn.execute(select(c.c.pseudonym, c.c.extras).order_by(c.c.treated, c.c.pseudonym))
            ]
    finally:
        store.engine.dispose()


def test_the_logical_copy_is_for_postgresql_only(node, store_url, tmp_path):
    if store_url.startswith("sqlite"):
        with pytest.raises(SpecError, match="not for a SQLite store"):
            backup_node(node.cfg, tmp_path / "b.rhb", method="logical")
        assert not (tmp_path / "b.rhb").exists()
    else:
        with pytest.raises(SpecError, match="not for a PostgreSQL store"):
            backup_node(node.cfg, tmp_path / "b.rhb", method="sqlite")


def test_the_archive_reveals_nothing_and_is_private(node, tmp_path):
    archive = tmp_path / "b.rhb"
    backup_node(node.cfg, archive)
    raw = archive.read_bytes()
    assert archive.stat().st_mode & 0o777 == 0o600
    for p in node.pseudonyms():
        assert p.encode() not in raw and p[:16].encode() not in raw
    for clear in (b"SQLite format 3", b"PGDMP", SITE.encode(), b"persons", b"privacy_releases"):
        assert clear not in raw
    assert not list(tmp_path.glob(".rehealth-*")) and not list(tmp_path.glob(".*.partial"))
    assert not list(node.dir.glob(".rehealth-*"))  # the clear copy is gone too


def test_backup_never_overwrites_and_restore_refuses_another_site(node, tmp_path, store_url):
    archive = tmp_path / "b.rhb"
    backup_node(node.cfg, archive)
    with pytest.raises(SpecError, match="exists"):
        backup_node(node.cfg, archive)
    other = make_node(tmp_path, "sqlite:///x", site="insurer_y", name="other")
    shutil.copy(node.cfg.key_path, other.cfg.key_path)  # even with the key, not this site's data
    with pytest.raises(SpecError, match="of site 'employer_x', this node is 'insurer_y'"):
        restore_node(other.cfg, archive)
    if store_url.startswith("sqlite"):
        assert not (other.dir / "node.db").exists()


def test_a_node_rebuilt_from_nothing_but_its_key(node, tmp_path):
    archive = tmp_path / "b.rhb"
    backup_node(node.cfg, archive)
    before, spent = node.pseudonyms(), node.ledger().spent()
    fresh = make_node(tmp_path, "sqlite:///x", name="fresh")
    (fresh.dir / "ledger.db").unlink()  # the new machine has no ledger either
    shutil.copy(node.cfg.key_path, fresh.cfg.key_path)
    if not node.cfg.store_url.startswith("sqlite"):  # a PostgreSQL backup into a SQLite node
        with pytest.raises(SpecError, match="holds a postgresql store; store_url is sqlite"):
            restore_node(fresh.cfg, archive)
        assert not (fresh.dir / "node.db").exists() and not (fresh.dir / "ledger.db").exists()
        return
    out = restore_node(fresh.cfg, archive)
    assert fresh.pseudonyms() == before
    assert out["ledger"]["budget_from_backup"] and out["ledger"]["releases_added"] == 2
    assert fresh.ledger().spent() == pytest.approx(spent)


def test_restore_refuses_a_sqlite_store_in_use(tmp_path, valid_person):
    n = make_node(tmp_path, "sqlite:///x")
    n.ingest([valid_person("E-1")], "f")
    archive = tmp_path / "b.rhb"
    backup_node(n.cfg, archive)
    n.ingest([valid_person("E-2")], "g")
    holder = sqlite3.connect(n.dir / "node.db")
    holder.execute("BEGIN")
    holder.execute("SELECT count(*) FROM persons").fetchone()  # a reader mid-transaction
    try:
        with pytest.raises(DataError, match="in use by another process"):
            restore_node(n.cfg, archive)
    finally:
        holder.close()
    assert len(n.pseudonyms()) == 2  # untouched


def _crafted(n, tmp_path, revision: str | None, *, legacy: bool) -> tuple:
    """An archive as another build would make it: a SQLite store at ``revision``."""
    copy = tmp_path / "store.sqlite"
    engine = create_engine(f"sqlite:///{copy}")
    models.metadata.create_all(engine)
    engine.dispose()
    con = sqlite3.connect(copy)
    con.execute(
        "INSERT INTO store_meta VALUES ('key_fingerprint', ?, '2026-01-01 00:00:00')",
        (key_fingerprint(load_or_create_key(n.cfg.key_path)),),
    )
    if not legacy:
        con.execute(f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL)")
        con.execute(f"INSERT INTO {VERSION_TABLE} VALUES (?)", (revision,))
    con.commit()
    con.close()
    manifest = {
        "created_at": "2026-01-01T00:00:00+00:00",
        "site_id": SITE,
        "key_fingerprint": "-",
        "store": {"dialect": "sqlite", "method": "sqlite", "file": "store.sqlite", "revision": revision},
        "ledger": {"present": False},
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "ledger.json").write_text("null")
    archive = tmp_path / f"crafted-{revision}.rhb"
    key = load_or_create_key(n.cfg.key_path)
    files = {k: tmp_path / k for k in ("manifest.json", "ledger.json", "store.sqlite")}
    write_archive(archive, key, {"key": "-"}, files)
    return archive


def test_a_backup_of_a_newer_schema_is_refused_before_anything_changes(tmp_path, valid_person):
    n = make_node(tmp_path, "sqlite:///x")
    n.ingest([valid_person("E-1")], "f")
    archive = _crafted(n, tmp_path, "7c1e0a9b2d44", legacy=False)
    with pytest.raises(SchemaTooNewError, match=rf"7c1e0a9b2d44.*newest is {head_revision()}"):
        restore_node(n.cfg, archive)
    assert len(n.pseudonyms()) == 1


def test_a_backup_of_an_unversioned_store_is_migrated_on_restore(tmp_path, valid_person):
    n = make_node(tmp_path, "sqlite:///x")
    n.ingest([valid_person("E-1")], "f")
    archive = _crafted(n, tmp_path, None, legacy=True)
    out = restore_node(n.cfg, archive)
    assert out["revision"] is None and out["rows"]["persons"] == 0
    engine = create_engine(n.cfg.store_url)
    assert VERSION_TABLE in inspect(engine).get_table_names()
    engine.dispose()


def test_the_cli_backs_up_and_restores(node, tmp_path):
    archive = tmp_path / "cli.rhb"
    res = node.cli("backup", "--to", str(archive), "--format", "json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["store"]["rows"]["persons"] == 20
    res = node.cli("restore", "--from", str(archive))
    assert res.exit_code == 0, res.output
    assert "restored" in res.output and "never lowered" in res.output
    res = node.cli("restore", "--from", str(tmp_path / "missing.rhb"))
    assert res.exit_code == 1 and "cannot read backup" in res.output
