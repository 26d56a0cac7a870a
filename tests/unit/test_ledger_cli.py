"""`rehealth node budget`: the node's one budget and what spent it, as a table and as JSON."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from node.cli import app
from node.ledger import PrivacyLedger


@pytest.fixture
def charged(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    led = PrivacyLedger(url)
    led.ensure_budget(epsilon=2.0, delta=1e-6)
    led.charge(study_id="study-0123456789", query="describe", sigma=20.0, sensitivity=1.0)
    led.charge(study_id="study-0123456789", query="psm_main", sigma=14.0, sensitivity=2.6)
    led.charge_sgd(
        study_id="risk-job-0001", query="risk_train", noise_multiplier=30.0, sample_rate=0.01, steps=100
    )
    led.charge(study_id="group-view", query="group_view:department", sigma=40.0, sensitivity=1.0)
    return url


def test_budget_json_shows_spent_left_and_releases_by_kind(charged):
    res = CliRunner().invoke(app, ["budget", "--ledger-url", charged, "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    led = PrivacyLedger(charged)
    spent = led.spent()
    b = data["budget"]
    assert b["epsilon"] == 2.0 and b["releases"] == 4
    assert b["spent"] == pytest.approx(spent) and b["left"] == pytest.approx(2.0 - spent)
    assert [h["query"] for h in data["history"]] == [
        "describe",
        "psm_main",
        "risk_train",
        "group_view:department",
    ]
    kinds = data["by_kind"]
    (study,) = kinds["study"]
    assert study["id"] == "study-0123456789" and study["releases"] == 2
    assert study["queries"] == {"describe": 1, "psm_main": 1}
    (risk,) = kinds["risk"]
    assert risk["id"] == "risk-job-0001" and risk["queries"] == {"risk_train": 1}
    (view,) = kinds["group_view"]
    assert view["id"] == "department"
    # the increments of the kinds add up to what the accountant says was spent
    total = sum(g["epsilon"] for gs in kinds.values() for g in gs)
    assert total == pytest.approx(spent)
    assert data["accountant"] == "gaussian"  # the default: exact for Gaussians, RDP with DP-SGD


def test_budget_table_from_node_config(charged, tmp_path):
    (tmp_path / "node.toml").write_text('site_id = "a"\nledger_url = "sqlite:///ledger.db"\n')
    res = CliRunner().invoke(app, ["budget", "--config", str(tmp_path / "node.toml")], env={"COLUMNS": "160"})
    assert res.exit_code == 0, res.output
    for text in ("study queries", "risk training", "group views", "risk-job-0001", "psm_main", "department"):
        assert text in res.output
    assert f"{PrivacyLedger(charged).spent():.3f}" in res.output


def test_budget_of_an_empty_ledger_says_nothing_was_released(tmp_path):
    (tmp_path / "node.toml").write_text('site_id = "a"\n')  # default ledger.db beside it
    res = CliRunner().invoke(app, ["budget", "--config", str(tmp_path / "node.toml")])
    assert res.exit_code == 0, res.output
    assert "nothing was released" in res.output and "ε=10" in res.output
