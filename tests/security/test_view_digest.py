"""Red team: what an HR group view says about its data beyond the noisy table.

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
