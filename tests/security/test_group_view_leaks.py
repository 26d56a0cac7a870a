"""Red team: what an HR group view says about its data beyond the noisy table.

**b. The error of a book that cannot be scored.** Served from a book read at the first request,
a view whose book held an out-of-range or non-numeric value answered HR with the scorer's
error, "row 3: sbp outside public bounds [80, 220]": the row and which side of the public
bounds one of its values lies, uncharged. Now HR gets a fixed text; the node's log names it.

**c. Which categories a view lists.** A view served from the node store listed the departments
and job types of the people it could score; a person with a missing lab value cannot be scored.
So when the only company doctor had no LDL on file, "company_doctor" vanished from the view:
HR read a health fact about one person, uncharged. Now a view lists the roster's categories
(every person's, scorable or not); the cells stay noisy and suppressed as before.

**a. The data version.**
A released view named the data it was drawn from by ``data_version``: the first 16 hex digits
(64 bits) of an unkeyed SHA-256 over every person's groups and 16 features. That value is a
deterministic function of every row, released uncharged — and the function is public
(:func:`node.api.groups.data_version`). The attack is the neighbouring-data adversary DP is
defined against: someone (an HR user holding the ``hr`` key, or anyone the view is shown or
exported to) who knows the population except whether one person is in it, or except one of
their values, computes the digest of each candidate and compares. Before the fix it named the
right candidate every time, whatever the noise on the table.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from node.api.app import create_app
from node.api.groups import data_version
from node.ledger import PrivacyLedger
from tests.security.hr_company import company, risk_model


@pytest.fixture
def released(tmp_path):
    ledger = PrivacyLedger(f"sqlite:///{tmp_path}/ledger.db")
    ledger.ensure_budget(epsilon=30.0, delta=1e-6)
    book, model = company(n=200), risk_model(tmp_path / "models")

    def view(frame) -> dict:
        app = create_app(keys={"hr-key": "hr"}, model=model, book=frame, ledger=ledger)
        return TestClient(app, headers={"X-API-Key": "hr-key"}).get("/v1/groups").json()

    return book, view


def test_a_views_data_version_does_not_test_whether_a_person_is_in_the_data(released):
    book, view = released
    with_p, without_p = book, book.drop(index=7).reset_index(drop=True)
    altered = book.copy()
    altered.loc[7, "sbp"] = altered.loc[7, "sbp"] + 1.0  # one value of one person
    candidates = {data_version(f)[:16] for f in (with_p, without_p, altered)}
    assert len(candidates) == 3  # the attacker's three hypotheses digest apart
    shown = view(with_p)["data_version"]
    assert shown not in candidates
    assert view(with_p)["data_version"] == shown  # the same release, served again


def test_b_a_book_that_cannot_be_scored_tells_hr_nothing_of_its_rows(tmp_path, caplog):
    import logging

    ledger = PrivacyLedger(f"sqlite:///{tmp_path}/ledger.db")
    ledger.ensure_budget(epsilon=30.0, delta=1e-6)
    model = risk_model(tmp_path / "models")
    caplog.set_level(logging.ERROR, logger="rehealth.node")
    for column, value in (("sbp", 400.0), ("ldl", "x12")):
        book = company(n=60)
        book[column] = book[column].astype(object)
        book.loc[3, column] = value
        app = create_app(keys={"hr-key": "hr"}, model=model, book=lambda b=book: b, ledger=ledger)
        r = TestClient(app, headers={"X-API-Key": "hr-key"}).get("/v1/groups")
        assert r.status_code == 404
        assert "row" not in r.text and column not in r.text and "bounds" not in r.text, r.text
        assert any(f"row 3: {column}" in m.getMessage() for m in caplog.records)  # the node's log
    assert ledger.history() == []


def test_c_a_category_does_not_vanish_when_its_only_member_has_a_missing_lab(tmp_path):
    import datetime
    import hashlib

    from sqlalchemy import insert

    from node.api.groups import persons_frame
    from node.store import models
    from node.store.engine import open_store
    from shared.features import FEATURE_NAMES
    from shared.schemas import AGE_BANDS

    url = f"sqlite:///{tmp_path}/store.db"
    book = company(n=80)
    book.loc[5, "job_type"] = "company_doctor"  # the only one
    ledger = PrivacyLedger(f"sqlite:///{tmp_path}/ledger.db")
    ledger.ensure_budget(epsilon=30.0, delta=1e-6)
    model = risk_model(tmp_path / "models")
    listed = []
    for ldl_missing in (False, True):
        rows = [
            {
                "pseudonym": hashlib.sha256(str(i).encode()).hexdigest(),
                "site": "acme",
                "department": r.department,
                "job_type": r.job_type,
                "age_band": AGE_BANDS[0],
                "index_date": datetime.date(2025, 1, 1),
                **{
                    f: None if (ldl_missing and i == 5 and f == "ldl") else float(r[f]) for f in FEATURE_NAMES
                },
            }
            for i, r in book.iterrows()
        ]
        store = open_store(url)
        with store.engine.begin() as conn:
            conn.execute(models.persons.delete())
            conn.execute(insert(models.persons), rows)
        store.engine.dispose()
        app = create_app(keys={"hr-key": "hr"}, model=model, book=lambda: persons_frame(url), ledger=ledger)
        view = TestClient(app, headers={"X-API-Key": "hr-key"}).get("/v1/groups", params={"by": "job_type"})
        listed.append(sorted({g["values"]["job_type"] for g in view.json()["groups"]}))
    assert "company_doctor" in listed[0]
    assert listed[0] == listed[1]  # the doctor's missing lab changes no category
