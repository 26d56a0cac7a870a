"""`rehealth study plan`: a DP study's noise and fit verdict before it spends any budget."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from coordinator.cli.study import app
from coordinator.files import load_spec
from coordinator.synth import write_federation
from coordinator.synth.io import study_document, to_toml
from shared.driver import noise_plan
from shared.synth import generate_federation


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    out = tmp_path_factory.mktemp("planfed")
    fed = generate_federation(seed=2, sites=5, scale=0.01)
    write_federation(fed, out)
    return fed, out


def _spec(fed, epsilon: float | None) -> str:
    fed, out = fed
    path = out / f"study-{epsilon}.toml"
    path.write_text(to_toml(study_document(fed, epsilon=epsilon)))
    return str(path)


def _plan(spec: str, treated: int) -> dict:
    res = CliRunner().invoke(app, ["plan", "--spec", spec, "--treated", str(treated), "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def _plan_with(spec: str, *args: str) -> dict:
    res = CliRunner().invoke(app, ["plan", "--spec", spec, *args, "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_a_small_study_would_stop_and_the_epsilon_it_names_resolves_its_fit(fed):
    """800 treated over five nodes at ε = 0.5: the fit's noise is predicted to take more than
    half the score's variance, so the study would stop; at the ε the message names it runs."""
    spec = _spec(fed, 0.5)
    out = _plan(spec, 800)
    assert out["nodes"] == 5 and out["plan"] == noise_plan(load_spec(spec)).to_dict()
    assert not out["fit_resolves"] and out["fit_noise_share"] >= 0.5 and out["stops_after_describe"]
    assert "fixed in advance, not tuned" in out["message"]
    needed = float(re.search(r"would need ε ≥ ([0-9.]+)", out["message"]).group(1))
    assert _plan(_spec(fed, needed * 1.05), 800)["fit_resolves"]
    assert not _plan(_spec(fed, needed * 0.9), 800)["fit_resolves"]


def test_a_study_the_old_rule_stopped_runs_and_keeps_its_split(fed):
    """1000 treated over five nodes (the old rule, r ≥ 22, stopped them at ε = 1 and 2): the
    fit's predicted share is under ½ at both; at ε = 1 the summed counts' noise leaves fewer
    than five strata, so the strata rule stops it, and at ε = 2 (six strata) it runs, with the
    spec's split (no re-split)."""
    low = _plan(_spec(fed, 1.0), 1000)
    assert low["fit_resolves"] and low["fit_noise_share"] < 0.5
    assert not low["strata_resolve"] and low["strata"] < 5 and low["stops_after_describe"]
    assert "Cochran 1968" in low["strata_message"]
    out = _plan(_spec(fed, 2.0), 1000)
    assert out["fit_resolves"] and out["fit_noise_share"] < 0.5 and not out["stops_after_describe"]
    assert out["strata_resolve"] and out["strata"] >= 5
    assert "resplit" not in out


def test_the_controls_enter_the_prediction_and_none_stops(fed):
    """The prediction reads both of describe's counts: no controls at all carry no information
    about the score, so the study would stop at any ε."""
    spec = _spec(fed, 4.0)
    assert _plan_with(spec, "--treated", "1000", "--controls", "5000")["fit_resolves"]
    out = _plan_with(spec, "--treated", "1000", "--controls", "0")
    assert not out["fit_resolves"] and "at any ε" in out["message"]


def test_secure_aggregation_resolves_the_fit_of_fewer_treated(fed):
    """√K less noise in every summed release: the secure plan's predicted share is smaller."""
    fed_, out = fed
    path = out / "study-secure.toml"
    path.write_text(to_toml(study_document(fed_, epsilon=0.5, secure_aggregation=True)))
    plain, secure = _plan(_spec(fed, 0.5), 800), _plan(str(path), 800)
    assert secure["fit_noise_share"] < plain["fit_noise_share"]
    assert not plain["fit_resolves"] and secure["fit_resolves"]


def test_plan_text_says_the_study_would_stop(fed):
    res = CliRunner().invoke(
        app, ["plan", "--spec", _spec(fed, 0.5), "--treated", "800"], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, res.output
    assert "psm_main" in res.output and "would stop after describe" in res.output


def test_an_exact_study_has_nothing_to_plan(fed):
    res = CliRunner().invoke(
        app, ["plan", "--spec", _spec(fed, None), "--treated", "800"], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 1 and "[privacy] enabled = false" in res.output


def test_a_study_name_with_brackets_is_printed_as_written(fed):
    fed_, out = fed
    doc = study_document(fed_, epsilon=1.0)
    doc["study"]["name"] = "coaching [pilot]"
    path = out / "study-brackets.toml"
    path.write_text(to_toml(doc))
    res = CliRunner().invoke(app, ["plan", "--spec", str(path), "--treated", "800"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "DP study coaching [pilot]:" in res.output
