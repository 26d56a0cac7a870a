"""Ingestion: every good row loaded, every bad row quarantined with its reason, counts exact."""

import datetime as dt

import pandas as pd
import pytest
from sqlalchemy import select

from node.ingest import ingest_file, pipeline
from node.ingest.validate import (
    BAD_DATE,
    BAD_ID,
    CONFLICTS_WITH_STORED,
    DATE_ORDER,
    DUPLICATE_ID,
    DUPLICATE_RECORD,
    MISSING,
    OUT_OF_BOUNDS,
    UNKNOWN_CHANNEL,
    UNKNOWN_CODE,
    WRONG_TYPE,
)
from node.pseudonym import Pseudonymizer
from node.store import open_store
from node.store.models import ingested_files, interventions, outcomes, persons
from shared.errors import DataError

SITE = "site_a"


@pytest.fixture
def pseudo() -> Pseudonymizer:
    return Pseudonymizer(key=bytes(range(32)), site_id=SITE)


def _write(rows: list[dict], path, fmt: str):
    df = pd.DataFrame(rows)
    if fmt == "csv":
        df.to_csv(path.with_suffix(".csv"), index=False)
        return path.with_suffix(".csv")
    # Parquet keeps every cell as text here, like a CSV export saved as Parquet.
    df.astype(str).to_parquet(path.with_suffix(".parquet"), index=False)
    return path.with_suffix(".parquet")


def _mixed_persons(valid_person):
    """Rows and the (row, field, reason) each bad one must be quarantined with."""
    rows, expected = [], {}
    for i in range(1, 9):
        rows.append(valid_person(f"P-{i:03d}"))
    bad = [
        (valid_person("P-101", age="forty"), "age", WRONG_TYPE),
        (valid_person("P-102", sbp="500"), "sbp", OUT_OF_BOUNDS),
        (valid_person("P-103", hdl=""), "hdl", MISSING),
        (valid_person("P-002"), "person_id", DUPLICATE_ID),  # P-002 is in row 2
        (valid_person("P-104", index_date="2024-02-30"), "index_date", BAD_DATE),
        (valid_person("P-105", smoker="0.5"), "smoker", OUT_OF_BOUNDS),
        (valid_person(""), "person_id", MISSING),
        (valid_person("X" * 129), "person_id", BAD_ID),
        (valid_person("P-106", age="17.9", sbp="oops"), "age", OUT_OF_BOUNDS),  # first field wins
        (valid_person("P-107", glucose="inf"), "glucose", WRONG_TYPE),
    ]
    for row, field, reason in bad:
        rows.append(row)
        expected[len(rows)] = (field, reason)
    rows.append(valid_person("P-009", age="18", sbp="220"))  # bounds are inclusive
    rows.append(valid_person("P-001"))  # duplicate of row 1, lands in a later chunk
    expected[len(rows)] = ("person_id", DUPLICATE_ID)
    return rows, expected


def _quarantined(store, ingest_id=None) -> dict[int, tuple[str, str]]:
    q = store.quarantine_frame(ingest_id=ingest_id)
    return {int(r.row): (r.field, r.reason) for r in q.itertuples()}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_mixed_persons_file_loads_every_good_row_and_quarantines_every_bad_one(
    store_url, tmp_path, valid_person, pseudo, fmt
):
    rows, expected = _mixed_persons(valid_person)
    path = _write(rows, tmp_path / "persons", fmt)
    store = open_store(store_url)
    s = ingest_file(store, path, kind="persons", pseudonymize=pseudo.many, site_id=SITE, chunk_rows=4)

    good_ids = [f"P-{i:03d}" for i in range(1, 10)]
    assert (s.rows, s.loaded, s.quarantined, s.already_present) == (len(rows), 9, len(expected), 0)
    assert s.rows == s.loaded + s.quarantined + s.already_present
    assert _quarantined(store) == expected
    assert sum(s.by_reason.values()) == s.quarantined
    assert s.by_reason[DUPLICATE_ID] == 2 and s.by_reason[OUT_OF_BOUNDS] == 3
    with store.engine.connect() as conn:
        stored = conn.execute(
            select(
                persons.c.pseudonym,
                persons.c.age_band,
                persons.c.index_date,
                persons.c.age,
                persons.c.sbp,
                persons.c.site,
            )
        ).all()
    assert sorted(r.pseudonym for r in stored) == sorted(pseudo.many(good_ids))
    edge = next(r for r in stored if r.pseudonym == pseudo("P-009"))
    assert (edge.age, edge.sbp, edge.age_band, edge.index_date, edge.site) == (
        18.0,
        220.0,
        "18-29",
        dt.date(2024, 1, 15),
        SITE,
    )
    q = store.quarantine_frame()
    assert set(q["file"]) == {path.name}
    dup_row = q[q.row == len(rows)].iloc[0]
    assert dup_row.pseudonym == pseudo("P-001") and dup_row.detail == "same key as row 1"
    assert q[q.reason == BAD_ID].pseudonym.isna().all()


