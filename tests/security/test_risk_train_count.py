"""A risk-training reply's FedAvg weight is a charged noisy count, not the node's row count.

The attack: a curious coordinator runs two risk jobs, one before and one after a person joins
or leaves a site, and reads each reply's ``num-examples``. With the exact training row count
there (uncharged) the difference said exactly that one person had changed, and a reply also
carried the ledger's running total, which the node's other releases (HR views, other studies)
move. Now each job's weight is one Gaussian release of the count, charged to the ledger once
per job and served again to the job's later rounds. Through the real ClientApp, a real SQLite
ledger and a real cohort file (Opacus trains on 400 rows).
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import risk_attack as ra  # noqa: E402

from node.ledger import PrivacyLedger  # noqa: E402
from shared.risk.fedavg import COUNT_EPSILON, count_sigma  # noqa: E402

MODEL = [np.zeros((1, 16)), np.zeros(1)]


def _train(node, job_id: str, *, message_id: str):
    reply = ra.send_message(node, MODEL, ra.job_json(job_id), message_type="train", message_id=message_id)
    assert not reply.has_error(), reply.error.reason
    return dict(reply.content.metric_records["metrics"])


def _ledger(node) -> PrivacyLedger:
    return PrivacyLedger(f"sqlite:///{Path(node.config['state-dir']) / 'ledger.db'}")


def test_two_jobs_either_side_of_one_leaver_do_not_tell_the_count(tmp_path):
    node = ra.make_node(tmp_path, n=400)
    before = _train(node, "count-job-0001", message_id="m1")
    cohort = Path(node.config["data-path"])
    pd.read_csv(cohort).iloc[:-1].to_csv(cohort, index=False)  # one person leaves
    after = _train(node, "count-job-0002", message_id="m2")

    assert set(before) == {"num-examples"}  # no ledger total, no other metric of the rows
    # the exact counts would be 400 and 399; each noisy one misses its count w.p. ≈ 0.99
    assert (before["num-examples"], after["num-examples"]) != (400, 399)
    counts = [h for h in _ledger(node).history() if h.query == "risk_count"]
    assert [h.study_id for h in counts] == ["count-job-0001", "count-job-0002"]
    sigma = count_sigma(delta=1e-5)
    assert all(h.sigma == pytest.approx(sigma) and h.sensitivity == 1.0 for h in counts)
    # alone on a fresh ledger, one such release spends at most COUNT_EPSILON
    fresh = PrivacyLedger(f"sqlite:///{tmp_path / 'fresh.db'}")
    fresh.ensure_budget(epsilon=1.0, delta=1e-5)
    one = fresh.charge(study_id="s", query="risk_count", sigma=sigma, sensitivity=1.0)
    assert 0.05 < one.epsilon_after <= COUNT_EPSILON + 1e-9


def test_a_later_round_of_the_job_gets_the_same_count_uncharged(tmp_path):
    node = ra.make_node(tmp_path, n=400)
    first = _train(node, "count-job-0003", message_id="r1")
    second = _train(node, "count-job-0003", message_id="r2")  # the job's next round
    assert first == second  # one draw per job: re-drawing per round would average out
    counts = [h for h in _ledger(node).history() if h.query == "risk_count"]
    assert len(counts) == 1


def test_an_evaluation_reply_does_not_carry_the_ledgers_running_total(tmp_path):
    """The same attack on the evaluation reply: its ``epsilon-spent`` was the ledger's running
    total, which the job's DP-SGD steps (⌈n / batch⌉ per epoch: the row count) and the node's
    other releases move. Two nodes alike but for one earlier charge must answer alike."""
    replies = []
    for name, earlier in (("quiet", False), ("busy", True)):
        node = ra.make_node(tmp_path / name, n=400)
        if earlier:  # e.g. an HR view released before the job
            ledger = _ledger(node)
            ledger.ensure_budget(epsilon=float(node.config["budget-epsilon"]), delta=1e-5)
            ledger.charge(study_id="hr-view", query="group_view", sigma=5.0, sensitivity=1.0)
        reply = ra.evaluate_message(node, MODEL, ra.job_json("eval-job-0001"))
        assert not reply.has_error(), reply.error.reason
        replies.append(dict(reply.content.metric_records["metrics"]))
    assert replies[0] == replies[1]
    assert set(replies[0]) == {"eval-epsilon", "eval-sigma"}  # the job's own public terms
