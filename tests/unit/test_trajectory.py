"""Trajectory log appends and the landmark cohort derived from it, on SQLite and PostgreSQL."""

import datetime as dt

import pandas as pd
import pytest

from node.ingest import ingest_file
from node.pseudonym import Pseudonymizer
from node.store import open_store
from node.trajectory import derive_cohort, record_intervention
from shared.errors import DataError
from shared.features import FEATURE_NAMES

SITE = "site_a"
D = dt.date


@pytest.fixture
def pseudo():
    return Pseudonymizer(key=b"k" * 32, site_id=SITE)


def test_record_intervention_appends_pseudonymised_and_refuses_duplicates(store_url, pseudo):
    store = open_store(store_url)
    rec = record_intervention(store, pseudo, person_id="EMP-77", code="smoking_cessation",
                              start="2024-05-02", channel="workplace")
    assert (rec.code, rec.start, rec.channel, rec.source) == (
        "smoking_cessation", D(2024, 5, 2), "workplace", "cli")
    from sqlalchemy import select
    from node.store.models import interventions
    with store.engine.connect() as conn:
        row = conn.execute(select(interventions)).mappings().one()
    assert row["pseudonym"] == pseudo("EMP-77") and row["start"] == D(2024, 5, 2)
    with pytest.raises(DataError, match="already recorded") as e:
        record_intervention(store, pseudo, person_id="EMP-77", code="smoking_cessation",
                            start=D(2024, 5, 2))
    assert e.value.field == "start"
    assert store.counts()["interventions"] == 1


@pytest.mark.parametrize("kwargs,field", [
    ({"code": "homeopathy"}, None),
    ({"channel": "fax"}, "channel"),
    ({"start": "2024-31-01"}, "start"),
    ({"end": "2024-01-01"}, None),  # before start
    ({"person_id": ""}, "person_id"),
])
def test_record_intervention_names_the_bad_field(tmp_path, pseudo, kwargs, field):
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    args = {"person_id": "EMP-1", "code": "bp_management", "start": "2024-03-01", **kwargs}
    with pytest.raises(DataError, match="invalid intervention event") as e:
        record_intervention(store, pseudo, **args)
    assert e.value.field == field
    assert store.counts()["interventions"] == 0


def _load(store, tmp_path, name, kind, rows, pseudo):
    path = tmp_path / f"{name}.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    s = ingest_file(store, path, kind=kind, pseudonymize=pseudo.many, site_id=SITE)
    assert s.quarantined == 0, s.by_reason


def test_derive_cohort_landmark_design(store_url, tmp_path, valid_person, pseudo):
    store = open_store(store_url)
    # age encodes who is who in the derived (pseudonym-free) frame
    people = {"T1": 30, "T2": 31, "C1": 40, "C2": 41, "PRIOR": 50, "LATE": 51, "NOFU": 52,
              "LATEBASE": 53, "OTHER": 54}
    rows = [valid_person(pid, age=str(age), index_date="2024-01-01") for pid, age in people.items()]
    rows[list(people).index("LATEBASE")]["index_date"] = "2024-09-01"  # measured after index_end
    _load(store, tmp_path, "persons", "persons", rows, pseudo)
    X = "lifestyle_coaching"
    events = [("T1", X, "2024-02-10"), ("T1", X, "2024-05-01"), ("T2", X, "2024-06-30"),
              ("PRIOR", X, "2023-12-01"), ("LATE", X, "2024-07-15"), ("NOFU", X, "2024-03-01"),
              ("C1", "bp_management", "2024-03-01"), ("OTHER", "bp_management", "2024-02-01"),
              ("GHOST", X, "2024-03-03")]
    _load(store, tmp_path, "events", "interventions",
          [dict(person_id=p, code=c, start=s) for p, c, s in events], pseudo)
    outcomes = []
    for pid in people:
        if pid == "NOFU":
            continue
        outcomes.append(dict(person_id=pid, period_start="2024-07-01", period_end="2024-12-31",
                             claims_cost="100", cv_event="0", absence_days="1"))
        outcomes.append(dict(person_id=pid, period_start="2024-01-01", period_end="2024-06-30",
                             claims_cost="5000", cv_event="1", absence_days="9"))  # before follow-up
    outcomes.append(dict(person_id="T1", period_start="2024-10-01", period_end="2024-12-31",
                         claims_cost="50", cv_event="1", absence_days="2"))
    outcomes.append(dict(person_id="C1", period_start="2025-01-01", period_end="2025-06-30",
                         claims_cost="999", cv_event="1", absence_days="9"))  # after follow-up
    _load(store, tmp_path, "outcomes", "outcomes", outcomes, pseudo)

    frame = derive_cohort(store, intervention=X, index_start=D(2024, 1, 1),
                          index_end=D(2024, 6, 30), followup_days=184)
    assert list(frame.columns) == [*FEATURE_NAMES, "treated", "claims_cost", "cv_event",
                                   "absence_days"]
    got = frame.set_index("age")[["treated", "claims_cost", "cv_event", "absence_days"]]
    expected = pd.DataFrame({"age": [30.0, 31.0, 40.0, 41.0, 51.0, 54.0],
                             "treated": [1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                             "claims_cost": [150.0, 100, 100, 100, 100, 100],
                             "cv_event": [1.0, 0, 0, 0, 0, 0],
                             "absence_days": [3.0, 1, 1, 1, 1, 1]}).set_index("age")
    pd.testing.assert_frame_equal(got.sort_index(), expected)
    assert frame.attrs["attrition"] == {
        "persons": 9, "prior_exposure": 1, "baseline_after_index": 1, "no_followup_outcome": 1,
        "events_without_person": 1, "treated": 2, "controls": 4}
    assert frame.attrs["followup"] == ("2024-07-01", "2024-12-31")


def test_derive_cohort_rejects_bad_windows(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    with pytest.raises(DataError, match="unknown intervention code"):
        derive_cohort(store, intervention="x", index_start=D(2024, 1, 1),
                      index_end=D(2024, 2, 1), followup_days=30)
    with pytest.raises(DataError, match="before index_start"):
        derive_cohort(store, intervention="bp_management", index_start=D(2024, 3, 1),
                      index_end=D(2024, 2, 1), followup_days=30)
    with pytest.raises(DataError, match="followup_days"):
        derive_cohort(store, intervention="bp_management", index_start=D(2024, 1, 1),
                      index_end=D(2024, 2, 1), followup_days=0)
