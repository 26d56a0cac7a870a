r"""L2 sensitivities of every study release, derived from the public bounds alone.

Neighbouring datasets differ by adding or removing one row (one person). Covariates are scaled
to [0, 1] by their public bounds (:func:`shared.features.scale`) and released centred on the
public midpoint (:mod:`shared.dp.forms`), so :math:`\tilde z_c = [1, z - 1/2]` has
:math:`\lVert\tilde z_c\rVert_2^2 \le q = 1 + d/4`; outcomes are clipped to their public
``[lo, cap]``, rescaled to [0, 1] (:func:`shared.psm.table.scale_outcomes`) and released centred
on 1/2 as well. A row therefore moves each release by a bounded
amount, whatever its values:

=================  ==========================================  =================================
release            arrays                                      :math:`\Delta_2`
=================  ==========================================  =================================
``describe``       per-arm ``count`` (2,)                      :math:`1`
``ps_fit``         ``g`` (p,), ``H`` (p, p), centred           :math:`\sqrt{q + q^2/16}`
``score_hist``     per bin × arm ``count`` (G, 2)              :math:`1`
``psm_main``       ``count``, ``sum_y``, centred               :math:`\sqrt{1 + O/4}`
``psm_sumsq``      ``sumsq_y``, centred                        :math:`\sqrt{O}/4`
``psm_balance``    ``sum_z``, ``sumsq_z``, centred             :math:`\sqrt{5 D / 16}`
``psm_wsum``       ``wsum`` (O,), weighted and centred         :math:`\le\sqrt{O}\,v_{max}/2`
``dr_dsum``        ``dsum`` (D,), the covariates weighted      :math:`\le\sqrt{D}\,v_{max}/2`
                   as ``wsum``'s outcomes, centred
``dr_slope``       the controls' ``slope_count`` (S,),         :math:`\sqrt{1 + O/4 + D/4 + T/16}`
                   ``slope_sum_y`` (S, O), ``slope_sum_z``     with :math:`T = D(D+1)/2 + DO`
                   (S, D), ``zz_c`` (upper triangle),
                   ``zy_c`` (D, O), centred
=================  ==========================================  =================================

Derivations (one row, treatment t, fitted probability p):

* ``ps_fit``: the row adds :math:`\tilde z_c (t - p)` to g, with :math:`|t - p| \le 1`, so
  :math:`\lVert\cdot\rVert_2 \le \lVert\tilde z_c\rVert_2 \le \sqrt{q}`; and
  :math:`p(1-p)\tilde z_c\tilde z_c^\top` to H, whose Frobenius norm is
  :math:`p(1-p)\lVert\tilde z_c\rVert_2^2 \le q/4`. Released together:
  :math:`\sqrt{q + q^2/16}` (uncentred it would be :math:`\sqrt{p + p^2/16}`, p = d + 1: for
  d = 16, 5.92 against 2.56).
* ``psm_*``: the row lands in exactly one stratum × arm cell, adding 1 to its count and a value
  in [0, 1] to each of its O sums (main) and of its O sums of squares (sumsq); a value in [-1/2, 1/2] to each
  of its D centred sums and one in [0, 1/4] to each of its D centred sums of squares (balance:
  :math:`\sqrt{D (1/4 + 1/16)}`).
* ``psm_wsum``: the weights :math:`v_i` and centres :math:`c_i` are public before the
  release (fixed by the noisy ``psm_main`` release, :mod:`shared.dp.wsum`), so adding or
  removing a row moves each of the O sums by :math:`v_i (y_i - c_i)`: jointly at most
  :math:`|v_i|\,\lVert\max(c_i, 1 - c_i)\rVert_2`, the largest over cells
  (:func:`shared.dp.wsum.wsum_sensitivity`); the coordinator's centres keep it within
  :math:`\sqrt{O}\,v_{max}/2` (:func:`psm_wsum_sensitivity`, all centres ½). Only this
  release's sensitivity depends on the query; its plan entry holds the noise multiplier μ,
  and σ = μ·Δ follows from the weights and centres the node is asked for.
* ``dr_dsum`` (a doubly robust study, :mod:`shared.dp.drwsum`): the same weights, the D
  scaled covariates in place of the outcomes, so the same argument with D for O.
* ``dr_slope`` (a doubly robust study, :mod:`shared.psm.dr`): a control lands in one
  stratum, moving its count by 1, its O centred outcome sums and D centred covariate sums by
  at most ½ each, and each of the D(D+1)/2 distinct entries of :math:`\sum(z - ½)(z - ½)^\top`
  (released as its upper triangle) and the D·O entries of :math:`\sum(z - ½)(y - ½)^\top` by
  at most ¼; a treated row moves nothing.
* The log-likelihood and ``n`` of :class:`shared.psm.propensity.PsStats` are *not* released
  under DP: the log-likelihood of one row, :math:`t\eta - \log(1 + e^\eta)`, is unbounded in
  :math:`\eta`, and the DP fit runs a fixed number of Newton rounds, so it needs neither.
* The full covariate moments of the non-private describe round (:math:`\sum zz^\top`) have
  :math:`\Delta_2 = \sqrt{1 + d + d^2}` (:func:`cov_moments_sensitivity`); under DP describe
  releases the per-arm counts only and balance comes from the PSM balance release.

>>> psm_main_sensitivity(n_outcomes=4)
1.4142135623730951
"""

from __future__ import annotations

import math

