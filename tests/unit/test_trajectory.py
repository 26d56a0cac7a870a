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
    rec = record_intervention(
        store, pseudo, person_id="EMP-77", code="smoking_cessation", start="2024-05-02", channel="workplace"
    )
    assert (rec.code, rec.start, rec.channel, rec.source) == (
        "smoking_cessation",
        D(2024, 5, 2),
        "workplace",
        "cli",
    )
    from sqlalchemy import select

    from node.store.models import interventions

    with store.engine.connect() as conn:
        row = conn.execute(select(interventions)).mappings().one()
    assert row["pseudonym"] == pseudo("EMP-77") and row["start"] == D(2024, 5, 2)
    with pytest.raises(DataError, match="already recorded") as e:
        record_intervention(store, pseudo, person_id="EMP-77", code="smoking_cessation", start=D(2024, 5, 2))
    assert e.value.field == "start"
    assert store.counts()["interventions"] == 1


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"code": "homeopathy"}, None),
        ({"channel": "fax"}, "channel"),
        ({"start": "2024-31-01"}, "start"),
        ({"end": "2024-01-01"}, None),  # before start
        ({"person_id": ""}, "person_id"),
    ],
)
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


def _scenario(store, tmp_path, valid_person, pseudo):
    """Persons whose age tags them in the (pseudonym-free) derived frame."""
    X = "lifestyle_coaching"
    people = {
        "T1": (30, "2024-01-15"),
        "T2": (31, "2024-03-01"),
        "C1": (40, "2024-02-01"),
        "C2": (41, "2024-02-01"),
        "PRIOR": (50, "2024-02-01"),
        "LATE": (51, "2024-02-01"),
        "NOFU": (52, "2024-02-01"),
        "OUTSIDE": (53, "2024-09-01"),
        "BEFORE_INDEX": (54, "2024-04-01"),
    }
    _load(
        store,
        tmp_path,
        "persons",
        "persons",
        [valid_person(pid, age=str(age), index_date=idx) for pid, (age, idx) in people.items()],
        pseudo,
    )
    events = [
        ("T1", X, "2024-02-10"),
        ("T1", X, "2024-05-01"),
        ("T2", X, "2024-06-30"),
        ("PRIOR", X, "2023-12-01"),
        ("PRIOR", X, "2024-03-01"),
        ("LATE", X, "2024-07-15"),
        ("NOFU", X, "2024-03-01"),
        ("C1", "bp_management", "2024-03-01"),
        ("BEFORE_INDEX", X, "2024-03-15"),
        ("OUTSIDE", X, "2024-09-02"),
        ("GHOST", X, "2024-03-03"),
    ]
    _load(
        store,
        tmp_path,
        "events",
        "interventions",
        [dict(person_id=p, code=c, start=s) for p, c, s in events],
        pseudo,
    )

    def period(pid, start_offset, cost, cv, absence):
        start = D.fromisoformat(people[pid][1]) + dt.timedelta(days=start_offset)
        return dict(
            person_id=pid,
            period_start=start.isoformat(),
            period_end=(start + dt.timedelta(days=30)).isoformat(),
            claims_cost=str(cost),
            cv_event=str(cv),
            absence_days=str(absence),
        )

    outcomes = [period(pid, 0, 100, 0, 1) for pid in people if pid != "NOFU"]
    outcomes += [
        period("T1", 100, 50, 1, 2),  # inside T1's follow-up: added
        period("C1", 200, 999, 1, 9),  # after the 184-day follow-up
        period("C2", -20, 5000, 1, 9),
    ]  # before C2's index
    _load(store, tmp_path, "outcomes", "outcomes", outcomes, pseudo)
    return X


