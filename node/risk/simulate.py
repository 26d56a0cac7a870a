"""In-process federated DP training: FedAvg rounds over local DP-SGD, without Flower.

The same functions the Flower handlers call (:func:`node.risk.train.local_train` on each node,
:func:`shared.risk.fedavg.weighted_average` at the coordinator), looped in one process. Used by the
benchmark and by the unit test that checks the federated DP model against the centralized one; the
real-SuperNode run goes through Flower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from node.risk.model import initial_arrays
from node.risk.train import DpSgdSpend, composed_epsilon, local_train, plan_noise
from shared.risk.arch import RiskArch
from shared.risk.fedavg import weighted_average


@dataclass(frozen=True)
class FederatedFit:
    """Result of :func:`train_federated`: final weights and each node's privacy spend."""

    arrays: list[np.ndarray]
    rounds: int
    spends: tuple[tuple[DpSgdSpend, ...], ...]  # per node, one per round

    def epsilon(self, *, delta: float) -> float:
        """The largest ε any node spent, composed over its rounds."""
        return max(
            composed_epsilon(
                history=[s.history_entry() for s in node], delta=delta, accountant=node[0].accountant
            )
            for node in self.spends
        )


def train_federated(
    *,
    nodes: Sequence[tuple[np.ndarray, np.ndarray]],
    target_epsilon: float,
    rounds: int = 8,
    epochs: int = 1,
    batch_size: int = 1024,
    lr: float = 0.05,
    max_grad_norm: float = 5.0,
    delta: float = 1e-5,
    optimizer_name: str = "adam",
    arch: RiskArch = RiskArch(),
    seed: int = 0,
) -> FederatedFit:
    """FedAvg over ``rounds`` rounds; each node spends ``target_epsilon`` in total.

    Args:
        nodes: per node ``(X, y)``, raw features and 0/1 events.
        target_epsilon: each node's total ε over all rounds (σ from :func:`plan_noise`).
        rounds, epochs, batch_size, lr, max_grad_norm, delta, optimizer_name, arch: as in
            :func:`node.risk.train.local_train`.
        seed: seeds every node's sampling and noise (reproducible benchmark).
    """
    arrays = initial_arrays(arch, seed=seed)
    sigmas = [
        plan_noise(
            n=len(y),
            batch_size=batch_size,
            epochs=epochs,
            rounds=rounds,
            target_epsilon=target_epsilon,
            delta=delta,
        )
        for _, y in nodes
    ]
    spends: list[list[DpSgdSpend]] = [[] for _ in nodes]
    for r in range(rounds):
        results = [
            local_train(
                arrays=arrays,
                X=X,
                y=y,
                arch=arch,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                noise_multiplier=sigma,
                max_grad_norm=max_grad_norm,
                delta=delta,
                optimizer_name=optimizer_name,
                seed=seed + 1000 * r + k,
            )
            for k, ((X, y), sigma) in enumerate(zip(nodes, sigmas))
        ]
        arrays = weighted_average(
            arrays_list=[res.arrays for res in results], weights=[res.n for res in results]
        )
        for k, res in enumerate(results):
            spends[k].append(res.spend)
    return FederatedFit(arrays=arrays, rounds=rounds, spends=tuple(tuple(s) for s in spends))
