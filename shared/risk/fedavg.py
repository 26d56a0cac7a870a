"""Federated averaging: the example-weighted mean of parameter lists.

FedAvg (McMahan et al., 2017, Algorithm 1) sets the global model to
:math:`w = \\sum_k n_k w_k / \\sum_k n_k`, where node ``k`` trained on ``n_k`` examples.

>>> import numpy as np
>>> weighted_average(arrays_list=[[np.array([0.0])], [np.array([3.0])]], weights=[2, 1])
[array([1.])]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from shared.errors import SpecError


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
