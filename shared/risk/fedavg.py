"""Federated averaging: the example-weighted mean of parameter lists.

FedAvg (McMahan et al., 2017, Algorithm 1) sets the global model to
:math:`w = \\sum_k n_k w_k / \\sum_k n_k`, where node ``k`` trained on ``n_k`` examples.
A node's exact ``n_k`` is a statistic of its rows: it sends a noisy count instead, one Gaussian
release per job at :data:`COUNT_EPSILON`, charged to its ledger (:func:`count_sigma`,
:func:`fedavg_weight`).

>>> import numpy as np
>>> weighted_average(arrays_list=[[np.array([0.0])], [np.array([3.0])]], weights=[2, 1])
[array([1.])]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from shared.errors import SpecError

#: ε of the one noisy row count each node releases per risk job, its FedAvg weight. The exact
#: count told a coordinator, uncharged, whether a row had joined or left between two jobs; at
#: δ = 1e-5 this ε gives σ ≈ 37 rows, a weight error of a few per cent at a site of a thousand.
COUNT_EPSILON = 0.1
#: one person changes a node's row count by at most one
COUNT_SENSITIVITY = 1.0


def count_sigma(*, delta: float) -> float:
    """Noise SD of a node's noisy row count at the job's ``delta`` (a release costing at most
    :data:`COUNT_EPSILON` on a fresh ledger); node and coordinator compute it alike."""
    from shared.dp.plan import single_release_multiplier

    return single_release_multiplier(epsilon=COUNT_EPSILON, delta=delta) * COUNT_SENSITIVITY


def fedavg_weight(noisy_count: float) -> int:
    """The FedAvg weight from a noisy count: rounded, at least one (post-processing, free)."""
    return max(1, int(round(noisy_count)))


def weighted_average(
    *, arrays_list: Sequence[Sequence[np.ndarray]], weights: Sequence[float]
) -> list[np.ndarray]:
    """Weighted mean, layer by layer, of the nodes' parameter lists.

    Args:
        arrays_list: one parameter list per node, all with the same layout.
        weights: one non-negative weight per node (its number of training examples).

    Returns:
        The averaged parameter list (float64).

    Raises:
        SpecError: no nodes, mismatched layouts, negative weights or a zero total weight.
    """
    if not arrays_list:
        raise SpecError("FedAvg needs at least one node's parameters")
    if len(weights) != len(arrays_list):
        raise SpecError(f"{len(arrays_list)} parameter lists but {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise SpecError(f"FedAvg weights must be finite, non-negative, with a positive sum: {w}")
    layout = [np.shape(a) for a in arrays_list[0]]
    for k, arrays in enumerate(arrays_list):
        if [np.shape(a) for a in arrays] != layout:
            raise SpecError(
                f"node {k}: parameter shapes {[np.shape(a) for a in arrays]} differ from {layout}"
            )
    w = w / w.sum()
    return [
        sum(wk * np.asarray(arrays[i], dtype=np.float64) for wk, arrays in zip(w, arrays_list))
        for i in range(len(layout))
    ]