def test_reingesting_the_same_file_adds_nothing(store_url, tmp_path, valid_person, pseudo):
    rows, expected = _mixed_persons(valid_person)
    path = _write(rows, tmp_path / "persons", "csv")
    store = open_store(store_url)
    first = ingest_file(store, path, kind="persons", pseudonymize=pseudo.many, site_id=SITE)
    before = store.counts()
    again = ingest_file(store, path, kind="persons", pseudonymize=pseudo.many, site_id=SITE)
    assert again.already_ingested and not first.already_ingested
    assert (again.loaded, again.quarantined, again.by_reason) == (
        first.loaded,
        first.quarantined,
        first.by_reason,
    )
    assert store.counts() == before


def test_an_overlapping_new_file_loads_only_new_rows(store_url, tmp_path, valid_person, pseudo):
    store = open_store(store_url)
    first = _write([valid_person(f"P-{i}") for i in range(5)], tmp_path / "a", "csv")
    ingest_file(store, first, kind="persons", pseudonymize=pseudo.many, site_id=SITE)
    # P-3 and P-4 again, unchanged: already stored; P-5..P-7 new
    same = _write([valid_person(f"P-{i}") for i in range(3, 8)], tmp_path / "b", "parquet")
    s = ingest_file(store, same, kind="persons", pseudonymize=pseudo.many, site_id=SITE, chunk_rows=2)
    assert (s.rows, s.loaded, s.already_present, s.quarantined) == (5, 3, 2, 0)
    # P-3 and P-4 with another age (corrections): refused, counted, the stored rows unchanged
    changed = _write([valid_person(f"P-{i}", age="70") for i in range(3, 10)], tmp_path / "c", "csv")
    s = ingest_file(store, changed, kind="persons", pseudonymize=pseudo.many, site_id=SITE, chunk_rows=2)
    assert (s.rows, s.loaded, s.already_present, s.quarantined) == (7, 2, 0, 5)
    assert s.by_reason == {CONFLICTS_WITH_STORED: 5}
    q = store.quarantine_frame(ingest_id=3)
    assert set(q.field) == {"age"} and sorted(q.row) == [1, 2, 3, 4, 5]
    assert q.detail.iloc[0] == (
        "differs from the stored row (from a.csv row 4) in 1 field(s); corrections are not applied"
    )
    assert store.counts()["persons"] == 10
    with store.engine.connect() as conn:  # P-3 keeps its original age
        age = conn.execute(select(persons.c.age).where(persons.c.pseudonym == pseudo("P-3"))).scalar()
    assert age == 54.0


def test_column_mapping_lets_a_site_keep_its_own_names(store_url, tmp_path, valid_person, pseudo):
    rows = [valid_person(f"P-{i}") for i in range(3)]
    df = pd.DataFrame(rows).rename(columns={"person_id": "Versichertennummer", "age": "Alter"})
    df["unused_column"] = "ignored"
    path = tmp_path / "persons.csv"
    df.to_csv(path, index=False)
    store = open_store(store_url)
    with pytest.raises(DataError, match="lacks required column.*person_id, age") as e:
        ingest_file(store, path, kind="persons", pseudonymize=pseudo.many, site_id=SITE)
    assert e.value.field == "person_id"
    assert store.counts()["ingested_files"] == 0
    s = ingest_file(
        store,
        path,
        kind="persons",
        pseudonymize=pseudo.many,
        site_id=SITE,
        mapping={"Versichertennummer": "person_id", "Alter": "age"},
    )
    assert (s.loaded, s.quarantined) == (3, 0)
    with pytest.raises(DataError, match="not in the file: Nope"):
        ingest_file(
            store, path, kind="persons", pseudonymize=pseudo.many, site_id=SITE, mapping={"Nope": "age"}
        )