__all__ = [
    "RELEASE_KEYS",
    "cov_moments_sensitivity",
    "count_sensitivity",
    "dr_slope_sensitivity",
    "nc_main_sensitivity",
    "ps_fit_sensitivity",
    "psm_balance_sensitivity",
    "psm_main_sensitivity",
    "psm_sumsq_sensitivity",
    "psm_wsum_sensitivity",
]

#: The arrays each DP release carries (all other arrays of an answer are withheld).
RELEASE_KEYS: dict[str, tuple[str, ...]] = {
    "describe": ("count",),
    "ps_fit": ("g", "H"),
    "score_hist": ("count",),
    "psm_main": ("count", "sum_y"),
    "psm_sumsq": ("sumsq_y",),
    "psm_balance": ("sum_z", "sumsq_z"),
    "psm_wsum": ("wsum",),
    "dr_dsum": ("dsum",),  # a DR study's imbalance: the covariates' weighted sums (shared/dp/drwsum.py)
    "dr_slope": ("slope_count", "slope_sum_y", "slope_sum_z", "zz_c", "zy_c"),
    # the negative controls' releases (shared/dp/plan.py): their sums apart from the outcomes'
    "nc_main": ("nc_sum_y",),
    "nc_sumsq": ("nc_sumsq_y",),
    "nc_wsum": ("nc_wsum",),
    "cap_hist": ("count",),  # shared.dp.capquantile: a large-loss cap's noisy histogram
}


def _positive(name: str, value: int) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def count_sensitivity() -> float:
    """Any histogram of rows (each row in exactly one cell): :math:`\\Delta_2 = 1`."""
    return 1.0


def ps_fit_sensitivity(*, n_covariates: int) -> float:
    r"""Joint L2 sensitivity of the centred propensity gradient and Hessian,
    :math:`\sqrt{q + q^2/16}` with :math:`q = 1 + d/4`.

    Raises:
        ValueError: ``n_covariates`` is not a positive integer.
    """
    q = 1.0 + _positive("n_covariates", n_covariates) / 4.0
    return math.sqrt(q + q * q / 16.0)


def psm_main_sensitivity(*, n_outcomes: int) -> float:
    r"""Counts and centred :math:`\sum (y - 1/2)` per stratum × arm: :math:`\sqrt{1 + O/4}`.

    Raises:
        ValueError: ``n_outcomes`` is not a positive integer.
    """
    return math.sqrt(1.0 + _positive("n_outcomes", n_outcomes) / 4.0)


def nc_main_sensitivity(*, n_controls: int) -> float:
    r"""The C negative controls' centred :math:`\sum (y - 1/2)` per stratum × arm, without the
    counts (``psm_main`` releases those): :math:`\sqrt{C}/2`.

    Raises:
        ValueError: ``n_controls`` is not a positive integer.
    """
    return math.sqrt(_positive("n_controls", n_controls)) / 2.0


def psm_sumsq_sensitivity(*, n_outcomes: int) -> float:
    r"""Centred :math:`\sum (y - 1/2)^2` per stratum × arm (only the sampling variance reads
    it): :math:`\sqrt{O}/4`.

    Raises:
        ValueError: ``n_outcomes`` is not a positive integer.
    """
    return math.sqrt(_positive("n_outcomes", n_outcomes)) / 4.0


def psm_balance_sensitivity(*, n_covariates: int) -> float:
    r"""Centred :math:`\sum (z - 1/2)` and :math:`\sum (z - 1/2)^2` per stratum × arm:
    :math:`\sqrt{5D/16}`.

    Raises:
        ValueError: ``n_covariates`` is not a positive integer.
    """
    return math.sqrt(5.0 * _positive("n_covariates", n_covariates) / 16.0)


def cov_moments_sensitivity(*, n_covariates: int) -> float:
    r"""Per-arm count, :math:`\sum z` and :math:`\sum zz^\top`: :math:`\sqrt{1 + d + d^2}`
    (:math:`\lVert zz^\top\rVert_F = \lVert z\rVert_2^2 \le d`).

    Raises:
        ValueError: ``n_covariates`` is not a positive integer.
    """
    d = _positive("n_covariates", n_covariates)
    return math.sqrt(1.0 + d + d * d)


def psm_wsum_sensitivity(*, n_outcomes: int, max_weight: float) -> float:
    r"""The O weighted sums :math:`\sum_i v_i (y_i - 1/2)` with public weights of magnitude at
    most ``max_weight``: :math:`\sqrt{O}\,v_{max}/2`.

    Raises:
        ValueError: ``n_outcomes`` is not a positive integer, or ``max_weight`` is not a
            positive finite number.
    """
    if not (math.isfinite(max_weight) and max_weight > 0):
        raise ValueError(f"max_weight must be positive and finite, got {max_weight!r}")
    return math.sqrt(_positive("n_outcomes", n_outcomes)) * float(max_weight) / 2.0


def dr_slope_sensitivity(*, n_covariates: int, n_outcomes: int) -> float:
    r"""The doubly robust slope release (the controls' cells and cross-products, centred):
    :math:`\sqrt{1 + O/4 + D/4 + (D(D+1)/2 + DO)/16}`.

    >>> round(dr_slope_sensitivity(n_covariates=16, n_outcomes=3), 3)
    4.153

    Raises:
        ValueError: a dimension is not a positive integer.
    """
    d, o = _positive("n_covariates", n_covariates), _positive("n_outcomes", n_outcomes)
    return math.sqrt(1.0 + o / 4.0 + d / 4.0 + (d * (d + 1) / 2.0 + d * o) / 16.0)
