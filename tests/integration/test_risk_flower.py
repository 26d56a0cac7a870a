"""Federated DP training of the risk model over real SuperNodes (Flower FedAvg + Opacus),
against a centralized non-private logistic regression on the same rows."""

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from coordinator.files import load_spec
from coordinator.study.runner import node_state_dir, train_risk_local
from coordinator.synth import write_federation
from node.flower.risk_handlers import COUNT_QUERY
from node.ledger import PrivacyLedger
from node.risk.model_store import ModelStore
from shared.features import FEATURE_NAMES, FEATURES, scale
from shared.protocol import RiskJob
from shared.risk.arch import RiskArch, model_input, predict_proba
from shared.risk.fedavg import COUNT_EPSILON
from shared.synth import generate_cohort, generate_federation

pytestmark = pytest.mark.integration


def test_federated_dp_model_matches_centralized_auc_at_eps_8(tmp_path):
    """Four FedAvg rounds of two local epochs each, not eight of one: the same DP-SGD work
    (eight expected passes over each node's rows, σ planned for all of them at the same total
    ε = 8), in five Flower message rounds instead of nine (each starts a ClientApp process per
    node, which imports torch and Opacus). Several rounds still carry the averaged model from
    one round to the next, and every ledger must show each round with the job's epochs.

    The AUC tolerance (0.02) is the one the eight-round schedule was held to, not loosened.
    In-process runs of the nodes' own ``local_train`` and ``weighted_average`` on these rows
    (zero start, CSPRNG noise, as here: ``tests/integration/risk_schedule.py``) gave
    centralized-minus-federated AUC gaps of mean 0.0063, SD 0.0042, largest 0.0168 in 17 runs
    of this schedule, against mean 0.0073, SD 0.0035, largest 0.0132 in 9 runs of eight
    rounds of one epoch: the same distribution within its sampling error (0.02 lies 3.2 and
    3.7 SDs above the two means). Fewer, longer rounds were not: three rounds of three epochs
    reached 0.0197 in 4 runs and two of four 0.0229 in 3 (more local steps between averages
    let each node's noise walk further), and four rounds of one epoch, half the steps, had
    failed the check.
    """
    fed = generate_federation(seed=3, sites=3, scale=0.3)
    spec_path = write_federation(fed, tmp_path / "data")
    spec = load_spec(spec_path)
    job = RiskJob(
        job_id="risk-test-0001",
        rounds=4,
        epochs=2,
        target_epsilon=8.0,
        sites=tuple(s.name for s in spec.sites),
    )
    summary = train_risk_local(spec_path, tmp_path / "run", job, timeout_s=900)

    with np.load(tmp_path / "run" / "risk_model.npz") as f:
        arrays = [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]
    train = pd.concat([s.cohort for s in fed.sites], ignore_index=True)
    held_out, _ = generate_cohort(n=20000, seed=1234, profile="insurer_mid_1")
    z_train = scale(train[list(FEATURE_NAMES)].to_numpy(float), FEATURES)
    z_test = scale(held_out[list(FEATURE_NAMES)].to_numpy(float), FEATURES)
    central = LogisticRegression(max_iter=2000).fit(model_input(z_train), train["cv_event"])
    auc_central = roc_auc_score(held_out["cv_event"], central.predict_proba(model_input(z_test))[:, 1])
    auc_fed = roc_auc_score(held_out["cv_event"], predict_proba(arch=RiskArch(), arrays=arrays, z=z_test))
    assert auc_fed > 0.6 and abs(auc_central - auc_fed) <= 0.02, (auc_central, auc_fed)
    # the federated evaluation pooled the nodes' noisy releases (DP at eval_epsilon)
    privacy = summary["evaluation_privacy"]
    assert privacy["dp"] and privacy["epsilon"] == job.eval_epsilon
    assert abs(summary["evaluation"]["n"] - len(train)) < 6 * privacy["sigma_pooled"] * job.eval_bins**0.5
    assert 0.5 < summary["evaluation"]["auc"] < 1
    # torch and Opacus: imported here, by this test only, not when tests are collected
    from node.risk.train import steps_per_epoch

    rows = {s.name: len(s.cohort) for s in fed.sites}
    for s in spec.sites:
        state = node_state_dir(s.data)  # beside the site's data, whatever the output folder
        ledger = PrivacyLedger(f"sqlite:///{state / 'ledger.db'}")
        history = ledger.history()
        # one noisy row count per job (FedAvg's weight, charged once, re-served to later rounds)
        counts = [h for h in history if h.query == COUNT_QUERY]
        assert len(counts) == 1 and counts[0].epsilon <= COUNT_EPSILON + 1e-6, s.name
        history = [h for h in history if h.query != COUNT_QUERY]
        assert [h.query for h in history] == ["risk_train"] * job.rounds + ["risk_evaluate"]
        assert {h.status for h in history + counts} == {"sent"}  # every charged reply was handed to Flower
        assert all(h.sample_rate < 1 and h.steps >= 1 for h in history[:-1])
        # each round charged the job's epochs, not one: ⌈n / batch⌉ Poisson steps per epoch
        per_round = job.epochs * steps_per_epoch(n=rows[s.name], batch_size=job.batch_size)
        assert [h.steps for h in history[:-1]] == [per_round] * job.rounds, s.name
        assert history[-1].epsilon <= job.eval_epsilon + 1e-6
        assert 0 < ledger.spent() <= job.target_epsilon + job.eval_epsilon + COUNT_EPSILON + 1e-6
        store = ModelStore(state / "models")  # the node keeps the model it was sent, as a candidate
        assert store.versions() == []
        [version] = store.candidate_versions()
        stored = store.load_candidate(version)
        assert all(np.allclose(a, b) for a, b in zip(stored.arrays, arrays))