def test_intervention_file_reasons(store_url, tmp_path, pseudo):
    ev = dict(person_id="P-1", code="bp_management", start="2024-03-01", end="2024-06-01", channel="app")
    rows = [
        ev,
        dict(ev, code="lipid_management", channel=""),  # channel defaults to in_person
        dict(ev, code="homeopathy"),
        dict(ev, start="03/01/2024"),
        dict(ev, end="2024-01-01"),
        dict(ev, channel="carrier_pigeon"),
        dict(ev),
        dict(ev, person_id=""),
    ]
    path = _write(rows, tmp_path / "events", "csv")
    store = open_store(store_url)
    s = ingest_file(store, path, kind="interventions", pseudonymize=pseudo.many, site_id=SITE)
    assert _quarantined(store) == {
        3: ("code", UNKNOWN_CODE),
        4: ("start", BAD_DATE),
        5: ("end", DATE_ORDER),
        6: ("channel", UNKNOWN_CHANNEL),
        7: ("start", DUPLICATE_RECORD),
        8: ("person_id", MISSING),
    }
    assert (s.loaded, s.quarantined) == (2, 6)
    with store.engine.connect() as conn:
        got = conn.execute(
            select(
                interventions.c.code, interventions.c.channel, interventions.c.end, interventions.c.source
            ).order_by(interventions.c.code)
        ).all()
    assert [tuple(r) for r in got] == [
        ("bp_management", "app", dt.date(2024, 6, 1), "file"),
        ("lipid_management", "in_person", dt.date(2024, 6, 1), "file"),
    ]


def test_outcome_file_reasons(store_url, tmp_path, pseudo):
    o = dict(
        person_id="P-1",
        period_start="2024-01-01",
        period_end="2024-12-31",
        claims_cost="1234.5",
        cv_event="0",
        absence_days="3",
    )
    rows = [
        o,
        dict(o, person_id="P-2", absence_days="367"),
        dict(o, person_id="P-3", cv_event="2"),
        dict(o, person_id="P-4", claims_cost="-1"),
        dict(o, person_id="P-5", period_end="2023-12-31"),
        dict(o, claims_cost="99"),
        dict(o, person_id="P-6", period_start="2025-01-01", period_end="2025-12-31", absence_days="366"),
    ]
    path = _write(rows, tmp_path / "outcomes", "parquet")
    store = open_store(store_url)
    s = ingest_file(store, path, kind="outcomes", pseudonymize=pseudo.many, site_id=SITE)
    assert _quarantined(store) == {
        2: ("absence_days", OUT_OF_BOUNDS),
        3: ("cv_event", OUT_OF_BOUNDS),
        4: ("claims_cost", OUT_OF_BOUNDS),
        5: ("period_end", DATE_ORDER),
        6: ("period_start", DUPLICATE_RECORD),
    }
    assert (s.loaded, s.quarantined) == (2, 5)
    with store.engine.connect() as conn:
        assert conn.execute(
            select(outcomes.c.claims_cost).order_by(outcomes.c.claims_cost)
        ).scalars().all() == [1234.5, 1234.5]


def test_flat_cohort_keeps_extra_numeric_columns_for_studies(store_url, tmp_path, valid_person, pseudo):
    from shared.study import StudySpec

    rows = []
    for i in range(6):
        r = valid_person(f"C-{i}", age=str(40 + i))
        r.update(treated=str(i % 2), claims_cost=str(100.0 * i), absence_days=str(i))
        rows.append(r)
    rows[4]["claims_cost"] = "n/a"
    rows[5]["treated"] = "yes"
    path = _write(rows, tmp_path / "cohort", "csv")
    store = open_store(store_url)
    s = ingest_file(store, path, kind="cohort", pseudonymize=pseudo.many, site_id=SITE)
    assert _quarantined(store) == {5: ("claims_cost", WRONG_TYPE), 6: ("treated", WRONG_TYPE)}
    assert s.loaded == 4
    spec = StudySpec.from_dict(
        {
            "study": {"name": "t"},
            "outcomes": [{"name": "claims_cost", "cap": 1e5}, {"name": "absence_days", "cap": 366}],
        }
    )
    frame = store.cohort_frame(spec)
    assert len(frame) == 4 and "person_id" not in frame and "pseudonym" not in frame
    assert sorted(frame["age"]) == [40.0, 41.0, 42.0, 43.0]
    by_age = frame.set_index("age")
    assert by_age.loc[43.0, "claims_cost"] == 300.0 and by_age.loc[43.0, "treated"] == 1.0
    assert by_age.loc[42.0, "absence_days"] == 2.0 and by_age.loc[42.0, "treated"] == 0.0


