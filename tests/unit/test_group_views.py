"""HR group views through the node API (in process, real SQLite ledger): dimensions in any
combination, a 422 naming a bad one, HR kept to its views, one charge per view across new apps,
a new (announced) charge when the data or the model changes, and the CSV export."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from node.api.app import create_app
from node.api.groups import GroupPolicy, parse_by
from node.ledger import PrivacyLedger
from node.risk.model_store import ModelStore, TrainingRecord
from node.risk.scoring import Scorer, score_book
from shared.dp.accounting import epsilon_spent
from shared.errors import SpecError
from shared.features import FEATURES
from shared.risk.tiers import TIERS
from tests.security.hr_company import company, risk_model

KEYS = {"hr-key": "hr", "uw-key": "underwriter"}
POLICY = GroupPolicy(k=11, sigma=1.0, delta=1e-6)


@pytest.fixture
def node(tmp_path):
    ledger = PrivacyLedger(f"sqlite:///{tmp_path}/ledger.db")
    ledger.ensure_budget(epsilon=30.0, delta=1e-6)
    return tmp_path, company(), risk_model(tmp_path / "models"), ledger


def _client(book, model, ledger, key="hr-key") -> TestClient:
    app = create_app(keys=KEYS, model=model, book=book, ledger=ledger, group_policy=POLICY)
    return TestClient(app, headers={"X-API-Key": key})


def test_dimensions_in_any_order_and_combination():
    assert parse_by("job_type,department") == ("department", "job_type")
    assert parse_by(" age_band ") == ("age_band",)
    assert parse_by("job_type,age_band,department") == ("department", "age_band", "job_type")
    for bad, named in (
        ("department,salary", "'salary'"),
        ("department,department", "twice"),
        ("", "one or more"),
    ):
        with pytest.raises(SpecError, match=named):
            parse_by(bad)


def test_a_bad_dimension_is_a_422_naming_it(node):
    _, book, model, ledger = node
    client = _client(book, model, ledger)
    r = client.get("/v1/groups", params={"by": "department,salary"})
    assert r.status_code == 422
    assert r.json()["field"] == "by" and "'salary'" in r.json()["error"]
    assert "job_type" in r.json()["error"]  # and says what may be asked
    assert ledger.history() == []  # refused before anything was drawn or charged


def test_hr_reaches_group_views_and_nothing_that_scores(node):
    _, book, model, ledger = node
    hr = _client(book, model, ledger)
    row = book.iloc[0]
    person = {f.name: int(row[f.name]) if f.kind == "binary" else float(row[f.name]) for f in FEATURES}
    assert hr.post("/v1/score", json=person).status_code == 403
    assert hr.post("/v1/score/batch", json={"persons": [person]}).status_code == 403
    assert hr.get("/v1/groups", params={"by": "job_type"}).status_code == 200
    uw = _client(book, model, ledger, key="uw-key")
    assert uw.post("/v1/score", json=person).status_code == 200  # the body was a valid person
    assert uw.get("/v1/groups", params={"by": "job_type"}).status_code == 403


def test_each_view_is_charged_once_across_new_apps(node):
    _, book, model, ledger = node
    first = {}
    for _start in range(4):  # a first start and three restarts against the same ledger file
        client = _client(book, model, ledger)
        for by in ("job_type", "department,age_band", "age_band,department"):
            view = client.get("/v1/groups", params={"by": by}).json()
            canon = ",".join(parse_by(by))
            if canon not in first:
                first[canon] = view
                assert view["charged_now"] and view["note"].startswith("new release: first release")
            else:
                assert not view["charged_now"] and "no new charge" in view["note"]
                assert view["cells"] == first[canon]["cells"] and view["groups"] == first[canon]["groups"]
    assert [r.query for r in ledger.history()] == ["group_view:job_type", "group_view:department,age_band"]
    # two Gaussian releases of sensitivity √2 at σ = 1, and nothing else, whatever the restarts
    assert ledger.state().spent == pytest.approx(
        epsilon_spent(noise_multipliers=[1.0 / np.sqrt(2.0)] * 2, delta=1e-6)
    )


def test_new_data_or_model_draws_again_and_says_so(node):
    root, book, model, ledger = node
    _client(book, model, ledger).get("/v1/groups", params={"by": "job_type"})
    grown = company(seed=11, n=500)  # twenty more people
    view = _client(grown, model, ledger).get("/v1/groups", params={"by": "job_type"}).json()
    assert view["charged_now"] and view["supersedes"]["changed"] == ["data"]
    assert "the data changed" in view["note"] and "again" in view["note"]
    newer = ModelStore(root / "models").save(
        arrays=[*model.arrays[:1], np.array([-3.5])], record=TrainingRecord(rounds=2)
    )
    view = _client(grown, newer, ledger).get("/v1/groups", params={"by": "job_type"}).json()
    assert view["charged_now"] and view["supersedes"]["changed"] == ["model"]
    assert view["model_version"] == newer.version
    assert len(ledger.history()) == 3
    # a policy change (σ) is another view definition: a first release, not a supersession
    app = create_app(
        keys=KEYS, model=newer, book=grown, ledger=ledger, group_policy=GroupPolicy(k=11, sigma=3.0)
    )
    view = (
        TestClient(app, headers={"X-API-Key": "hr-key"}).get("/v1/groups", params={"by": "job_type"}).json()
    )
    assert view["charged_now"] and view["supersedes"] is None


def test_profile_cells_means_and_csv_export(node):
    _, book, model, ledger = node
    client = _client(book, model, ledger)
    view = client.get("/v1/groups", params={"by": "department,job_type"}).json()
    depts, jobs = sorted(book["department"].unique()), sorted(book["job_type"].unique())
    assert view["dimensions"] == ["department", "job_type"]
    assert len(view["groups"]) == len(depts) * len(jobs)  # every combination, empty ones too
    assert len(view["cells"]) == 4 * len(depts) * len(jobs)
    assert all((c["count"] is None) == c["suppressed"] for c in view["cells"])
    assert all(c["reason"] in ("small", "complementary") for c in view["cells"] if c["suppressed"])
    scored = score_book(book, Scorer.from_model(model))
    for g in view["groups"]:
        mine = (book["department"] == g["values"]["department"]) & (
            book["job_type"] == g["values"]["job_type"]
        )
        if g["people"] is not None and mine.sum() >= 60:  # noise on a sum of risks / on a count
            # people is the sum of the group's len(TIERS) cells, each noised (σ) and rounded
            # (variance 1/12): 6 SD of that sum, not of one cell (CI once saw 7 off at σ = 1)
            sd = np.sqrt(len(TIERS) * (POLICY.sigma**2 + 1 / 12))
            assert g["people"] == pytest.approx(mine.sum(), abs=6 * sd)
            assert g["mean_risk"] == pytest.approx(scored["probability"][mine].mean(), abs=0.05)
    exported = client.get("/v1/groups", params={"by": "department,job_type", "format": "csv"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == len(view["cells"]) + len(view["groups"])
    assert {r["tier"] for r in rows} == {*TIERS, "all"}
    for r in rows:
        assert (r["count"] == "") == (r["suppressed"] == "true")  # withheld is blank, never 0
    assert len(ledger.history()) == 1  # the export is the stored view, not a new draw


def test_three_way_profile(node):
    _, book, model, ledger = node
    view = (
        _client(book, model, ledger).get("/v1/groups", params={"by": "job_type,age_band,department"}).json()
    )
    assert view["by"] == "department,age_band,job_type"
    assert set(view["cells"][0]["values"]) == {"department", "age_band", "job_type"}
    assert view["suppressed_cells"] > 0


def test_the_threshold_comes_from_the_node_policy_and_may_only_rise():
    from node.cli.groups import group_policy

    assert group_policy(None, k=None, sigma=2.0).k == 11  # the policy's min_cell
    assert group_policy(None, k=20, sigma=2.0).k == 20
    with pytest.raises(SpecError, match="below this node's policy min_cell = 11"):
        group_policy(None, k=5, sigma=2.0)
