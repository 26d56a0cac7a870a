"""`rehealth node budget`: what the ledger holds, as a table and as JSON."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from node.cli import app
from node.ledger import PrivacyLedger


@pytest.fixture
def charged(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    led = PrivacyLedger(url)
    led.ensure_budget(dataset="cohort", epsilon=2.0, delta=1e-6)
    led.charge(dataset="cohort", study_id="study-0123456789", query="describe", sigma=20.0, sensitivity=1.0)
    led.charge(dataset="cohort", study_id="study-0123456789", query="psm_main", sigma=14.0, sensitivity=2.6)
    return url


def test_budget_json_shows_spent_left_and_history(charged):
    res = CliRunner().invoke(app, ["budget", "--ledger", charged, "--format", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    (ds,) = data["datasets"]
    spent = PrivacyLedger(charged).spent("cohort")
    assert ds["dataset"] == "cohort" and ds["epsilon"] == 2.0
    assert ds["spent"] == pytest.approx(spent) and ds["left"] == pytest.approx(2.0 - spent)
    assert [h["query"] for h in ds["history"]] == ["describe", "psm_main"]
    assert data["accountant"] == "rdp"


def test_budget_table_from_node_config(charged, tmp_path):
    (tmp_path / "node.toml").write_text('site_id = "a"\nstore_url = "sqlite:///node.db"\n')
    res = CliRunner().invoke(app, ["budget", "--config", str(tmp_path / "node.toml")],
                             env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    assert "cohort" in res.output and "psm_main" in res.output
    assert f"{PrivacyLedger(charged).spent('cohort'):.3f}" in res.output


def test_budget_of_unknown_dataset_is_a_clear_error(charged):
    res = CliRunner().invoke(app, ["budget", "--ledger", charged, "--dataset", "nope"])
    assert res.exit_code == 1
    assert "no privacy budget is set for dataset nope" in res.output
