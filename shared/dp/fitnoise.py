r"""The propensity fit's noise in the CI: a bound on the bias it leaves, and an interval that
holds it (issue #19, deliverable 2).

A noisy fit :math:`\hat\beta = \beta + \delta` stratifies on the score
:math:`\hat s = x^\top\hat\beta = s + u`, :math:`u = x^\top\delta`. Where the outcome's
confounding runs through the score (:math:`E[y_0 \mid x] = a + \gamma s`, the model the
stratified estimator assumes), adjusting for :math:`\hat s` removes the share
:math:`\lambda = \mathrm{Var}(s)/\mathrm{Var}(\hat s)` of it (regression dilution:
:math:`E[s \mid \hat s]` has slope :math:`\lambda`), so with :math:`B` the confounding bias of the
crude difference, the estimate removed :math:`\lambda B` and leaves :math:`(1 - \lambda) B`.
The removed part is observed: crude minus adjusted, :math:`D`. Hence the fit's residual bias is

.. math::
    b = |D|\,\frac{1 - \lambda}{\lambda}, \qquad
    1 - \lambda = \frac{\mathrm{Var}(u)}{\mathrm{Var}(\hat s)},

with every input public: :math:`\mathrm{Var}(\hat s)` from the released score histogram (both
arms), and :math:`\mathrm{Var}(u) = \mathrm{tr}(\Sigma_x C)`, :math:`C` the covariance of the
last Newton step's noise (:math:`\sigma_{fit}^2 H^{-1} A^{-1} A^{-\top} H^{-1}` on the slopes,
:mod:`shared.dp.forms` for :math:`A`; earlier rounds' noise is contracted by the later steps),
bounded without the covariates' correlations (not released) by
:math:`\sum_{jk} sd_j\,sd_k\,|C_{jk}|` with :math:`sd_j \le 1/2` (scaled covariates in [0, 1])
or the balance release's arm SDs.

**The interval.** :math:`b` is a bias, not noise (it always pulls towards the crude difference),
so it is not added to the SE; the CI is the bias-aware interval of Armstrong & Kolesár (2020):
:math:`\widehat{ATT} \pm \mathrm{SE}\cdot cv(b/\mathrm{SE})`, with :math:`cv(t)` the value
:math:`c` with :math:`P(|N(t, 1)| \le c) = 0.95` (1.96 at :math:`t = 0`, about
:math:`t + 1.645` for large :math:`t`): it covers at 95 % whenever the bias is at most
:math:`b`. Nothing here is calibrated on a benchmark: no threshold, no target. What it does not
hold: confounding the score does not carry (a misspecified propensity model) and the coarseness
of the strata, which the exact study shares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.dp.forms import CENTER

__all__ = [
    "FitNoise",
    "bias_aware_halfwidth",
    "fit_bias_bound",
    "noise_share",
    "score_variance",
    "slope_noise_covariance",
]


@dataclass(frozen=True)
class FitNoise:
    """What the coordinator knows of its fit's noise: the slopes' noise covariance and the
    variance of the noisy score over all rows."""

    noise_cov: np.ndarray
    var_score: float


def slope_noise_covariance(*, H, sigma_fit: float) -> np.ndarray:
    r"""``(d, d)`` covariance of the slopes' noise from the last Newton step: the step
    :math:`H^{-1}g` with noise :math:`A^{-1}e_c`, :math:`e_c \sim N(0, \sigma^2 I)` on the
    centred gradient (``H`` in the basis of :math:`[1, z]`, as the fitter holds it)."""
    H = np.asarray(H, dtype=float)
    A_inv = np.eye(H.shape[0])
    A_inv[1:, 0] = CENTER  # [1, z - c] -> [1, z] (shared.dp.forms)
    Hi = np.linalg.inv(H)
    M = Hi @ A_inv
    return (float(sigma_fit) ** 2 * (M @ M.T))[1:, 1:]


def score_variance(*, grid, hist) -> float:
    """Variance of the logit score over all rows from the noisy ``(G, 2)`` histogram on
    ``grid`` (bin midpoints; the unbounded end bins at their inner edge; counts clamped at 0)."""
    g = np.asarray(grid, dtype=float)
    inner = g[1:-1]
    if inner.size == 0:
        return 0.0
    lo = np.concatenate(([inner[0]], inner))
    hi = np.concatenate((inner, [inner[-1]]))
    mid = (lo + hi) / 2.0
    w = np.clip(np.asarray(hist, dtype=float), 0.0, None).sum(axis=1)
    if not w.sum() > 0:
        return 0.0
    m = float(np.average(mid, weights=w))
    return float(np.average((mid - m) ** 2, weights=w))


def noise_share(*, noise_cov, var_score: float, sd_z=None) -> float:
    """s = Var(u) / Var(ŝ): the fit noise's share of the noisy score's variance (module
    docstring), Var(u) bounded with the covariates' SDs ``sd_z`` (½ each when None); inf when
    the score has no variance. What the stop rule predicts (:mod:`shared.dp.stoprule`)."""
    C = np.asarray(noise_cov, dtype=float)
    sd = np.full(C.shape[0], 0.5) if sd_z is None else np.clip(np.asarray(sd_z, dtype=float), 0.0, 0.5)
    var_u = float(np.sum(np.outer(sd, sd) * np.abs(C)))
    return var_u / var_score if var_score > 0 else math.inf


def fit_bias_bound(*, crude, adjusted, noise_cov, var_score: float, sd_z=None) -> np.ndarray:
    """``(O,)`` bound on the residual bias the fit's noise leaves (module docstring), in the
    units of ``crude`` and ``adjusted``. Inf when the noise's share of the score's variance
    reaches 1 (the score is all noise)."""
    share = noise_share(noise_cov=noise_cov, var_score=var_score, sd_z=sd_z)
    removed = np.abs(np.asarray(crude, dtype=float) - np.asarray(adjusted, dtype=float))
    if share >= 1.0:
        return np.where(removed > 0, np.inf, 0.0)
    return removed * share / (1.0 - share)


def bias_aware_halfwidth(*, se: float, bias: float, level: float = 0.95) -> float:
    """SE·cv(bias/SE): the half-width that covers at ``level`` whenever |bias| ≤ ``bias``
    (Armstrong & Kolesár 2020), found by bisection; 1.96·SE at bias 0."""
    if not se > 0:
        return math.inf if bias > 0 else 0.0
    if not math.isfinite(bias):
        return math.inf
    t = abs(bias) / se

    def cover(c: float) -> float:  # P(|N(t, 1)| <= c)
        return 0.5 * (math.erf((c - t) / math.sqrt(2)) - math.erf((-c - t) / math.sqrt(2)))

    lo, hi = 0.0, t + 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cover(mid) < level else (lo, mid)
    return se * hi
