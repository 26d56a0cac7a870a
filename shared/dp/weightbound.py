r"""Bounding the largest weight of the ATT: adjacent strata with few released controls merged
(issue #19, "bounding the largest weight").

Under DP the ATT is one weighted sum per outcome (:mod:`shared.dp.wsum`): a treated person
weighs 1 and a control of stratum b weighs :math:`v_b = n_{bT}/n_{bC}`, and both the release's
noise (σ ∝ :math:`\max(1, \max_b v_b)`) and the physical limit (:mod:`shared.dp.limit`) grow
with the largest weight. In the highest score strata the controls are few: on the benchmark's
10k-treated federation the top stratum of 20 had :math:`v \approx 3\text{–}4`, so one control
there moved the sum three to four times as much as any treated person, and the whole release
paid for it.

**The rules** (:func:`weight_groups`), post-processing of the released noisy counts only: walk
the strata from the highest score down, summing a stratum into the one below while the group
breaks a rule, until it holds or the lowest stratum is reached. The groups are adjacent score
intervals (the merged strata's inner edges are dropped), so the estimand stays the ATT over
every treated person in the used strata: nobody is trimmed (attrition 0), the top of the score
range is only stratified more coarsely, which the benchmark measures as bias.

* **Shipped: at least 10σ of noisy controls** (:data:`MIN_CONTROL_SIGMAS`), the 10σ of the
  strata rule (:data:`shared.dp.strata.CELL_NOISE_RATIO`, "count noise under 10 %"), fixed
  before this lever was measured: no control weight n_bT/n_bC rests on a count the noise moves
  by more than 10 %. At 10k treated over five nodes (ε = 1, SecAgg+: 124 controls) it merges
  the top one to three strata; at those merges without noise (ε = 1000, 8 seeds, paired) the
  claims bias moved by +7 (0.08 exact SEs), at the 277 of local noise by +40 (0.45).
* **Measured and not shipped: no control above the treated weight 1** (:data:`MAX_CONTROL_WEIGHT`),
  the bound derived from the sensitivity (:math:`\max(1, \max_b v_b)`: below 1 nothing more is
  gained). It had to merge the top third of the strata into one, and without noise (ε = 1000)
  left a bias of +217 in claims cost (2.8 exact SEs) and −0.35 absence days (2.2; 6 seeds): the residual
  confounding of one wide stratum where uptake rises fastest. Kept switchable for the benchmark.

**Noise after merging:** a merged stratum's count is the sum of m released counts, so its noise
SD is :math:`\sigma\sqrt m` (:func:`cell_count_sigma`); the workflow carries the multiplicities
into both privacy SEs and the choice of the weighted sum's centres
(:func:`shared.dp.workflow.dp_estimate`, :func:`shared.dp.workflow.dp_wsum_centers`). The
used-cell threshold stays one count's 2σ: a merged stratum is a sum of occupied strata, far
above it, and the estimator applies the same one.
"""

from __future__ import annotations

import numpy as np

from shared.dp.strata import CELL_NOISE_RATIO
from shared.psm.table import PsmTable

__all__ = ["MAX_CONTROL_WEIGHT", "MIN_CONTROL_SIGMAS", "cell_count_sigma", "merge_table", "weight_groups"]

#: The largest weight a control may carry relative to a treated person (module docstring):
#: 1 is the value derived from the treated weight. **Off (None) by default**: measured, merging
#: to it biased the estimate (residual confounding in the merged top stratum, 2.8 exact SEs on
#: claims without noise; ``docs/benchmarks/privacy_levers.md``), so it is not shipped.
MAX_CONTROL_WEIGHT: float | None = None
#: Merge a stratum with the one below while its noisy control count is under this many SDs of
#: its count noise: the 10σ of :data:`shared.dp.strata.CELL_NOISE_RATIO` (the strata rule's
#: "count noise under 10 %"), so no control weight n_bT/n_bC rests on a count the noise moves
#: by more than 10 %. None turns it off.
MIN_CONTROL_SIGMAS: float | None = CELL_NOISE_RATIO


def weight_groups(count, bound: float | None = None, min_controls: float | None = None) -> np.ndarray:
    """``(S,)`` group index per stratum (0 = lowest score group, non-decreasing), from the
    released ``(S, 2)`` counts (control, treated) alone.

    A group closes (walking down from the top) once its treated are at most ``bound`` × its
    controls and its controls at least ``min_controls``; a criterion left None is not applied,
    so with both None every stratum is its own group. Deterministic: the same counts and
    criteria give the same groups.

    >>> weight_groups([[100, 10], [80, 20], [30, 30], [5, 10]], bound=1.0).tolist()
    [0, 1, 1, 1]
    """
    n = np.asarray(count, dtype=float)  # summed as released: the merged stratum holds these sums
    s = n.shape[0]
    if bound is None and min_controls is None:
        return np.arange(s)
    top_down: list[list[int]] = []
    current: list[int] = []
    c = t = 0.0
    for b in range(s - 1, -1, -1):
        current.append(b)
        c, t = c + n[b, 0], t + n[b, 1]
        cc, tt = max(c, 0.0), max(t, 0.0)  # a negative noisy sum is no controls, as the estimator reads it
        if (bound is None or tt <= bound * cc) and (min_controls is None or cc >= min_controls):
            top_down.append(current)
            current, c, t = [], 0.0, 0.0
    if current:  # the lowest strata could not reach the bound on their own: join the group above
        if top_down:
            top_down[-1].extend(current)
        else:
            top_down.append(current)
    groups = np.empty(s, dtype=np.int64)
    for g, members in enumerate(reversed(top_down)):
        groups[members] = g
    return groups


def merge_table(table: PsmTable, groups) -> PsmTable:
    """The table with each group's cells summed and its inner edges dropped."""
    g = np.asarray(groups, dtype=np.int64)
    k = int(g.max()) + 1
    if np.all(g == np.arange(table.n_strata)):
        return table

    def add(a: np.ndarray) -> np.ndarray:
        out = np.zeros((k,) + a.shape[1:])
        np.add.at(out, g, a)
        return out

    last = np.array([np.max(np.nonzero(g == j)[0]) for j in range(k)])
    edges = np.concatenate(([table.edges[0]], table.edges[last + 1]))
    return PsmTable(
        edges=edges,
        count=add(table.count),
        sum_y=add(table.sum_y),
        sumsq_y=add(table.sumsq_y),
        sum_z=add(table.sum_z),
        sumsq_z=add(table.sumsq_z),
    )


def cell_count_sigma(sigma: float, groups) -> np.ndarray:
    """``(G,)`` noise SD of each merged stratum's count: σ√m over its m released strata."""
    g = np.asarray(groups, dtype=np.int64)
    return float(sigma) * np.sqrt(np.bincount(g).astype(float))
