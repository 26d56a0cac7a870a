import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import insert, inspect, select

from node.store import insert_ignore, open_store
from node.store.engine import SQLITE_PAGE_SIZE
from node.store.models import cohort, interventions, persons
from shared.errors import DataError, SpecError
from shared.features import FEATURE_NAMES, FEATURES
from shared.study import StudySpec


def _person_row(pseudonym: str) -> dict:
    return {
        "pseudonym": pseudonym,
        "site": "a",
        "department": None,
        "job_type": None,
        "age_band": "40-49",
        "index_date": "2024-01-01",
        **{f.name: float(f.lo) for f in FEATURES},
    }


def test_open_store_creates_every_table(store_url):
    store = open_store(store_url)
    names = set(inspect(store.engine).get_table_names())
    assert {"persons", "interventions", "outcomes", "cohort", "quarantine", "ingested_files"} <= names
    assert set(store.counts().values()) == {0}


def test_insert_ignore_counts_only_new_rows_and_round_trips_dates(store_url):
    store = open_store(store_url)
    cols = list(_person_row("x"))
    rows = [tuple(_person_row(p).values()) for p in ("p1", "p2")]
    with store.engine.begin() as conn:
        assert insert_ignore(conn, persons, cols, rows) == 2
    with store.engine.begin() as conn:
        again = rows + [tuple(_person_row("p3").values())]
        assert insert_ignore(conn, persons, cols, again) == 1
    with store.engine.connect() as conn:
        got = conn.execute(
            select(persons.c.pseudonym, persons.c.index_date).order_by(persons.c.pseudonym)
        ).all()
    assert [(p, d) for p, d in got] == [(p, dt.date(2024, 1, 1)) for p in ("p1", "p2", "p3")]


def test_insert_ignore_takes_a_one_shot_generator_and_an_empty_one(store_url):
    store = open_store(store_url)
    cols = list(_person_row("x"))
    with store.engine.begin() as conn:
        assert insert_ignore(conn, persons, cols, iter(())) == 0
        assert (
            insert_ignore(conn, persons, cols, (tuple(_person_row(p).values()) for p in ("p1", "p2", "p1")))
            == 2
        )
    assert store.counts()["persons"] == 2


def test_new_sqlite_store_uses_wal_and_large_pages(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA page_size").scalar() == SQLITE_PAGE_SIZE


def test_insert_ignore_never_swallows_a_not_null_violation(store_url):
    store = open_store(store_url)
    row = _person_row("p1")
    row["site"] = None
    with pytest.raises(Exception, match="(?i)null"):
        with store.engine.begin() as conn:
            insert_ignore(conn, persons, list(row), [tuple(row.values())])
    assert store.counts()["persons"] == 0


def test_event_natural_key_rejects_a_second_identical_event(store_url):
    store = open_store(store_url)
    ev = {
        "pseudonym": "p1",
        "code": "bp_management",
        "start": "2024-02-01",
        "end": None,
        "channel": "app",
        "source": "cli",
        "recorded_at": dt.datetime.now(dt.timezone.utc),
    }
    with store.engine.begin() as conn:
        assert insert_ignore(conn, interventions, list(ev), [tuple(ev.values())] * 2) == 1


def _spec(**extra) -> StudySpec:
    return StudySpec.from_dict(
        {
            "study": {"name": "t"},
            "covariates": [
                {"name": "age", "lo": 18, "hi": 90},
                {"name": "smoker", "lo": 0, "hi": 1, "kind": "binary"},
            ],
            "outcomes": [{"name": "claims_cost", "cap": 50000}],
            **extra,
        }
    )


def _cohort_row(pseudonym: str, age: float, treated: int, extras: dict) -> dict:
    base = {f: 0.0 for f in FEATURE_NAMES}
    base.update(age=age, smoker=1.0)
    return {"pseudonym": pseudonym, "treated": treated, "extras": extras, **base}


def test_cohort_frame_returns_spec_columns_without_pseudonyms(store_url):
    store = open_store(store_url)
    with store.engine.begin() as conn:
        conn.execute(
            insert(cohort),
            [
                _cohort_row("b", 60.0, 0, {"claims_cost": 100.0}),
                _cohort_row("a", 40.0, 1, {"claims_cost": 250.5}),
            ],
        )
    frame = store.cohort_frame(_spec(treatment={"column": "coached"}))
    assert list(frame.columns) == ["age", "smoker", "coached", "claims_cost"]
    # ordered by pseudonym: "a" first
    pd.testing.assert_frame_equal(
        frame,
        pd.DataFrame(
            {"age": [40.0, 60.0], "smoker": [1.0, 1.0], "coached": [1.0, 0.0], "claims_cost": [250.5, 100.0]}
        ),
    )


def test_cohort_frame_names_a_column_that_was_never_loaded(store_url):
    store = open_store(store_url)
    with pytest.raises(DataError, match="cohort table is empty"):
        store.cohort_frame(_spec())
    with store.engine.begin() as conn:
        conn.execute(insert(cohort), [_cohort_row("a", 40.0, 1, {"absence_days": 2.0})])
    with pytest.raises(DataError, match="no column 'claims_cost'.*loaded: absence_days") as e:
        store.cohort_frame(_spec())
    assert e.value.field == "claims_cost"
    with store.engine.begin() as conn:
        conn.execute(insert(cohort), [_cohort_row("b", 40.0, 1, {"claims_cost": 2.0})])
    with pytest.raises(DataError, match="1 of 2 cohort rows lack 'claims_cost'"):
        store.cohort_frame(_spec())


def test_open_store_refuses_other_backends_and_bad_urls():
    with pytest.raises(SpecError, match="unsupported store backend 'mysql'"):
        open_store("mysql://nobody@127.0.0.1/x")
    with pytest.raises(SpecError, match="not a database URL"):
        open_store("not a url")
