r"""The ATT released as one weighted sum per outcome (``psm_wsum``), both sides of it.

Once the noisy counts of the PSM table (``psm_main``) are public, every person's weight in the
stratified ATT is fixed: over the strata the estimator uses (both arms at least
:func:`shared.dp.strata.dp_min_cell`), with :math:`N = \sum_b n_{bT}`,

.. math::
    \widehat{ATT} = \frac{1}{N}\Big(\sum_i v_i\,(y_i - c_i)
        + \sum_b n_{bT}\,(c_{bT} - c_{bC})\Big), \qquad
    v_i = 1 \text{ (treated)}, \quad v_i = -\frac{n_{bT}}{n_{bC}} \text{ (control in } b),

zero weight outside the used strata, and :math:`c_i = c_{b,arm}` a public centre per cell and
outcome (:func:`wsum_centers`). With exact counts the centres cancel; with noisy ones they
decide how much of the counts' noise reaches the estimate (below). A node releases
:math:`W = \sum_i v_i (y_i - c_i)` (O values) with Gaussian noise at :math:`\Delta_2 = \max_{cell}
|v|\,\lVert\max(c, 1 - c)\rVert_2` (:func:`wsum_sensitivity`: a row moves W by
:math:`v_i (y_i - c_i)`), summed over SecAgg+ like the other releases.

**Centres.** The counts' noise reaches the estimate as :math:`e_{bT}(c_{bT} - \bar y_{bC} -
ATT)/N` and :math:`e_{bC}\,w_b(\bar y_{bC} - c_{bC})/n_{bC}` (module's SE below): at the fixed
centre ½ the first, summed over S strata, was larger than the weighted sum's own noise (10k
treated, ε = 1: SD 0.0033 against 0.0026 on the [0, 1] scale, 20 strata, claims' mean near
0.02). So each cell is centred on its noisy mean from the cell release (treated on
:math:`\bar y_{bT}`, which turns the first term into :math:`(\tau_b - ATT)/N`), clipped so the
cell's :math:`|v|\max(c, 1 - c)` stays within :math:`v_{max}/2`: the sensitivity is
:math:`\sqrt O\,v_{max}/2`, the same as at ½ everywhere, and only the cells of the largest
weight keep ½. The weights are scaled by :math:`N` (treated
weight 1, not 1/N) so the sums are of the order of the row count, as SecAgg+'s fixed-point
range expects (:mod:`shared.secure_sum`). The bound :math:`v_{max}/2` is the default reach R;
once merged strata (:mod:`shared.dp.weightbound`) bring the controls' weights near the treated
weight 1, holding every treated cell at ½ lets the count noise through, so the workflow picks R
from a fixed grid in :math:`[v_{max}/2, v_{max}]` by this module's predicted privacy variance
(:func:`shared.dp.workflow.dp_wsum_centers`); the node computes Δ from the centres it is sent
either way.

**What the node checks** (:func:`node_weights`, before any data is read): the query carries
the strata edges, the noisy counts of the strata to use (0 for a stratum left out), the
centres (in [0, 1]) and the largest weight :math:`v_{max}` the coordinator computed from the
counts. The node recomputes the
weights from the counts itself, refuses counts that are not finite, negative, or one arm of a
stratum without the other (a used control count below 1 would make a weight exceed the treated
count), and refuses a declared :math:`v_{max}` that is not the one the counts give: the
coordinator's CI assumes σ = μ·Δ, and the node charges, and adds noise by, the Δ it computes
itself from the weights and centres. The
guarantee does not depend on the weights' values (σ scales with the largest one), so the
checks protect the CI's honesty and the node's books, not the privacy loss, which is the
plan's μ.

**Privacy SE** (:func:`wsum_privacy_se`): the weights are public before the release, so the
mechanism's noise on the estimate is :math:`\sigma_W/N` exactly; the counts' noise enters
through the weights. Linearising :math:`W/N` in the count errors :math:`e_{bT}, e_{bC}` (the
sum runs over the true rows; the weights use the noisy counts),

.. math::
    \mathrm{Var}_{priv} = \frac{\sigma_W^2}{N^2} + \sigma_n^2 \sum_b \Big(
        \frac{w_b^2 (\bar y_{bC} - c_{bC})^2}{n_{bC}^2}
        + \frac{(c_{bT} - \bar y_{bC} - \widehat{ATT})^2}{N^2}\Big), \quad w_b = n_{bT}/N,

the count terms of :func:`shared.dp.uncertainty.att_privacy_se` (with its second-order
:math:`E[1/\hat n^2]`), the cell means :math:`\bar y_{bC}` read off the (noisier) cell release.
Verified against re-draws of both noises in ``tests/unit/test_dp_wsum.py``.
"""

from __future__ import annotations

import math

import numpy as np

from shared.dp.forms import CENTER
from shared.dp.uncertainty import used_cells
from shared.errors import QueryRefused
from shared.psm.strata import stratum_index

