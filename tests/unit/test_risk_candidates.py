"""Models a coordinator sends are candidates, served only after the operator approves them, and
approval runs a calibration check on the node's own rows (node.risk.calibration)."""

import json

import numpy as np
import pandas as pd
import pytest
from risk_cohort import cohort
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from node.cli import app
from node.risk.calibration import BAND, calibration_check
from node.risk.model_store import ModelStore, TrainingRecord
from shared.errors import SpecError
from shared.features import FEATURE_NAMES, FEATURES, scale
from shared.risk.arch import RiskArch, model_input, predict_proba


@pytest.fixture(scope="module")
def fitted() -> list[np.ndarray]:
    """A well-calibrated logistic model: fitted on 20,000 rows of the same population."""
    X, y = cohort(20_000, 11)
    m = LogisticRegression(max_iter=2000).fit(model_input(scale(X, FEATURES)), y)
    return [m.coef_.reshape(1, -1), m.intercept_.reshape(1)]


def _local(tmp_path, n=3000, seed=12):
    X, y = cohort(n, seed)
    frame = pd.DataFrame(X, columns=list(FEATURE_NAMES))
    frame["cv_event"] = y.astype(int)
    frame.to_csv(tmp_path / "local.csv", index=False)
    return X, y


def _check(arrays, X, y):
    return calibration_check(prob=predict_proba(arch=RiskArch(), arrays=arrays, z=scale(X, FEATURES)), y=y)


# -- the store ------------------------------------------------------------------------------
def test_a_candidate_is_never_served_until_approved(tmp_path, fitted):
    store = ModelStore(tmp_path / "models")
    own = store.save(arrays=fitted, record=TrainingRecord(rounds=1, source="centralized"))
    sent = store.save_candidate(arrays=[fitted[0] * 1.01, fitted[1]], record=TrainingRecord(rounds=8))
    assert store.versions() == [own.version] and store.candidate_versions() == [sent.version]
    assert store.latest().version == own.version  # the newer candidate is not served
    with pytest.raises(SpecError, match="candidate, not approved"):
        store.load(sent.version)
    assert [(e.version, e.status) for e in store.entries()] == [
        (own.version, "served"),
        (sent.version, "candidate"),
    ]
    approved = store.approve(sent.version, check={"oe_ratio": 1.0})
    assert store.latest().version == approved.version == sent.version
    assert store.candidate_versions() == []
    with pytest.raises(SpecError, match="already approved"):
        store.approve(sent.version, check={})


def test_only_candidates_is_nothing_served(tmp_path, fitted):
    store = ModelStore(tmp_path / "models")
    store.save_candidate(arrays=fitted, record=TrainingRecord(rounds=8))
    with pytest.raises(SpecError, match="1 candidate\\(s\\) await approval"):
        store.latest()


def test_a_model_stored_before_approvals_existed_is_a_candidate(tmp_path, fitted):
    store = ModelStore(tmp_path / "models")
    legacy = store.save(arrays=fitted, record=TrainingRecord(rounds=8))
    (tmp_path / "models" / f"{legacy.version}.approved.json").unlink()  # as old code left it
    assert store.versions() == [] and store.candidate_versions() == [legacy.version]
    store.approve(legacy.version, check={})
    assert store.latest().version == legacy.version


# -- the check ------------------------------------------------------------------------------
def test_a_calibrated_model_passes(tmp_path, fitted):
    X, y = cohort(3000, 12)
    check = _check(fitted, X, y)
    assert check.passed, check.reasons
    assert BAND[0] <= check.oe_ratio <= BAND[1] and 0.8 <= check.slope <= 1.25


def test_a_model_off_in_the_large_is_refused(fitted):
    X, y = cohort(3000, 12)
    check = _check([fitted[0], fitted[1] + 1.0], X, y)  # every logit +1: risks ~2.4x too high
    assert not check.passed
    assert "observed/expected" in check.reasons[0] and check.oe_ratio < 0.6


def test_an_over_extreme_model_is_refused(fitted):
    X, y = cohort(3000, 12)
    check = _check([fitted[0] * 3.0, fitted[1]], X, y)
    assert not check.passed
    assert any("slope" in r for r in check.reasons) and check.slope < 0.5


def test_too_few_events_cannot_be_checked(fitted):
    X, y = cohort(40, 12)
    check = _check(fitted, X, y)
    assert not check.passed and "events" in check.reasons[0]


# -- the CLI --------------------------------------------------------------------------------
def test_cli_lists_refuses_and_approves(tmp_path, fitted):
    _local(tmp_path)
    models = tmp_path / "models"
    store = ModelStore(models)
    bad = store.save_candidate(arrays=[fitted[0], fitted[1] + 1.0], record=TrainingRecord(rounds=8))
    good = store.save_candidate(arrays=fitted, record=TrainingRecord(rounds=8, epsilon=8.0))
    run = CliRunner().invoke
    res = run(app, ["model", "list", "--model-dir", str(models), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert {m["version"]: m["status"] for m in json.loads(res.output)["models"]} == {
        bad.version: "candidate",
        good.version: "candidate",
    }

    res = run(
        app,
        ["model", "approve", bad.version, "--model-dir", str(models), "--data", str(tmp_path / "local.csv")],
    )
    assert res.exit_code == 1
    assert "NOT approved" in res.output and "observed/expected" in res.output
    assert store.versions() == []

    res = run(
        app,
        [
            "model",
            "approve",
            good.version,
            "--model-dir",
            str(models),
            "--data",
            str(tmp_path / "local.csv"),
            "--format",
            "json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["check"]["passed"] is True
    assert store.versions() == [good.version]
    note = json.loads((models / f"{good.version}.approved.json").read_text())
    assert BAND[0] <= note["check"]["oe_ratio"] <= BAND[1]
    res = run(app, ["model", "list", "--model-dir", str(models)])
    assert "served" in res.output and "candidate" in res.output


def test_score_uses_only_approved_models(tmp_path, fitted):
    _local(tmp_path)
    models = tmp_path / "models"
    sent = ModelStore(models).save_candidate(arrays=fitted, record=TrainingRecord(rounds=8))
    args = [
        "score",
        str(tmp_path / "local.csv"),
        "-o",
        str(tmp_path / "s.csv"),
        "--model-dir",
        str(models),
        "--format",
        "json",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "await approval" in res.output
    res = CliRunner().invoke(app, [*args, "--version", sent.version])
    assert res.exit_code == 1 and "not approved" in res.output
    ModelStore(models).approve(sent.version, check={})
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and json.loads(res.output)["model_version"] == sent.version