def test_derive_cohort_new_user_design(store_url, tmp_path, valid_person, pseudo):
    store = open_store(store_url)
    X = _scenario(store, tmp_path, valid_person, pseudo)
    frame = derive_cohort(
        store, intervention=X, index_start=D(2024, 1, 1), index_end=D(2024, 6, 30), followup_days=184
    )
    assert list(frame.columns) == [*FEATURE_NAMES, "treated", "claims_cost", "cv_event", "absence_days"]
    got = frame.set_index("age")[["treated", "claims_cost", "cv_event", "absence_days"]]
    expected = pd.DataFrame(
        {
            "age": [30.0, 31.0, 40.0, 41.0, 51.0],
            "treated": [1.0, 1.0, 0.0, 0.0, 0.0],
            "claims_cost": [150.0, 100, 100, 100, 100],
            "cv_event": [1.0, 0, 0, 0, 0],
            "absence_days": [3.0, 1, 1, 1, 1],
        }
    ).set_index("age")
    pd.testing.assert_frame_equal(got.sort_index(), expected)
    assert frame.attrs["attrition"] == {
        "persons": 9,
        "missing_feature": 0,
        "index_outside_window": 1,
        "prior_exposure": 2,
        "no_followup_outcome": 1,
        "treated": 2,
        "controls": 3,
    }

    graced = derive_cohort(
        store,
        intervention=X,
        index_start=D(2024, 1, 1),
        index_end=D(2024, 6, 30),
        followup_days=184,
        grace_days=30,
        treatment_column="coached",
    )
    assert graced.set_index("age")["coached"].to_dict() == {
        30.0: 1.0,
        31.0: 0.0,
        40.0: 0.0,
        41.0: 0.0,
        51.0: 0.0,
    }  # T2 started 121 days in


def test_derive_cohort_reproduces_the_synthetic_cohort(tmp_path, pseudo):
    """shared.synth writes both the record tables and the flat cohort they imply: deriving
    the cohort from the records must give the same rows (minus prevalent users)."""
    from coordinator.synth.io import write_federation
    from shared.synth.federation import generate_federation
    from shared.synth.records import INDEX_WINDOW_DAYS, OUTCOME_PERIOD_DAYS, TREATMENT_CODE

    fed = generate_federation(seed=5, sites=1, scale=0.02)
    write_federation(fed, tmp_path / "fed", "csv")
    site = fed.sites[0]
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    for kind in ("persons", "interventions", "outcomes"):
        s = ingest_file(
            store,
            tmp_path / "fed" / site.name / f"{kind}.csv",
            kind=kind,
            pseudonymize=pseudo.many,
            site_id=SITE,
        )
        assert s.quarantined == 0 and s.loaded == s.rows, s

    frame = derive_cohort(
        store,
        intervention=TREATMENT_CODE,
        index_start=D(2024, 1, 1),
        index_end=D(2024, 12, 31),
        followup_days=OUTCOME_PERIOD_DAYS,
        grace_days=INDEX_WINDOW_DAYS,
    )
    ev = site.interventions.merge(site.persons[["person_id", "index_date"]], on="person_id")
    prior = set(ev.loc[(ev.code == TREATMENT_CODE) & (ev.start < ev.index_date), "person_id"])
    want = site.cohort[~site.cohort.person_id.isin(prior)][list(frame.columns)].astype(float)
    assert frame.attrs["attrition"]["prior_exposure"] == len(prior) > 0
    assert len(frame) == len(want) > 100 and frame["treated"].sum() > 10

    def canon(df):
        return df.sort_values(list(df.columns)).reset_index(drop=True)

    pd.testing.assert_frame_equal(canon(frame), canon(want), check_exact=False, rtol=1e-12)


def test_derive_cohort_rejects_bad_windows(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'n.db'}")
    with pytest.raises(DataError, match="unknown intervention code"):
        derive_cohort(
            store, intervention="x", index_start=D(2024, 1, 1), index_end=D(2024, 2, 1), followup_days=30
        )
    with pytest.raises(DataError, match="before index_start"):
        derive_cohort(
            store,
            intervention="bp_management",
            index_start=D(2024, 3, 1),
            index_end=D(2024, 2, 1),
            followup_days=30,
        )
    with pytest.raises(DataError, match="followup_days"):
        derive_cohort(
            store,
            intervention="bp_management",
            index_start=D(2024, 1, 1),
            index_end=D(2024, 2, 1),
            followup_days=0,
        )
