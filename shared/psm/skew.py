r"""The exact study's skewness-corrected CI: Hall's transformation of the studentized ATT, with
a t reference whose degrees of freedom count the cells' kurtosis.

Why: on right-skewed outcomes (claims costs, a rare binary event) the Wald interval
``estimate ± 1.96 SE`` of the stratified ATT under-covers although its variance is right in mean
square. A control mean that falls low brings a low :math:`s^2_{bC}` with it (the SE moves with
the error, corr −0.4 to −0.5 on ``strong_confounding``), the studentized error
:math:`T = (\widehat{ATT} - ATT)/\widehat{SE}` is shifted and skewed, and its spread exceeds
the normal's because a few cells of a handful of controls carry much of the variance (the SE's
own CV is 0.2–0.3). Measured: docs/STATISTICS.md and ``bench/bench_skew_ci.py``.

The interval corrects both to the order the cells' sufficient statistics allow, from each
control cell's Σy³ and Σy⁴ (:attr:`shared.psm.table.PsmTable.sum3_y`, ``sum4_y``; exact
studies only):

* **Skewness** (Johnson 1978, *JASA* 73:536–544; Hall 1992, *JRSS B* 54:221–228; the two-sample
  form of Zhou & Dinh 2005, *Biostatistics* 6:187–200). To order :math:`n^{-1/2}` the Edgeworth
  expansion of a studentized linear statistic is
  :math:`P(T \le x) = \Phi(x) - \phi(x)\,[-B/2 + (A - 3B)(x^2 - 1)/6]`, with
  :math:`A = \kappa_3(\widehat{ATT})/V^{3/2}` and
  :math:`B = \mathrm{Cov}(\widehat{ATT}, \widehat V)/V^{3/2}` (one sample: :math:`A = B =
  \gamma/\sqrt n` gives Johnson's :math:`T + \gamma(2T^2 + 1)/(6\sqrt n)`). The error of the
  sample ATT is :math:`\sum_b w_b(\bar y_{bT}(0) - \bar y_{bC})`, both terms with the controls'
  within-stratum moments (the estimator's own assumption, :mod:`shared.psm.estimator`), so

  .. math::
      A = \frac{\sum_b w_b^3 k_{3,b}(n_{bT}^{-2} - n_{bC}^{-2})}{V^{3/2}},\qquad
      B = -\frac{\sum_j g_j\, w_j k_{3,j}/n_{jC}}{V^{3/2}},

  where :math:`\widehat V = \sum_b c_b \hat v_b`, :math:`c_b = w_b^2(1/n_{bT} + 1/n_{bC})`, each
  cell variance :math:`\hat v_b = \sum_j \pi_{bj} s^2_j` is pooled over the window of
  :func:`shared.psm.cells.pool_weights` (its own cell when that has ten degrees of freedom), so
  :math:`g_j = \sum_b c_b \pi_{bj}` is how much control cell j's :math:`s^2_j` weighs in
  :math:`\widehat V`, and :math:`\mathrm{Cov}(\bar y_j, s^2_j) = k_{3,j}/n_j`. A cell whose
  variance came from the treated of its stratum (the κ branch of
  :func:`~shared.psm.cells.cell_variances`) adds nothing to B. Each :math:`k_{3,j}` (unbiased
  third cumulant) is pooled over the same window as the variance. Hall's monotone cubic
  :math:`g(t) = t + at^2 + a^2t^3/3 + b` with :math:`a = -(A - 3B)/6`,
  :math:`b = B/2 + (A - 3B)/6` removes this skewness and shift, and is inverted in closed form,
  :math:`g^{-1}(x) = ((1 + 3a(x - b))^{1/3} - 1)/a`; the CI is
  :math:`[\widehat{ATT} - g^{-1}(q)\widehat{SE},\ \widehat{ATT} - g^{-1}(-q)\widehat{SE}]`.
* **Spread** (Satterthwaite 1946, *Biometrics Bulletin* 2:110–114, with the variance of a
  sample variance of a non-normal population, :math:`\mathrm{Var}(s^2) = (\mu_4 - \sigma^4
  (n - 3)/(n - 1))/n`, e.g. O'Neill 2014, *Am. Stat.* 68:282–296): ``q`` is the t quantile at
  :math:`\nu = 2\widehat V^2/\widehat{\mathrm{Var}}(\widehat V)`,
  :math:`\widehat{\mathrm{Var}}(\widehat V) = \sum_j g_j^2 \mathrm{Var}(s^2_j)` (never below
  the normal-theory :math:`2\sigma^4/(n - 1)`) plus, for a κ-branch cell,
  :math:`2(c_b\hat v_b)^2/10`. A heavy tail has a large fourth moment, so few effective degrees
  of freedom and a wider interval, exactly where the normal reference is too short.

Third and fourth moments of heavy tails are estimated with downward bias, so the correction is
partial where tails are heaviest (``strong_confounding`` claims: 92.0 → 92.6 %); measured
before/after in docs/STATISTICS.md. For a 0/1 outcome Σy³ = Σy⁴ = Σy: the correction is that
of the Bernoulli moments, and needs nothing beyond Σy.

Everything here is on the [0, 1] scale of the table; a DP table has no higher power sums and
keeps the Wald interval (its noise would need its own release of Σy³, Σy⁴).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from shared.psm.cells import MIN_DOF, own_variances, pool_weights, variance_information
from shared.psm.table import PsmTable

__all__ = ["SkewCi", "hall_inverse", "skew_t_multipliers"]


@dataclass(frozen=True)
class SkewCi:
    """One outcome's interval multipliers: CI = ``(att - upper * se, att - lower * se)``.

    Attributes:
        upper, lower: :math:`g^{-1}(q)` and :math:`g^{-1}(-q)` (1.96 and −1.96 for Wald).
        a, b: the Edgeworth coefficients A (skewness of the estimate) and B (its covariance
            with the variance estimate), standardised.
        dof: the t reference's degrees of freedom (inf: normal).
    """

    upper: float
    lower: float
    a: float
    b: float
    dof: float


def hall_inverse(x: float, a_coef: float, b_coef: float) -> float:
    r""":math:`g^{-1}(x)` for Hall's :math:`g(t) = t + at^2 + a^2t^3/3 + b`, monotone in t;
    ``x - b`` when ``a`` is 0."""
    if abs(a_coef) < 1e-12:
        return x - b_coef
    return float((np.cbrt(1.0 + 3.0 * a_coef * (x - b_coef)) - 1.0) / a_coef)


def skew_t_multipliers(
    *,
    table: PsmTable,
    n: np.ndarray,
    used: np.ndarray,
    w: np.ndarray,
    var: np.ndarray,
    k: int,
    level: float,
    binary: bool = False,
) -> SkewCi:
    """The multipliers of outcome ``k``'s skewness-corrected CI (module docstring).

    Args:
        table: the summed exact table; must hold ``sum3_y`` and ``sum4_y``.
        n: ``(S, 2)`` clamped counts; ``used``: ``(S,)`` strata in common support; ``w``:
            ``(S,)`` treated weights; ``var``: ``(S, 2, O)`` the estimator's cell variances
            (:func:`shared.psm.cells.cell_variances`, the same windows).
        level: two-sided coverage (0.95).
        binary: outcome ``k`` is 0/1 (its cells' variances are worth fewer degrees of freedom
            when events are rare, :func:`shared.psm.cells.variance_information`: the same windows).
    """
    assert table.sum3_y is not None and table.sum4_y is not None
    u = np.flatnonzero(used)
    nt, nc, wu = n[u, 1], n[u, 0], w[u]
    v = var[u, 0, k]
    cb = wu**2 * (1.0 / nt + 1.0 / nc)
    V = float(np.sum(cb * v))
    z = float(stats.norm.ppf(0.5 + level / 2))
    if not V > 0:
        return SkewCi(upper=z, lower=-z, a=0.0, b=0.0, dof=np.inf)
    s1, s2, s3, s4 = (x[u, 0, k] for x in (table.sum_y, table.sumsq_y, table.sum3_y, table.sum4_y))
    k3, c4 = _cumulants(s1, s2, s3, s4, nc)
    own = own_variances(table.sum_y[u, :1, k : k + 1], table.sumsq_y[u, :1, k : k + 1], n[u, :1])[:, 0, 0]
    dof_c = np.where(nc >= 2, nc - 1.0, 0.0)
    info = variance_information(table.sum_y[u, :1, k : k + 1], n[u, :1], dof_c[:, None], np.array([binary]))
    pi = pool_weights(dof_c, MIN_DOF, info[:, 0, 0])
    pooled = pi @ own
    # where the cell's variance is its pool's (not the κ branch of cell_variances)
    from_pool = np.isclose(v, np.where(pi.sum(axis=1) > 0, pooled, 0.25), rtol=1e-12, atol=0.0)
    g = (cb * from_pool) @ pi
    k3p, c4p = pi @ k3, pi @ c4
    a_std = float(np.sum(wu**3 * k3p * (1.0 / nt**2 - 1.0 / nc**2))) / V**1.5
    b_std = -float(np.sum(g * wu * k3p / nc)) / V**1.5
    m = np.maximum(nc, 2.0)
    var_s2 = np.maximum(c4p / m - pooled**2 * (m - 3.0) / (m * (m - 1.0)), 2.0 * pooled**2 / (m - 1.0))
    var_v = float(np.sum(g**2 * var_s2) + np.sum(((cb * v)[~from_pool]) ** 2) * 2.0 / MIN_DOF)
    dof = 2.0 * V**2 / var_v if var_v > 0 else np.inf
    q = float(stats.t.ppf(0.5 + level / 2, max(dof, 1.0))) if np.isfinite(dof) else z
    c2 = (a_std - 3.0 * b_std) / 6.0
    a_coef, b_coef = -c2, b_std / 2.0 + c2
    return SkewCi(
        upper=hall_inverse(q, a_coef, b_coef),
        lower=hall_inverse(-q, a_coef, b_coef),
        a=a_std,
        b=b_std,
        dof=dof,
    )


def _cumulants(s1, s2, s3, s4, n) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: the unbiased third cumulant :math:`k_3` (0 below three rows) and the fourth
    central moment :math:`m_4` (0 in an empty cell), from power sums."""
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(n > 0, s1 / n, 0.0)
        m3 = np.where(n > 0, s3 / n - 3.0 * m * s2 / n + 2.0 * m**3, 0.0)
        m4 = np.where(n > 0, s4 / n - 4.0 * m * s3 / n + 6.0 * m**2 * s2 / n - 3.0 * m**4, 0.0)
        k3 = np.where(n >= 3, m3 * n**2 / ((n - 1.0) * (n - 2.0)), 0.0)
    return k3, np.maximum(m4, 0.0)