__all__ = [
    "att_weights",
    "max_weight",
    "node_weights",
    "weighted_sums",
    "wsum_att",
    "wsum_centers",
    "wsum_sensitivity",
    "wsum_privacy_se",
    "wsum_query_counts",
]

#: Relative tolerance of the declared largest weight against the node's own (float round-off).
_WEIGHT_RTOL = 1e-9
#: The largest count a ``psm_wsum`` query may carry (more people than live on earth): a weight,
#: a ratio of counts, then stays below it, and no sum of weighted rows can overflow. A count of
#: 1e306 made the controls' weighted sum overflow exactly when their Σy passed the threshold it
#: set, and the node failed after its charge: an exact yes/no on, e.g., the number of events
#: among the controls of chosen strata (tests/security/test_answer_oracles.py g).
MAX_COUNT = 1e10


def att_weights(count: np.ndarray, used: np.ndarray) -> np.ndarray:
    """``(S, 2)`` weights (control, treated) of one person per cell: treated 1, control
    ``-n_bT / n_bC``, 0 outside ``used``; ``count`` the noisy counts (clamped at 0)."""
    n = np.clip(np.asarray(count, dtype=float), 0.0, None)
    used = np.asarray(used, dtype=bool)
    v = np.zeros_like(n)
    v[used, 1] = 1.0
    v[used, 0] = -n[used, 1] / n[used, 0]
    return v


def max_weight(v: np.ndarray) -> float:
    """The largest weight in magnitude (what the sensitivity scales with)."""
    return float(np.max(np.abs(v)))


def wsum_query_counts(count: np.ndarray, used: np.ndarray) -> tuple[float, ...]:
    """The counts a ``psm_wsum`` query carries: the used strata's noisy counts, 0 elsewhere,
    flattened ``(control, treated)`` per stratum."""
    n = np.where(
        np.asarray(used, dtype=bool)[:, None], np.clip(np.asarray(count, dtype=float), 0.0, None), 0.0
    )
    return tuple(float(x) for x in n.reshape(-1))


def wsum_centers(*, count, sum_y, used, reach: float | None = None) -> np.ndarray:
    r"""``(S, 2, O)`` public centres: each used cell's noisy mean (from the cell release),
    clipped so that :math:`|v| \max(c, 1 - c) \le R` (module docstring), by default
    :math:`R = v_{max}/2`: ½ in the cells of the largest weight and outside the used strata.
    A larger ``reach`` R (at most :math:`v_{max}`) keeps more cells at their means and raises the
    sensitivity to at most :math:`\sqrt O R` (:func:`shared.dp.workflow.dp_wsum_centers`
    chooses it)."""
    n = np.clip(np.asarray(count, dtype=float), 0.0, None)
    s = np.asarray(sum_y, dtype=float)
    v = np.abs(att_weights(n, used))
    half = max_weight(v) / 2.0 if reach is None else float(reach)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n[..., None] > 0, s / n[..., None], CENTER)
        r = np.where(v > 0, half / v, 1.0)[..., None]  # max(c, 1 − c) ≤ r
    return np.clip(np.clip(mean, 0.0, 1.0), 1.0 - np.minimum(r, 1.0), np.minimum(r, 1.0))


def wsum_sensitivity(v: np.ndarray, centers: np.ndarray) -> float:
    """L2 sensitivity of the weighted sums: the largest :math:`|v|\\,\\lVert\\max(c, 1 -
    c)\rVert_2` over cells (one row lands in one cell)."""
    reach = np.sqrt(np.sum(np.maximum(centers, 1.0 - centers) ** 2, axis=-1))  # (S, 2)
    return float(np.max(np.abs(v) * reach))


