"""Attack: a crafted risk model that boxes one person into their own probability bin, sent to
``evaluate`` (issue #16, "Unguarded message types"; :mod:`.risk_attack`).

Before (main at 9ade371, the same script run there: ``python tests/security/risk_attack.py``):
20 of 20 targets (10 with an event, 10 without) read exactly (top bin pos/neg = 1/0 or 0/1),
0 ledger rows, and the attacker's model was what ``rehealth node score`` served afterwards.
After: every reply is a charged Gaussian release; the read is no better than the DP
hypothesis-testing bound allows, and the model is a candidate nobody serves.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from node.risk.calibration import calibration_check
from node.risk.model_store import ModelStore
from shared.dp.mechanisms import secure_rng
from shared.features import FEATURES, scale
from shared.risk.arch import RiskArch, predict_proba
from shared.risk.metrics import eval_aggregate, eval_noise_sigma, noisy_aggregate

from . import risk_attack as ra

EPS, DELTA = 0.2, 1e-5


def test_the_old_exact_reply_reads_the_persons_event(tmp_path):
    """What main's handler answered (``eval_aggregate`` unnoised, 1000 bins): the event itself."""
    node = ra.make_node(tmp_path)
    for t in ra.isolatable(node.X, node.y, 10):
        prob = predict_proba(arch=RiskArch(), arrays=ra.isolating_model(node.X, t), z=scale(node.X, FEATURES))
        agg = eval_aggregate(prob=prob, y=node.y)
        assert (agg.pos[-1], agg.neg[-1]) == (node.y[t], 1 - node.y[t])


def test_the_attack_through_the_client_app_reads_nothing_exact_and_is_charged(tmp_path):
    got = ra.run(tmp_path, targets=10)
    assert got["people"] == got["answered"] == 10 and got["events"] == 5
    assert got["exact"] == 0  # no reply is a pair of integer counts
    assert got["ledger_rows"] == 10  # one charged release per signed job
    assert got["served_model"] is None  # the attacker's model is not served


def test_the_attacks_accuracy_is_within_the_dp_bound(tmp_path):
    """The attack's own decision rule (event iff top-bin pos > neg) over 4,000 simulated people:
    each a random isolatable row with a fair-coin event, answered by the node's release step
    (``noisy_aggregate`` at the node's σ, CSPRNG). DP at (ε, δ) bounds any test's accuracy by
    e^ε/(1+e^ε) + δ = 0.5498 at ε = 0.2; this rule's is Φ(1/(σ√2)) ≈ 0.509."""
    node = ra.make_node(tmp_path)
    sigma = eval_noise_sigma(epsilon=EPS, delta=DELTA)
    targets = ra.isolatable(node.X, node.y, 20)
    probs = {
        t: predict_proba(arch=RiskArch(), arrays=ra.isolating_model(node.X, t), z=scale(node.X, FEATURES))
        for t in targets
    }
    rng, coin = secure_rng(), np.random.default_rng(5)
    trials, correct = 4000, 0
    for _ in range(trials):
        t = targets[coin.integers(len(targets))]
        y = node.y.copy()
        y[t] = coin.integers(2)
        noisy = noisy_aggregate(eval_aggregate(prob=probs[t], y=y, n_bins=20), sigma=sigma, rng=rng)
        correct += int(noisy.pos[-1] > noisy.neg[-1]) == y[t]
    accuracy = correct / trials
    bound = math.exp(EPS) / (1 + math.exp(EPS)) + DELTA
    assert accuracy <= bound, (accuracy, bound)
    assert abs(accuracy - 0.5) < 4 * 0.5 / math.sqrt(trials) + 0.01  # ≈ 0.509 expected


def test_a_model_sent_via_evaluate_is_not_served_and_fails_approval(tmp_path):
    node = ra.make_node(tmp_path, n=2000)
    t = ra.isolatable(node.X, node.y, 2)[0]
    arrays = ra.isolating_model(node.X, t)
    reply = ra.evaluate_message(node, arrays, ra.job_json("attack-job-serve"))
    assert not reply.has_error()
    store = ModelStore(tmp_path / "state" / "models")
    [version] = store.candidate_versions()
    with pytest.raises(Exception, match="await approval"):
        store.latest()
    # the operator's check refuses it: everyone but one person predicted at ~0
    check = calibration_check(
        prob=predict_proba(arch=RiskArch(), arrays=arrays, z=scale(node.X, FEATURES)), y=node.y
    )
    assert not check.passed and check.oe_ratio > 10
