"""The risk model's evaluate message: one Gaussian release, charged before any row is read,
declined by a node outside the job's sites; train declines likewise. Through the real ClientApp
(in-process), with a signed job, a real SQLite ledger and a real cohort file."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
import risk_attack as ra  # noqa: E402

from node.ledger import PrivacyLedger  # noqa: E402
from node.risk.model_store import ModelStore  # noqa: E402
from shared.features import FEATURES, scale  # noqa: E402
from shared.protocol import CODE_BUDGET, CODE_DATA, CODE_NOT_IN_STUDY, RISK_EVAL_KEY  # noqa: E402
from shared.risk.arch import RiskArch, predict_proba  # noqa: E402
from shared.risk.metrics import (
    EVAL_SENSITIVITY,
    EvalAggregate,
    eval_aggregate,  # noqa: E402
    eval_noise_sigma,
)

MODEL = [np.full((1, 16), 0.3), np.array([-2.2])]


def _ledger(node) -> PrivacyLedger:
    return PrivacyLedger(f"sqlite:///{Path(node.config['state-dir']) / 'ledger.db'}")


def _history(node) -> list:
    db = Path(node.config["state-dir"]) / "ledger.db"
    return _ledger(node).history() if db.exists() else []


def _candidates(node) -> list[str]:
    return ModelStore(Path(node.config["state-dir"]) / "models").candidate_versions()


def test_evaluate_is_a_charged_gaussian_release(tmp_path):
    node = ra.make_node(tmp_path)
    reply = ra.evaluate_message(node, MODEL, ra.job_json("eval-job-0001", eval_epsilon=0.5))
    assert not reply.has_error(), reply.error.reason
    sigma = eval_noise_sigma(epsilon=0.5, delta=1e-5)
    [row] = _history(node)
    assert (row.query, row.study_id) == ("risk_evaluate", "eval-job-0001")
    assert row.sigma == pytest.approx(sigma) and row.sensitivity == pytest.approx(math.sqrt(3))
    assert 0.3 < row.epsilon <= 0.5 + 1e-9  # at most the job's eval_epsilon on a fresh ledger
    noisy = EvalAggregate.from_arrays(reply.content.array_records[RISK_EVAL_KEY].to_numpy_ndarrays())
    assert noisy.n_bins == 20  # the job's public grid
    assert not np.allclose(noisy.pos, np.round(noisy.pos))  # not integer counts any more
    assert reply.content.metric_records["metrics"]["eval-sigma"] == pytest.approx(sigma)
    assert "num-examples" not in reply.content.metric_records["metrics"]  # no exact n leaves


def test_the_charge_comes_before_any_row_is_read(tmp_path):
    node = ra.make_node(tmp_path)
    Path(node.config["data-path"]).unlink()  # reading the rows will fail ...
    reply = ra.evaluate_message(node, MODEL, ra.job_json("eval-job-0002"))
    assert reply.has_error() and reply.error.code == CODE_DATA
    assert [h.query for h in _history(node)] == ["risk_evaluate"]  # ... after the charge
    assert str(tmp_path) not in reply.error.reason


def test_over_budget_is_refused_with_nothing_computed(tmp_path):
    node = ra.make_node(tmp_path, budget=0.1)  # below one evaluation at ε = 0.2
    Path(node.config["data-path"]).unlink()  # had the rows been read, this would be a data error
    reply = ra.evaluate_message(node, MODEL, ra.job_json("eval-job-0003", eval_epsilon=0.2))
    assert reply.has_error() and reply.error.code == CODE_BUDGET
    assert "budget" in reply.error.reason
    assert _history(node) == [] and _candidates(node) == []


def test_a_replayed_evaluation_gets_nothing(tmp_path):
    node = ra.make_node(tmp_path)
    job = ra.job_json("eval-job-0004")
    assert not ra.evaluate_message(node, MODEL, job).has_error()
    again = ra.evaluate_message(node, MODEL, job)
    assert again.has_error() and again.error.code == CODE_BUDGET
    assert len(_history(node)) == 1


@pytest.mark.parametrize(
    "job_sites, grant_sites",
    [
        (("other",), (ra.SITE,)),  # the job leaves it out
        ((ra.SITE,), ("other",)),
    ],
)  # the grant does
def test_a_node_outside_the_sites_declines_evaluate(tmp_path, job_sites, grant_sites):
    node = ra.make_node(tmp_path)
    Path(node.config["data-path"]).unlink()
    reply = ra.evaluate_message(
        node, MODEL, ra.job_json("eval-job-0005", sites=job_sites), grant_sites=grant_sites
    )
    assert reply.has_error() and reply.error.code == CODE_NOT_IN_STUDY
    assert _history(node) == [] and _candidates(node) == []


def test_a_node_outside_the_sites_declines_train(tmp_path):
    from flwr.app import ArrayRecord, Context, Message, RecordDict

    from node.flower.client_app import app as client_app
    from protos.codec import encode_risk
    from shared.grant import Grant, sign_grant
    from shared.protocol import RISK_ARRAYS_KEY, RiskJob

    node = ra.make_node(tmp_path)
    job = RiskJob.model_validate_json(ra.job_json("train-job-0006", sites=("other",)))
    grant = sign_grant(Grant(kind="risk", grant_id=job.job_id, sites=(ra.SITE,), terms=job.terms()), node.key)
    content = RecordDict({RISK_ARRAYS_KEY: ArrayRecord(MODEL), "config": encode_risk(job, grant)})
    msg = Message(content=content, dst_node_id=1, message_type="train", group_id="t")
    msg.metadata.__dict__["_message_id"] = "train-1"
    reply = client_app(
        msg, Context(run_id=1, node_id=1, node_config=node.config, state=RecordDict(), run_config={})
    )
    assert reply.has_error() and reply.error.code == CODE_NOT_IN_STUDY
    assert _history(node) == []


def test_the_noise_sd_is_sigma(tmp_path):
    """10 releases × 61 entries against the exact aggregate the node would have computed."""
    node = ra.make_node(tmp_path, budget=50.0)
    exact = eval_aggregate(
        prob=predict_proba(arch=RiskArch(), arrays=MODEL, z=scale(node.X, FEATURES)), y=node.y, n_bins=20
    )
    draws = []
    for i in range(10):
        reply = ra.evaluate_message(node, MODEL, ra.job_json(f"eval-sd-{i:04d}", eval_epsilon=1.0))
        got = reply.content.array_records[RISK_EVAL_KEY].to_numpy_ndarrays()
        draws.append(np.concatenate([g - e for g, e in zip(got, exact.to_arrays())]))
    noise = np.concatenate(draws)
    sigma = eval_noise_sigma(epsilon=1.0, delta=1e-5)
    assert noise.size == 610
    assert abs(noise.std(ddof=1) / sigma - 1) < 0.1  # SE of the ratio ≈ 2.9 %
    assert abs(noise.mean()) < 4 * sigma / math.sqrt(noise.size)
    # μ(ε=1, δ=1e-5) under the ledger's default (exact Gaussian) accountant: 3.731 (RDP: 4.045)
    assert sigma == pytest.approx(EVAL_SENSITIVITY * 3.7306, rel=1e-3)


def test_bad_values_are_clipped_never_echoed(tmp_path):
    import pandas as pd

    node = ra.make_node(tmp_path)
    frame = pd.read_csv(node.config["data-path"])
    frame.loc[3, "age"] = 999.0  # out of bounds
    frame["sbp"] = frame["sbp"].astype(object)
    frame.loc[5, "sbp"] = "C-000001"  # an identifier in a number column
    frame.loc[7, "cv_event"] = 7  # not 0/1
    frame.to_csv(node.config["data-path"], index=False)
    reply = ra.evaluate_message(node, MODEL, ra.job_json("eval-job-0008"))
    assert not reply.has_error(), reply.error.reason