def test_interrupted_ingest_resumes_without_losing_or_repeating_rows(
    store_url, tmp_path, valid_person, pseudo
):
    rows = [valid_person(f"P-{i}") for i in range(10)]
    rows[2]["age"] = "x"  # quarantined in the first chunk
    rows[8]["person_id"] = "P-1"  # duplicate in the third chunk
    path = _write(rows, tmp_path / "persons", "csv")
    store = open_store(store_url)
    calls = {"n": 0}

    def crashing(ids):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("operator pressed Ctrl-C")
        return pseudo.many(ids)

    with pytest.raises(KeyboardInterrupt):
        ingest_file(store, path, kind="persons", pseudonymize=crashing, site_id=SITE, chunk_rows=3)
    assert store.counts()["persons"] == 5  # two chunks committed: 6 rows, one quarantined
    s = ingest_file(
        store, path, kind="persons", pseudonymize=pseudo.many, site_id=SITE, chunk_rows=4
    )  # a different chunking still resumes at row 7
    assert not s.already_ingested
    assert (s.rows, s.loaded, s.quarantined, s.already_present) == (10, 8, 2, 0)
    assert _quarantined(store) == {3: ("age", WRONG_TYPE), 9: ("person_id", DUPLICATE_ID)}
    assert store.counts()["persons"] == 8


def test_a_failed_chunk_write_raises_and_rolls_the_file_back(
    store_url, tmp_path, valid_person, pseudo, monkeypatch
):
    path = _write([valid_person(f"P-{i}") for i in range(9)], tmp_path / "persons", "csv")
    store = open_store(store_url)
    real, calls = pipeline.insert_ignore, {"n": 0}

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(*args)

    monkeypatch.setattr(pipeline, "insert_ignore", failing)
    with pytest.raises(RuntimeError, match="disk full"):  # raised, not waited on forever
        ingest_file(store, path, kind="persons", pseudonymize=pseudo.many, site_id=SITE, chunk_rows=3)
    assert store.counts()["persons"] == 0  # the first chunk was rolled back with the second
    with store.engine.connect() as conn:
        assert conn.execute(select(ingested_files.c.status)).scalar() == "failed"
    monkeypatch.setattr(pipeline, "insert_ignore", real)
    s = ingest_file(store, path, kind="persons", pseudonymize=pseudo.many, site_id=SITE)
    assert (s.rows, s.loaded, s.quarantined, s.already_present) == (9, 9, 0, 0)


def test_blank_lines_are_quarantined_not_skipped(store_url, tmp_path, valid_person, pseudo):
    path = tmp_path / "persons.csv"
    pd.DataFrame([valid_person("P-1")]).to_csv(path, index=False)
    with open(path, "a") as fh:
        fh.write("\n")
    pd.DataFrame([valid_person("P-2")]).to_csv(path, mode="a", header=False, index=False)
    s = ingest_file(open_store(store_url), path, kind="persons", pseudonymize=pseudo.many, site_id=SITE)
    assert (s.rows, s.loaded, s.quarantined, s.by_reason) == (3, 2, 1, {MISSING: 1})


def test_unknown_kind_and_file_type_are_errors(tmp_path, pseudo):
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="unknown input kind"):
        ingest_file(store, tmp_path / "x.json", kind="claims", pseudonymize=pseudo.many, site_id=SITE)
    with pytest.raises(DataError, match="unknown file type"):
        ingest_file(store, tmp_path / "x.json", kind="persons", pseudonymize=pseudo.many, site_id=SITE)
    with pytest.raises(DataError, match="not found"):
        ingest_file(store, tmp_path / "nope.csv", kind="persons", pseudonymize=pseudo.many, site_id=SITE)


def test_store_column_names_are_reserved(tmp_path, valid_person, pseudo):
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    row = dict(valid_person("C-1"), treated="1", pseudonym="3")
    path = _write([row], tmp_path / "cohort", "csv")
    with pytest.raises(DataError, match="reserved") as e:
        ingest_file(store, path, kind="cohort", pseudonymize=pseudo.many, site_id=SITE)
    assert e.value.field == "pseudonym"


def test_malformed_csv_names_the_line_and_rolls_back_committed_chunks(tmp_path, valid_person, pseudo):
    path = tmp_path / "persons.csv"
    pd.DataFrame([valid_person(f"P-{i}") for i in range(6)]).to_csv(path, index=False)
    with open(path, "a") as fh:
        fh.write("P-9,too,many,fields" + ",x" * 30 + "\n")
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    with pytest.raises(DataError, match="malformed CSV.*line 8") as e:
        ingest_file(store, path, kind="persons", pseudonymize=pseudo.many, site_id=SITE, chunk_rows=3)
    assert "P-9" not in str(e.value)
    assert store.counts()["persons"] == 0  # the two chunks before the bad line: rolled back
    assert e.value.rows_read == 6 and e.value.rolled_back == 6
