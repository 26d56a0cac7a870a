"""How far the federated DP risk model falls behind the centralized one, per FedAvg schedule.

The evidence behind the schedule of ``test_risk_flower.py`` (rounds × local epochs): the same
rows, held-out cohort and centralized fit as that test, and the nodes' own training code
(:func:`node.risk.train.local_train`, :func:`shared.risk.fedavg.weighted_average`, σ from
:func:`node.risk.train.plan_noise`, zero start, CSPRNG noise), looped in one process instead of
over Flower. Prints the centralized-minus-federated AUC of each run.

    PYTHONPATH=. python tests/integration/risk_schedule.py ROUNDS,EPOCHS,SCALE,RUNS ...
    # e.g. 8,1,0.3,6 4,2,0.3,6
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from coordinator.flower.risk_workflow import initial_arrays
from node.risk.train import local_train, plan_noise
from shared.features import FEATURE_NAMES, FEATURES, scale
from shared.risk.arch import RiskArch, model_input, predict_proba
from shared.risk.fedavg import weighted_average
from shared.synth import generate_cohort, generate_federation


def gaps(
    *,
    rounds: int,
    epochs: int,
    scale_: float,
    runs: int,
    target_epsilon: float = 8.0,
    batch_size: int = 1024,
    lr: float = 0.05,
    seed: int = 3,
) -> list[float]:
    fed = generate_federation(seed=seed, sites=3, scale=scale_)
    nodes = [
        (s.cohort[list(FEATURE_NAMES)].to_numpy(float), s.cohort["cv_event"].to_numpy(float))
        for s in fed.sites
    ]
    train = pd.concat([s.cohort for s in fed.sites], ignore_index=True)
    held_out, _ = generate_cohort(n=20000, seed=1234, profile="insurer_mid_1")
    z_train = scale(train[list(FEATURE_NAMES)].to_numpy(float), FEATURES)
    z_test = scale(held_out[list(FEATURE_NAMES)].to_numpy(float), FEATURES)
    central = LogisticRegression(max_iter=2000).fit(model_input(z_train), train["cv_event"])
    auc_central = roc_auc_score(held_out["cv_event"], central.predict_proba(model_input(z_test))[:, 1])
    arch = RiskArch()
    sigmas = [
        plan_noise(
            n=len(y),
            batch_size=batch_size,
            epochs=epochs,
            rounds=rounds,
            target_epsilon=target_epsilon,
            delta=1e-5,
        )
        for _, y in nodes
    ]
    out = []
    for _ in range(runs):
        arrays = initial_arrays(arch)
        for _ in range(rounds):
            res = [
                local_train(
                    arrays=arrays,
                    X=X,
                    y=y,
                    arch=arch,
                    epochs=epochs,
                    batch_size=batch_size,
                    lr=lr,
                    noise_multiplier=s,
                    delta=1e-5,
                )
                for (X, y), s in zip(nodes, sigmas)
            ]
            arrays = weighted_average(arrays_list=[r.arrays for r in res], weights=[r.n for r in res])
        auc_fed = roc_auc_score(held_out["cv_event"], predict_proba(arch=arch, arrays=arrays, z=z_test))
        out.append(auc_central - auc_fed)
        print(
            f"rounds={rounds} epochs={epochs} gap={out[-1]:.4f} "
            f"(centralized {auc_central:.4f}, federated {auc_fed:.4f})",
            flush=True,
        )
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        r, e, s, n = arg.split(",")
        g = np.array(gaps(rounds=int(r), epochs=int(e), scale_=float(s), runs=int(n)))
        print(
            f"rounds={r} epochs={e}: mean {g.mean():.4f}, largest |gap| {np.abs(g).max():.4f}, "
            f"over 0.02: {(np.abs(g) > 0.02).sum()} of {len(g)}",
            flush=True,
        )
