"""Bad input and faults at the node's store (issue #18, "no silent change"): each attack is
first shown to do what it did on the old code (a date a day early, the same people stored
twice, a corrupt store opened without a word), then shown refused or stored correctly.

Where the output matters the real CLI runs in a subprocess: one ``error:`` line, exit code 1,
no traceback, and no canary id or value from the input anywhere in what it prints.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from node.cli import app
from node.config import NodeConfig, default_config_text
from node.ingest import ingest_file
from node.ingest.schema import SPECS
from node.ingest.validate import BAD_DATE, validate_chunk
from node.pseudonym import (
    META_FINGERPRINT,
    META_SITE,
    REKEY_FLAG,
    KeyFileError,
    KeyMismatchError,
    Pseudonymizer,
    key_fingerprint,
    open_pseudonymizer,
    rekey,
)
from node.store import open_store
from node.store.engine import SQLITE_PAGE_SIZE
from node.store.models import PERSON_LINKED, persons
from shared.errors import DataError, SpecError

CANARY = "QZKCANARY"  # in ids and a department; appears in no code, schema or message
CANARY_BMI = "31.4159"  # a value no message would print by chance
SITE = "insurer_a"


def _rows(valid_person, n: int, *, start: int = 0, **overrides) -> list[dict]:
    return [
        valid_person(f"{CANARY}-{i:05d}", department=f"{CANARY}DEPT", bmi=CANARY_BMI, **overrides)
        for i in range(start, start + n)
    ]


def _node(tmp_path: Path, store_url: str | None = None, *, time_zone: str = "UTC") -> Path:
    text_ = default_config_text(site_id=SITE, time_zone=time_zone)
    if store_url is not None:
        text_ = text_.replace('store_url = "sqlite:///node.db"', f'store_url = "{store_url}"')
    path = tmp_path / "node.toml"
    path.write_text(text_)
    return path


def _rh(*args: str, limit_file_size: int | None = None) -> subprocess.CompletedProcess:
    """The real ``rehealth`` CLI in a fresh process."""

    def _limit() -> None:  # a file-size limit: writes beyond it fail as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    code = "import sys; from coordinator.cli.root import main; sys.argv = ['rehealth', *sys.argv[1:]]; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=_limit if limit_file_size is not None else None,
    )


def _clean(cp: subprocess.CompletedProcess) -> str:
    """Everything the process printed, after checking it holds no canary and no traceback."""
    out = cp.stdout + cp.stderr
    assert CANARY not in out and CANARY_BMI not in out, out
    assert "Traceback" not in out and "locals" not in out, out
    return out


def _one_error_line(cp: subprocess.CompletedProcess) -> str:
    """The CLI refused: exit code 1 and exactly one ``error:`` line on stderr."""
    out = _clean(cp)
    assert cp.returncode == 1, out
    lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out
    return lines[0]


def _stored_dates(store_url: str) -> list[str]:
    store = open_store(store_url)
    with store.engine.connect() as conn:
        dates = [
            str(d)
            for d in conn.execute(select(persons.c.index_date).order_by(persons.c.ingest_row)).scalars()
        ]
    store.engine.dispose()
    return dates


# -- dates are calendar days in the node's time zone ------------------------------------------


def test_tz_aware_parquet_dates_are_the_calendar_day_in_the_node_zone_not_a_day_early(tmp_path, valid_person):
    days = ["2024-01-15", "2024-07-01", "2024-03-31", "2024-10-27"]  # winter, summer, both DST days
    df = pd.DataFrame([{**r, "index_date": d} for r, d in zip(_rows(valid_person, 4), days)])
    df["index_date"] = pd.to_datetime(df["index_date"]).dt.tz_localize("Europe/Berlin")
    path = tmp_path / "persons.parquet"
    df.to_parquet(path, index=False)
    # The old reading (to_numpy, then the day) converted to UTC: every date one day early.
    with pytest.warns(UserWarning, match="timezones"):  # numpy's only hint; the old code went on
        old = np.datetime_as_string(pd.read_parquet(path)["index_date"].to_numpy().astype("datetime64[D]"))
    assert list(old) == ["2024-01-14", "2024-06-30", "2024-03-30", "2024-10-26"]

    (tmp_path / "berlin").mkdir()
    berlin = _node(tmp_path / "berlin", f"sqlite:///{tmp_path / 'berlin.db'}", time_zone="Europe/Berlin")
    cp = _rh("node", "ingest", str(path), "--kind", "persons", "--config", str(berlin), "--format", "json")
    assert cp.returncode == 0 and '"loaded": 4' in _clean(cp), cp.stdout + cp.stderr
    assert _stored_dates(f"sqlite:///{tmp_path / 'berlin.db'}") == days

    # A node in UTC sees the same instants at 23:00 / 22:00 the day before: refused, not shifted.
    store = open_store(f"sqlite:///{tmp_path / 'utc.db'}")
    s = ingest_file(store, path, kind="persons", pseudonymize=_pseudo().many, site_id=SITE, time_zone="UTC")
    assert (s.rows, s.loaded, s.quarantined) == (4, 0, 4)
    q = store.quarantine_frame()
    assert list(q["row"]) == [1, 2, 3, 4] and set(q["field"]) == {"index_date"}
    assert set(q["reason"]) == {BAD_DATE} and all("time of day in UTC" in d for d in q["detail"])
    assert not any(CANARY in str(v) for v in q.to_numpy().ravel())


def _pseudo() -> Pseudonymizer:
    return Pseudonymizer(key=bytes(range(32)), site_id=SITE)


@pytest.mark.parametrize(
    "cells,zone,want",
    [
        # ISO text with an offset: converted to the node's zone, then the day taken
        (
            ["2024-01-01T00:00:00+01:00", "2024-07-01T00:00:00+02:00"],
            "Europe/Berlin",
            ["2024-01-01", "2024-07-01"],
        ),
        (["2024-01-01T00:00:00+01:00", "2024-01-01T00:00:00Z"], "UTC", [None, "2024-01-01"]),
        (["2024-01-01T00:00:00Z", "2023-12-31T23:00:00Z"], "Europe/Berlin", [None, "2024-01-01"]),
        # naive text: the node's local time already; midnight only
        (
            ["2024-01-01", "2024-01-01T00:00:00", "2024-01-01T13:30:00"],
            "Europe/Berlin",
            ["2024-01-01", "2024-01-01", None],
        ),
    ],
)
def test_csv_date_text_with_offsets_is_converted_and_a_time_of_day_refused(cells, zone, want, valid_person):
    df = pd.DataFrame([{**r, "index_date": c} for r, c in zip(_rows(valid_person, len(cells)), cells)])
    res = validate_chunk(
        df, SPECS["persons"], first_row=1, site_id=SITE, pseudonymize=_pseudo().many, time_zone=zone
    )
    stored = dict(zip(res.rows["ingest_row"], res.rows["index_date"]))
    assert [stored.get(i + 1) for i in range(len(cells))] == want
    refused = res.problems
    assert list(refused["row"]) == [i + 1 for i, w in enumerate(want) if w is None]
    assert set(refused["field"]) <= {"index_date"} and set(refused["reason"]) <= {BAD_DATE}


def test_parquet_timestamps_with_a_time_of_day_are_quarantined_with_row_and_field(tmp_path, valid_person):
    """Naive and zone-aware timestamps alike: midnight is a day, anything else is refused."""
    df = pd.DataFrame(_rows(valid_person, 4))
    df["index_date"] = pd.to_datetime(
        ["2024-01-15", "2024-01-15 12:00", "2024-01-15 00:00:01", "2024-02-01"], format="ISO8601"
    )
    aware = df.assign(index_date=df["index_date"].dt.tz_localize("America/New_York"))
    for frame, zone in ((df, "UTC"), (aware, "America/New_York")):
        path = tmp_path / f"p_{zone.replace('/', '_')}.parquet"
        frame.to_parquet(path, index=False)
        store = open_store(f"sqlite:///{tmp_path / (path.stem + '.db')}")
        s = ingest_file(
            store, path, kind="persons", pseudonymize=_pseudo().many, site_id=SITE, time_zone=zone
        )
        assert (s.loaded, s.quarantined) == (2, 2)
        q = store.quarantine_frame()
        assert list(q["row"]) == [2, 3] and set(q["field"]) == {"index_date"}
        with store.engine.connect() as conn:
            got = sorted(str(d) for d in conn.execute(select(persons.c.index_date)).scalars())
        assert got == ["2024-01-15", "2024-02-01"]
        store.engine.dispose()


def test_node_config_time_zone_is_an_iana_name(tmp_path):
    assert NodeConfig.from_toml(_node(tmp_path, time_zone="Europe/Berlin")).time_zone == "Europe/Berlin"
    assert NodeConfig.from_dict({"site_id": "a"}, base=tmp_path).time_zone == "UTC"
    with pytest.raises(SpecError, match="time_zone: .*unknown time zone"):
        NodeConfig.from_toml(_node(tmp_path, time_zone="Europe/Atlantis"))


# -- the pseudonym key is bound to the store --------------------------------------------------


def _ingest(store_url: str, key_path: Path, file: Path):
    store = open_store(store_url)
    try:
        pseudo = open_pseudonymizer(store, key_path, site_id=SITE)
        return ingest_file(store, file, kind="persons", pseudonymize=pseudo.many, site_id=SITE)
    finally:
        store.engine.dispose()


def _count(store_url: str) -> int:
    store = open_store(store_url)
    n = store.counts()["persons"]
    store.engine.dispose()
    return n


def test_deleted_key_is_not_silently_replaced_so_nobody_is_stored_twice(store_url, tmp_path, valid_person):
    first, again = tmp_path / "first.csv", tmp_path / "again.csv"
    pd.DataFrame(_rows(valid_person, 10)).to_csv(first, index=False)
    # The same people with the same values in another order: another file, nothing to correct.
    pd.DataFrame(_rows(valid_person, 10)[::-1]).to_csv(again, index=False)
    key = tmp_path / "node.key"

    # The old path: a deleted key file is recreated, and the same 10 people are stored again.
    old_store, old_key = f"sqlite:///{tmp_path / 'old.db'}", tmp_path / "old.key"
    for file in (first, again):
        store = open_store(old_store)
        ingest_file(
            store,
            file,
            kind="persons",
            pseudonymize=Pseudonymizer.from_key_file(old_key, site_id=SITE).many,
            site_id=SITE,
        )
        store.engine.dispose()
        old_key.unlink()
    assert _count(old_store) == 20

    assert _ingest(store_url, key, first).loaded == 10
    original = key.read_bytes()
    key.unlink()
    with pytest.raises(
        KeyFileError, match="is missing, but the store holds data.*restore the key file from backup"
    ):
        _ingest(store_url, key, again)
    assert not key.exists() and _count(store_url) == 10  # no key created, nothing stored

    key.write_bytes(os.urandom(32))  # a different key in its place
    key.chmod(0o600)
    with pytest.raises(KeyMismatchError, match="is not the key the store's data was pseudonymised with") as e:
        _ingest(store_url, key, again)
    assert key.read_bytes().hex() not in str(e.value) and original.hex() not in str(e.value)
    assert _count(store_url) == 10

    key.write_bytes(original)  # restored from backup: the same people are recognised
    s = _ingest(store_url, key, again)
    assert (s.loaded, s.already_present) == (0, 10) and _count(store_url) == 10


def test_another_site_id_is_refused_once_the_store_holds_data(store_url, tmp_path, valid_person):
    file = tmp_path / "p.csv"
    pd.DataFrame(_rows(valid_person, 3)).to_csv(file, index=False)
    _ingest(store_url, tmp_path / "node.key", file)
    store = open_store(store_url)
    with pytest.raises(KeyMismatchError, match="site_id 'renamed' is not the site id"):
        open_pseudonymizer(store, tmp_path / "node.key", site_id="renamed")
    store.engine.dispose()


def test_the_store_records_a_keyed_fingerprint_not_a_hash_of_the_key(store_url, tmp_path):
    key_path = tmp_path / "node.key"
    store = open_store(store_url)
    open_pseudonymizer(store, key_path, site_id=SITE)  # empty store: the key is created
    key = key_path.read_bytes()
    meta = store.meta()
    want = hmac.new(key, b"rehealth-key-fingerprint", hashlib.sha256).hexdigest()[:32]
    assert meta[META_FINGERPRINT] == want == key_fingerprint(key) and meta[META_SITE] == SITE
    assert meta[META_FINGERPRINT] not in hashlib.sha256(key).hexdigest()  # not what sha256sum shows
    assert key.hex() not in repr(meta)
    # An empty store may be re-bound (nothing is linked yet): a new key is recorded, not refused.
    key_path.unlink()
    open_pseudonymizer(store, key_path, site_id=SITE)
    assert store.meta()[META_FINGERPRINT] == key_fingerprint(key_path.read_bytes()) != want
    store.engine.dispose()


def test_a_store_from_before_fingerprints_adopts_its_key_and_then_holds_to_it(tmp_path, valid_person):
    url, key = f"sqlite:///{tmp_path / 'n.db'}", tmp_path / "node.key"
    file = tmp_path / "p.csv"
    pd.DataFrame(_rows(valid_person, 3)).to_csv(file, index=False)
    store = open_store(url)
    ingest_file(
        store,
        file,
        kind="persons",
        pseudonymize=Pseudonymizer.from_key_file(key, site_id=SITE).many,
        site_id=SITE,
    )
    assert store.meta() == {}
    open_pseudonymizer(store, key, site_id=SITE)
    assert store.meta()[META_FINGERPRINT] == key_fingerprint(key.read_bytes())
    key.unlink()
    with pytest.raises(KeyFileError):
        open_pseudonymizer(store, key, site_id=SITE)
    store.engine.dispose()


def test_rekey_cli_asks_for_confirmation_then_starts_over_without_mixing(tmp_path, valid_person):
    """A deleted key stops the real CLI (one line, no canary, no key created); ``store rekey``
    refuses without its flag, then deletes every person-linked row and the ingest history;
    the same file then loads whole under the new key; the ledger is untouched."""
    cfg, url = _node(tmp_path), f"sqlite:///{tmp_path / 'node.db'}"
    file = tmp_path / "persons.csv"
    pd.DataFrame(_rows(valid_person, 10)).to_csv(file, index=False)
    config = ["--config", str(cfg)]
    runner = CliRunner()
    assert _ingest(url, tmp_path / "node.key", file).loaded == 10  # what `node ingest` runs
    ledger = tmp_path / "ledger.db"
    ledger_before = ledger.read_bytes() if ledger.exists() else None
    old_fp = key_fingerprint((tmp_path / "node.key").read_bytes())
    (tmp_path / "node.key").unlink()

    line = _one_error_line(_rh("node", "ingest", str(file), "--kind", "persons", *config))
    assert "missing" in line and "restore the key file from backup" in line and "rekey" in line
    assert not (tmp_path / "node.key").exists()
    line = _one_error_line(_rh("node", "store", "check", *config))
    assert old_fp[:8] in line

    res = runner.invoke(app, ["store", "rekey", *config])
    assert res.exit_code == 1 and REKEY_FLAG in res.output and "persons 10" in res.output
    assert _count(url) == 10

    res = runner.invoke(app, ["store", "rekey", *config, REKEY_FLAG, "--format", "json"])
    assert res.exit_code == 0, res.output
    store = open_store(url)
    assert store.person_counts() == dict.fromkeys(PERSON_LINKED, 0)
    assert store.meta()[META_FINGERPRINT] == key_fingerprint((tmp_path / "node.key").read_bytes()) != old_fp
    store.engine.dispose()
    assert (ledger.read_bytes() if ledger.exists() else None) == ledger_before

    res = runner.invoke(app, ["ingest", str(file), "--kind", "persons", *config, "--format", "json"])
    assert res.exit_code == 0 and '"loaded": 10' in res.output  # not "already ingested"
    res = runner.invoke(app, ["store", "rekey", *config, REKEY_FLAG])
    assert res.exit_code == 1 and "nothing to re-key" in res.output  # the key already is the store's
    res = runner.invoke(app, ["store", "check", *config])
    assert res.exit_code == 0 and "matches" in res.output


def test_rekey_deletes_every_person_linked_row_and_binds_the_new_key(store_url, tmp_path, valid_person):
    key = tmp_path / "node.key"
    file, events = tmp_path / "p.csv", tmp_path / "e.csv"
    pd.DataFrame(_rows(valid_person, 5) + [valid_person(f"{CANARY}-bad", age="abc")]).to_csv(
        file, index=False
    )
    pd.DataFrame(
        [dict(person_id=f"{CANARY}-{i:05d}", code="bp_management", start="2024-03-01") for i in range(5)]
    ).to_csv(events, index=False)
    _ingest(store_url, key, file)
    store = open_store(store_url)
    pseudo = open_pseudonymizer(store, key, site_id=SITE)
    ingest_file(store, events, kind="interventions", pseudonymize=pseudo.many, site_id=SITE)
    assert store.person_counts()["quarantine"] == 1 and store.person_counts()["interventions"] == 5
    with pytest.raises(SpecError, match="nothing to re-key"):
        rekey(store, key, site_id=SITE)
    key.unlink()
    deleted, fp = rekey(store, key, site_id=SITE)  # the explicit act: a new key is created
    assert deleted["persons"] == 5 and deleted["interventions"] == 5 and deleted["quarantine"] == 1
    assert store.person_counts() == dict.fromkeys(PERSON_LINKED, 0)
    assert store.meta()[META_FINGERPRINT] == fp == key_fingerprint(key.read_bytes())
    assert _ingest(store_url, key, file).loaded == 5  # read again, under the new key
    store.engine.dispose()


# -- integrity: a corrupt store is refused at open, before ingest and before a study ----------


def _corrupt_middle_pages(db: Path, pages: int = 40, seed: int = 18) -> None:
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    n = db.stat().st_size // SQLITE_PAGE_SIZE
    assert n > 2 * pages, n
    rnd = random.Random(seed)
    with open(db, "r+b") as f:
        for page in range(n // 2 - pages // 2, n // 2 + pages // 2):
            f.seek(page * SQLITE_PAGE_SIZE)
            f.write(rnd.randbytes(SQLITE_PAGE_SIZE))


def test_a_store_with_corrupted_pages_is_refused_by_ingest_check_and_study(tmp_path, valid_person):
    from node.runtime import NodeRuntime
    from shared.protocol import Describe, StudyQuery
    from shared.study import Covariate, Outcome

    cfg = _node(tmp_path)
    db = tmp_path / "node.db"
    url = f"sqlite:///{db}"
    file = tmp_path / "persons.csv"
    pd.DataFrame(_rows(valid_person, 12000)).to_csv(file, index=False)
    assert _ingest(url, tmp_path / "node.key", file).loaded == 12000
    _corrupt_middle_pages(db)

    # The old open (tables created, nothing checked) took the store as it was.
    old = open_store(url, check=False)
    with old.engine.connect() as conn:
        try:
            assert conn.exec_driver_sql("PRAGMA integrity_check").all() != [("ok",)]
        except DBAPIError as e:  # or SQLite gives up at once
            assert "malformed" in str(e.orig)
    old.engine.dispose()

    more = tmp_path / "more.csv"
    pd.DataFrame(_rows(valid_person, 5, start=50000)).to_csv(more, index=False)
    line = _one_error_line(_rh("node", "ingest", str(more), "--kind", "persons", "--config", str(cfg)))
    assert "is corrupt" in line and "restore the store from its latest backup" in line and "ledger" in line
    line = _one_error_line(_rh("node", "store", "check", "--config", str(cfg)))
    assert "is corrupt" in line

    query = StudyQuery(
        study_id="study-corrupt-store",
        treatment_column="treated",
        covariates=(Covariate(name="age", lo=18, hi=95),),
        outcomes=(Outcome(name="cv_event", cap=1, kind="binary"),),
        ops=(Describe(),),
        sites=("a",),
    )
    with pytest.raises(DataError, match="is corrupt"):
        NodeRuntime(site="a", store_url=url)._site_arrays(query)


def test_integrity_check_of_a_sound_store_passes_and_the_full_check_is_available(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    assert store.integrity_problems() == [] and store.integrity_problems(full=True) == []
    store.engine.dispose()


# -- store-open errors: one line, never a traceback -------------------------------------------


def test_store_open_errors_are_one_line_each(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    not_a_db = cases / "notadb.db"
    not_a_db.write_bytes(b"person_id,bmi\n" + f"{CANARY}-1,{CANARY_BMI}\n".encode() * 2000)
    expected = {
        f"sqlite:///{cases / 'no_such_dir' / 'node.db'}": "does not exist: create it, or fix store_url",
        f"sqlite:///{not_a_db}": "is not a SQLite database",
        f"sqlite:///{cases}": "names a folder, not a file",
        "postgresql+psycopg2://rh:hunter2secret@127.0.0.1:1/rh": "cannot open the PostgreSQL store",
    }
    for i, (url, want) in enumerate(expected.items()):
        d = tmp_path / f"n{i}"
        d.mkdir()
        line = _one_error_line(_rh("node", "store", "check", "--config", str(_node(d, url))))
        assert want in line and "hunter2secret" not in line, line
    assert not (cases / "no_such_dir").exists()  # never created behind the operator's back


def test_a_full_disk_at_store_creation_is_one_line(tmp_path):
    """Writes beyond a file-size limit fail as on a full disk (``EFBIG`` instead of ``ENOSPC``;
    SQLite reports them as an I/O error, a full disk as "database or disk is full")."""
    line = _one_error_line(_rh("node", "init", "--dir", str(tmp_path), limit_file_size=8192))
    assert "disk" in line and "retry" in line
    assert not (tmp_path / "node.toml").exists()  # no config for a node that was never made


def test_init_force_refuses_another_site_id_for_a_store_with_data(tmp_path, valid_person):
    runner = CliRunner()
    assert runner.invoke(app, ["init", "--dir", str(tmp_path), "--site-id", SITE]).exit_code == 0
    file = tmp_path / "p.csv"
    pd.DataFrame(_rows(valid_person, 3)).to_csv(file, index=False)
    _ingest(f"sqlite:///{tmp_path / 'node.db'}", tmp_path / "node.key", file)
    before = (tmp_path / "node.toml").read_text()
    res = runner.invoke(app, ["init", "--dir", str(tmp_path), "--site-id", "renamed", "--force"])
    assert res.exit_code == 1 and "site_id 'renamed' is not the site id" in res.output
    assert (tmp_path / "node.toml").read_text() == before  # refused before anything was overwritten


def test_store_check_does_not_create_a_store(tmp_path):
    res = CliRunner().invoke(app, ["store", "check", "--config", str(_node(tmp_path))])
    assert res.exit_code == 1 and "there is no store at" in res.output
    assert not (tmp_path / "node.db").exists()


def test_postgres_schema_check_names_a_missing_column(store_url):
    store = open_store(store_url)
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE persons DROP COLUMN job_type"))
    store.engine.dispose()
    with pytest.raises(SpecError, match="table persons lacks column.* job_type.*incompatible version"):
        open_store(store_url)


def test_a_key_that_cannot_be_created_or_read_is_one_clear_error(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    with pytest.raises(KeyFileError, match="cannot create the pseudonym key .*No such file or directory"):
        open_pseudonymizer(store, tmp_path / "no_such_dir" / "node.key", site_id=SITE)
    (tmp_path / "node.key").mkdir(mode=0o700)  # a folder where the key file should be
    with pytest.raises(KeyFileError, match="cannot read the pseudonym key"):
        open_pseudonymizer(store, tmp_path / "node.key", site_id=SITE)
    assert store.meta() == {}  # nothing recorded for a key that was never read
    store.engine.dispose()