def node_weights(
    *, counts, centers, n_strata: int, n_outcomes: int, declared_max: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """The node's check of a ``psm_wsum`` query (on the query alone, before any data is read).

    Returns:
        ``(v, c, Δ)``: the ``(S, 2)`` weights, ``(S, 2, O)`` centres and the release's L2
        sensitivity.

    Raises:
        QueryRefused: counts or centres of the wrong size or not finite, counts negative or
            above :data:`MAX_COUNT`, one arm of a stratum without the other, a used count below
            1, no used stratum, a centre outside [0, 1], or a declared largest weight other
            than the counts' (no value is named: they are the study's).
    """
    flat_n = np.asarray(counts, dtype=float).reshape(-1)
    flat_c = np.asarray(centers, dtype=float).reshape(-1)
    if flat_n.size != 2 * n_strata or not np.all((flat_n >= 0) & (flat_n <= MAX_COUNT)):
        raise QueryRefused(f"psm_wsum: counts must be {2 * n_strata} values in [0, {MAX_COUNT:g}]")
    if flat_c.size != 2 * n_strata * n_outcomes or not np.all((flat_c >= 0.0) & (flat_c <= 1.0)):
        raise QueryRefused(f"psm_wsum: centers must be {2 * n_strata * n_outcomes} values in [0, 1]")
    n = flat_n.reshape(n_strata, 2)
    used = (n[:, 0] > 0) & (n[:, 1] > 0)
    if np.any((n[:, 0] > 0) != (n[:, 1] > 0)) or np.any(n[used] < 1.0) or not used.any():
        raise QueryRefused(
            "psm_wsum: every stratum needs both arms' counts at least 1, or both 0 (left out), "
            "and at least one stratum must be used"
        )
    v = att_weights(n, used)
    if not (math.isfinite(declared_max) and math.isclose(declared_max, max_weight(v), rel_tol=_WEIGHT_RTOL)):
        raise QueryRefused("psm_wsum: the declared largest weight is not the one its counts give")
    c = flat_c.reshape(n_strata, 2, n_outcomes)
    return v, c, wsum_sensitivity(v, c)


def weighted_sums(*, z, t, y, beta, edges, v, centers) -> np.ndarray:
    """A node's exact ``(O,)`` sums :math:`\\sum_i v_i (y_i - c_i)` (scaled arrays, as
    :func:`shared.psm.table.psm_table` reads them)."""
    z = np.asarray(z, dtype=float)
    beta = np.asarray(beta, dtype=float)
    b = stratum_index(beta[0] + z @ beta[1:], np.asarray(edges, dtype=float))
    arm = np.asarray(t).astype(np.int64)
    weight = np.asarray(v, dtype=float)[b, arm]
    return weight @ (np.asarray(y, dtype=float) - np.asarray(centers, dtype=float)[b, arm])


def wsum_att(*, wsum, count, used, centers, sum_y=None, sigma_count=0.0) -> np.ndarray:
    """The ATT per outcome on the [0, 1] scale from the summed noisy weighted sums, the
    centres added back with the noisy treated counts (module docstring).

    With ``sum_y`` and ``sigma_count``, the ratio bias of the control weights is removed to
    second order: :math:`E[n/\\hat n] \approx 1 + \\sigma^2/n^2`, so a control cell adds
    :math:`-w_b (\\sigma^2/n_{bC}^2)(\bar y_{bC} - c_{bC})` to the estimate's expectation, large in
    a cell of few controls (2σ at least) left at centre ½ for its large weight; the cell mean
    is read off the cell release.
    """
    n = np.clip(np.asarray(count, dtype=float), 0.0, None)
    u = np.asarray(used, dtype=bool)
    c = np.asarray(centers, dtype=float)[u]
    n_t = float(n[u, 1].sum())
    back = np.sum(n[u, 1][:, None] * (c[:, 1, :] - c[:, 0, :]), axis=0)
    att = (np.asarray(wsum, dtype=float) + back) / n_t
    var_n = np.broadcast_to(np.asarray(sigma_count, dtype=float) ** 2, (n.shape[0],))[u]
    if sum_y is None or not np.any(var_n > 0):
        return att
    n_c = n[u, 0]
    ybar_c = np.clip(np.asarray(sum_y, dtype=float)[u, 0, :] / n_c[:, None], 0.0, 1.0)
    ratio_bias = (n[u, 1] / n_t * var_n / n_c**2)[:, None] * (ybar_c - c[:, 0, :])
    return att + ratio_bias.sum(axis=0)


def wsum_privacy_se(
    *, count, sum_y, used, att, centers, sigma_count, sigma_wsum: float, clip: bool = True
) -> np.ndarray:
    r"""Analytic SD of :func:`wsum_att` due to both noises, per outcome on the [0, 1] scale
    (module docstring).

    Args:
        count: ``(S, 2)`` noisy summed counts (the ones the weights were computed from).
        sum_y: ``(S, 2, O)`` the cell release's noisy Σy (mapped back; only its control means
            are read).
        used: ``(S,)`` the strata with weight.
        att: ``(O,)`` the estimate on the [0, 1] scale.
        centers: ``(S, 2, O)`` the release's centres.
        sigma_count: noise SD of one summed count, or ``(S,)`` per stratum (merged strata).
        sigma_wsum: noise SD of one summed weighted sum.
        clip: the cell means clipped to [0, 1]; off for a doubly robust study's residual
            :math:`y - z^\top\hat\gamma` (:func:`shared.dp.drwsum.dr_wsum_estimates`), whose
            sums and centres are the outcomes' less the covariates' through γ̂.
    """
    cells = used_cells(count=count, sum_y=sum_y, used=used, sigma_count=sigma_count, clip=clip)
    if cells is None:
        return np.full(np.shape(sum_y)[-1], np.inf)
    N, w, ybar_c, inv_c2 = cells.N, cells.w, cells.ybar_c, cells.inv_c2
    c = np.asarray(centers, dtype=float)[used]
    var_n = cells.var_n[:, None]  # per used stratum (merged strata carry more, weightbound)
    var_cnt = (
        np.sum(var_n * (w**2 * inv_c2)[:, None] * (ybar_c - c[:, 0, :]) ** 2, axis=0)
        + np.sum(var_n * (c[:, 1, :] - ybar_c - np.asarray(att, dtype=float)[None, :]) ** 2, axis=0) / N**2
    )
    return np.sqrt(sigma_wsum**2 / N**2 + var_cnt)
