r"""A doubly robust DP study's ATT released as weighted sums (``psm_wsum`` + ``dr_dsum``).

The DR ATT (:mod:`shared.psm.dr`) is the stratified ATT less :math:`\hat d^\top\hat\gamma`, with
:math:`d = \sum_b w_b(\bar z_{bT} - \bar z_{bC})` the imbalance left inside the strata. Once the
noisy counts of ``psm_main`` are public every person's weight :math:`v_i` is fixed
(:mod:`shared.dp.wsum`: treated 1, a control of stratum b :math:`-n_{bT}/n_{bC}`), and both parts
are weighted sums with those weights:

.. math::
    \widehat{ATT}_{DR} = \frac1N\Big[\sum_i v_i (y_i - c_i) + \text{back}_y
        - \Big(\sum_i v_i (z_i - c^z_i) + \text{back}_z\Big)^\top\hat\gamma\Big],

``back`` the centres' terms of :func:`shared.dp.wsum.wsum_att`. So a DR study releases the
outcomes' weighted sums exactly as a stratified study does (``psm_wsum``), the D weighted sums of
the scaled covariates with the same weights (``dr_dsum``, the same ``psm_wsum`` operation with
``z_center``; one release shared by every outcome) and the slope :math:`\hat\gamma` as before
(``dr_slope``). Before, the stratified part and d were read off the noisy cells (``psm_main``,
``psm_balance``), whose S × 2 noises made the DP DR CI 3–6× the stratified one
(docs/PRIVACY.md).

**The d release.** Centres: each used cell's noisy covariate mean from the balance release,
clipped as the outcomes' are (:func:`shared.dp.wsum.wsum_centers` at its default reach
:math:`v_{max}/2`), so :math:`\Delta_2 = \max_{cell}|v|\,\lVert\max(c, 1 - c)\rVert_2 \le
\sqrt{D}\,v_{max}/2`. The node checks the query exactly as ``psm_wsum``'s
(:func:`node_dsum`, i.e. :func:`shared.dp.wsum.node_weights` with D columns: counts, declared
largest weight, centres in [0, 1]) and charges, and adds noise by, the Δ it computes itself;
it refuses the release in a study not signed doubly robust (its plan has no ``dr_dsum``), and a
doubly robust study's weighted sums without it (:func:`shared.answer.check_query`).

**Privacy SE** (:func:`dr_wsum_estimates`). The estimate is the weighted sum of the residual
:math:`r = y - z^\top\hat\gamma` with centres :math:`c - c^{z\top}\hat\gamma`, so the outcomes'
release noise and the counts' noise through the weights are
:func:`shared.dp.wsum.wsum_privacy_se` on the residual's cell sums and centres (unclipped:
a residual is not on [0, 1]); the adjustment :math:`\hat d^\top\hat\gamma` is bilinear in the d
release's noise (:math:`\xi_d/N`) and the slope's, and its variance
:math:`\gamma^\top\Sigma_d\gamma + d^\top\Sigma_\gamma d + \mathrm{tr}(\Sigma_d\Sigma_\gamma)` is
the three-way parametric bootstrap of :func:`shared.psm.dr.bilinear_redraw_se`. The two parts
add in quadrature (independent noises, to first order). The sampling SE is DR's
(:func:`shared.psm.dr.estimate_dr`, with this d and stratified ATT).

**Balance** (:func:`dsum_imbalance`). d is also the numerator of each covariate's SMD after
weighting (:mod:`shared.psm.balance`): read off this release instead of the balance release's
S × 2 noisy cells, its noise SD is :math:`\sigma_d/N` plus the counts' terms
(:func:`shared.dp.wsum.wsum_privacy_se`): at 10k treated, ε = 1, secure aggregation, the SMD
after weighting's noise SD is 3.6× smaller (median over covariates, docs/STATISTICS.md). So the
balance table of a DR DP study reads it there (post-processing; no release added).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from shared.dp.wsum import node_weights, wsum_att, wsum_centers, wsum_privacy_se
from shared.psm.balance import WeightedImbalance
from shared.psm.dr import (
    DrEstimate,
    DrRelease,
    DrStats,
    _fit,
    _noisy,
    _release_from_centred,
    _split,
    bilinear_redraw_se,
    dp_ridge,
    estimate_dr,
)
from shared.psm.table import PsmTable
from shared.study import Outcome

__all__ = ["dr_wsum_estimates", "dsum_centers", "dsum_imbalance", "node_dsum"]


def dsum_centers(*, table: PsmTable, used: np.ndarray) -> np.ndarray:
    """``(S, 2, D)`` public centres of the covariates' weighted sums: each used cell's noisy
    mean from the balance release, clipped so that :math:`|v|\\max(c, 1 - c) \\le v_{max}/2`
    (:func:`shared.dp.wsum.wsum_centers` with Σz for Σy)."""
    return wsum_centers(count=table.count, sum_y=table.sum_z, used=used)


def node_dsum(*, counts, z_centers, n_strata: int, n_covariates: int, declared_max: float):
    """The node's check of a ``dr_dsum`` request, on the query alone: that of ``psm_wsum``
    (:func:`shared.dp.wsum.node_weights`) with the D covariates for the outcomes. Returns
    ``(v, c, Δ)``."""
    return node_weights(
        counts=counts,
        centers=z_centers,
        n_strata=n_strata,
        n_outcomes=n_covariates,
        declared_max=declared_max,
    )


def dsum_imbalance(
    *,
    table: PsmTable,
    used: np.ndarray,
    dsum: np.ndarray,
    z_centers: np.ndarray,
    sigma_dsum: float,
    sigma_count,
) -> WeightedImbalance:
    r"""The imbalance :math:`d = \sum_b w_b(\bar z_{bT} - \bar z_{bC})` ``(D,)`` on the [0, 1]
    scale from the summed ``dr_dsum`` release, with the SD both noises give it.

    d is the weighted sums' ATT with the covariates for the outcomes
    (:func:`shared.dp.wsum.wsum_att`: centres added back, the control weights' ratio bias
    removed), so its noise SD is theirs (:func:`shared.dp.wsum.wsum_privacy_se`): the release's
    :math:`\sigma_d/N` and the counts' noise through the weights, the covariates' cell means read
    off the balance release. The DR estimate and the balance table
    (:class:`shared.psm.balance.WeightedImbalance`) both read d here.

    Args:
        table: the (merged) PSM table the weights came from: noisy counts, Σz of the balance release.
        used: ``(S,)`` the strata with weight.
        dsum, z_centers, sigma_dsum: the summed ``dr_dsum`` ``(D,)``, its ``(S, 2, D)`` centres
            and the noise SD of one summed entry.
        sigma_count: the SD of one summed count, or ``(S,)`` per (merged) stratum.
    """
    u = np.asarray(used, dtype=bool)
    d = wsum_att(
        wsum=dsum, count=table.count, used=u, centers=z_centers, sum_y=table.sum_z, sigma_count=sigma_count
    )
    sd = wsum_privacy_se(
        count=table.count,
        sum_y=table.sum_z,
        used=u,
        att=d,
        centers=z_centers,
        sigma_count=sigma_count,
        sigma_wsum=float(sigma_dsum),
    )
    return WeightedImbalance(d=d, noise_sd=sd)


def dr_wsum_estimates(
    *,
    release: DrRelease,
    table: PsmTable,
    used: np.ndarray,
    wsum: np.ndarray,
    centers: np.ndarray,
    sigma_wsum: float,
    dsum: np.ndarray,
    z_centers: np.ndarray,
    sigma_dsum: float,
    sigma_count,
    outcomes: Sequence[Outcome],
    min_cell: float,
    n_draws: int,
    rng: np.random.Generator,
) -> tuple[DrEstimate, ...]:
    """Each outcome's DP DR estimate from the weighted sums (module docstring).

    Args:
        release: the study's :class:`shared.psm.dr.DrRelease` (only its ``slope`` and
            ``sigma_slope`` are read: γ̂ from ``dr_slope``).
        table: the PSM table the weights came from (merged strata, :mod:`shared.dp.weightbound`):
            noisy counts, Σy from ``psm_main``, Σz from the balance release.
        used: ``(S,)`` the strata with weight.
        wsum, centers, sigma_wsum: the summed ``psm_wsum`` ``(O,)``, its ``(S, 2, O)`` centres
            and the noise SD of one summed entry.
        dsum, z_centers, sigma_dsum: the same for ``dr_dsum`` ``(D,)``.
        sigma_count: the SD of one summed count, or ``(S,)`` per (merged) stratum.
        min_cell: common support and intercept groups (``dp_min_cell``).
        n_draws, rng: the adjustment's parametric bootstrap (post-processing).
    """
    u = np.asarray(used, dtype=bool)
    att_s = wsum_att(
        wsum=wsum, count=table.count, used=u, centers=centers, sum_y=table.sum_y, sigma_count=sigma_count
    )
    d = dsum_imbalance(
        table=table, used=u, dsum=dsum, z_centers=z_centers, sigma_dsum=sigma_dsum, sigma_count=sigma_count
    ).d
    n_cov = table.n_covariates
    ridge = dp_ridge(sigma=release.sigma_slope, n_covariates=n_cov)
    cells_c, slope_c = _split(release.cells)[0], _split(release.slope)[1]

    def gamma(slope: dict[str, np.ndarray]) -> np.ndarray:
        s = _release_from_centred(cells_c, slope, release.cells.table.edges, 0.0, release.sigma_slope).slope
        return _fit(s, min_cell, ridge, release.sigma_slope)[0]  # (D, O)

    g = gamma(slope_c)
    n_t = float(np.clip(table.count, 0.0, None)[u, 1].sum())
    sd_d = float(sigma_dsum) / max(n_t, 1e-12)
    _, _, _, se_adj = bilinear_redraw_se(
        lambda dd, s: dd @ gamma(s),
        d,
        slope_c,
        redraw_a=lambda: d + rng.normal(0.0, sd_d, size=d.shape),
        redraw_b=lambda: _noisy(slope_c, release.sigma_slope, rng),
        n_draws=n_draws,
    )
    att_dr = att_s - d @ g
    se_res = wsum_privacy_se(
        count=table.count,
        sum_y=table.sum_y - table.sum_z @ g,
        used=u,
        att=att_dr,
        centers=np.asarray(centers, dtype=float) - np.asarray(z_centers, dtype=float) @ g,
        sigma_count=sigma_count,
        sigma_wsum=sigma_wsum,
        clip=False,
    )
    span = np.array([o.cap - o.lo for o in outcomes])
    return estimate_dr(
        stats=DrStats(table=table, zz=np.zeros((n_cov, n_cov)), zy=np.zeros((n_cov, len(outcomes)))),
        outcomes=outcomes,
        min_cell=min_cell,
        se_privacy=list(np.sqrt(se_res**2 + se_adj**2) * span),
        ridge=ridge,
        slope=release.slope,
        slope_noise_sd=release.sigma_slope,
        att_stratified=att_s,
        imbalance=d,
    )
