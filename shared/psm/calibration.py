r"""Empirical calibration from negative controls, EASE and the minimum detectable effect (pure).

**The scale.** CohortMethod works on the log of a ratio (hazard or odds ratio), where one
systematic-error distribution can describe outcomes of different units. Our estimates are
differences (ATT in currency units, risk points, days), which cannot share one error
distribution across outcomes. Every estimate is therefore read on the **log ratio of means**,
:math:`\theta = \log(\bar y_T / \bar y_C)`, where :math:`\bar y_C` is the estimator's
counterfactual mean (controls reweighted to the treated): for a 0/1 outcome this is the log
relative risk, for a cost the log of the relative change ("18 % lower claims" is
:math:`\theta = \log 0.82`). Its SE by the delta method,
:math:`\mathrm{SE}_\theta = \mathrm{SE}_{ATT} / \sqrt{\bar y_T \bar y_C}`, is exact to first order
when :math:`\bar y_T = \bar y_C` — every negative control under the null, which is what the
error distribution is fitted from — and for an outcome with an effect lies between the two
one-arm forms (within :math:`\sqrt{\bar y_C/\bar y_T}`, 1.12 at a 20 % effect). On this scale
CohortMethod's thresholds apply as they are, without conversion: EASE ≤ 0.25, MDRR ≤ 10.
An estimate whose arm means are not both positive (a DP-noisy mean of a rare outcome) has no
log ratio; it is left out and counted.

**The null** (Schuemie et al. 2014, *Stat Med* 33:209): each negative control's estimate is
:math:`\hat\theta_i \sim N(\mu, \tau^2 + s_i^2)` — the true effect is 0, the systematic error
is :math:`N(\mu, \tau^2)`, the random error has the estimate's own SE :math:`s_i`. :func:`fit_null`
maximises that likelihood (EmpiricalCalibration's ``fitNull``): for fixed τ the best μ is the
precision-weighted mean, so the profile likelihood in τ is maximised on a grid refined by
golden-section search, boundary τ = 0 included.

**Calibrated p** (Schuemie 2014): :math:`z = (\hat\theta - \mu)/\sqrt{\tau^2 + s^2}`,
:math:`p = 2\,\Phi(-|z|)`.

**Calibrated CI** (Schuemie et al. 2018, *PNAS* 115:2571): the systematic-error model
:math:`\hat\theta \sim N(\beta + \mu(\beta), \tau(\beta)^2 + s^2)` is fitted from negative *and*
positive controls; with negative controls only (ours: no synthetic positive controls are
injected) EmpiricalCalibration's ``convertNullToErrorModel`` takes the error as **constant in
the true effect**, :math:`\mu(\beta) = \mu`, :math:`\tau(\beta) = \tau`. That assumption gives
the closed form :math:`\beta \in \hat\theta - \mu \pm z_{0.975}\sqrt{\tau^2 + s^2}`. If an
effect's systematic error grows with its size, this CI is too narrow for large effects.

**EASE** (expected absolute systematic error; EmpiricalCalibration's
``computeExpectedAbsoluteSystematicError``, CohortMethod's ``easeThreshold = 0.25``): the mean of
:math:`|X|` for :math:`X \sim N(\mu, \tau^2)`, the folded normal's mean
:math:`\tau\sqrt{2/\pi}\,e^{-\mu^2/2\tau^2} + \mu\,(1 - 2\Phi(-\mu/\tau))` (:math:`|\mu|` at τ = 0).

**MDRR** (minimum detectable relative risk, two-sided α = 0.05, power 0.8, from the design's
SE): :math:`\exp((z_{0.975} + z_{0.8})\,\mathrm{SE}_\theta)`, 2.80 SEs; the same multiple of the
ATT's SE is the minimum detectable difference in the outcome's units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

__all__ = [
    "Z_95",
    "NullModel",
    "calibrated_ci",
    "calibrated_p",
    "ease",
    "fit_null",
    "log_ratio",
    "mdrr",
    "min_detectable_multiple",
    "null_loglik",
]

_N = NormalDist()
Z_95 = _N.inv_cdf(0.975)


@dataclass(frozen=True)
class NullModel:
    """The fitted systematic-error distribution N(``mean``, ``sd``²) on the log-ratio scale,
    from ``n`` negative controls; ``loglik`` at the maximum."""

    mean: float
    sd: float
    n: int
    loglik: float


def null_loglik(
    mean: float, sd: float, theta: Sequence[float] | np.ndarray, se: Sequence[float] | np.ndarray
) -> float:
    """Log-likelihood of N(``mean``, ``sd``²) given the negative controls' estimates and SEs."""
    t, s = np.asarray(theta, dtype=float), np.asarray(se, dtype=float)
    v = sd**2 + s**2
    return float(-0.5 * np.sum(np.log(2 * math.pi * v) + (t - mean) ** 2 / v))


def _profile(tau: float, t: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """(best mean, log-likelihood) at ``tau``."""
    w = 1.0 / (tau**2 + s**2)
    mu = float(np.sum(w * t) / np.sum(w))
    return mu, null_loglik(mu, tau, t, s)


def fit_null(theta: Sequence[float], se: Sequence[float]) -> NullModel:
    """Maximum-likelihood N(μ, τ²) of the systematic error from negative controls.

    Raises:
        ValueError: fewer than two estimates, or an SE that is not positive and finite.
    """
    t, s = np.asarray(theta, dtype=float), np.asarray(se, dtype=float)
    if t.size < 2 or t.shape != s.shape:
        raise ValueError("fitting the null needs at least two negative-control estimates with SEs")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ValueError("negative-control estimates and SEs must be finite, SEs positive")
    top = float(np.max(np.abs(t - np.median(t)))) + float(np.max(s)) + 1e-9
    grid = np.concatenate([[0.0], np.geomspace(top * 1e-6, 4 * top, 400)])
    ll = np.array([_profile(g, t, s)[1] for g in grid])
    i = int(np.argmax(ll))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    g = (math.sqrt(5) - 1) / 2
    a, b = lo + (1 - g) * (hi - lo), lo + g * (hi - lo)
    fa, fb = _profile(a, t, s)[1], _profile(b, t, s)[1]
    for _ in range(100):
        if fa < fb:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _profile(b, t, s)[1]
        else:
            hi, b, fb = b, a, fa
            a = lo + (1 - g) * (hi - lo)
            fa = _profile(a, t, s)[1]
    candidates = [(grid[i], ll[i]), (a, fa), (b, fb), (0.0, _profile(0.0, t, s)[1])]
    tau, _ = max(candidates, key=lambda c: c[1])
    mu, best = _profile(float(tau), t, s)
    return NullModel(mean=mu, sd=float(tau), n=int(t.size), loglik=best)


def ease(null: NullModel) -> float:
    """Expected absolute systematic error: E|X| for X ~ N(mean, sd²)."""
    mu, tau = null.mean, null.sd
    if tau == 0:
        return abs(mu)
    return tau * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * tau**2)) + mu * (1 - 2 * _N.cdf(-mu / tau))


def calibrated_p(theta: float, se: float, null: NullModel) -> float:
    """Two-sided p of H0: no effect, against the empirical null instead of N(0, se²)."""
    z = (theta - null.mean) / math.sqrt(null.sd**2 + se**2)
    return 2 * _N.cdf(-abs(z))


def calibrated_ci(theta: float, se: float, null: NullModel, z: float = Z_95) -> tuple[float, float, float]:
    """(estimate, low, high) on the log-ratio scale, corrected for the systematic error the
    negative controls show, under the constant-error model (module docstring)."""
    half = z * math.sqrt(null.sd**2 + se**2)
    point = theta - null.mean
    return point, point - half, point + half


def log_ratio(*, se: float, treated_mean: float, control_mean: float) -> tuple[float, float] | None:
    """(θ, SE_θ) of an ATT on the log ratio of means, None where an arm's mean is not positive."""
    if not (treated_mean > 0 and control_mean > 0 and se > 0):
        return None
    return math.log(treated_mean / control_mean), se / math.sqrt(treated_mean * control_mean)


def min_detectable_multiple(alpha: float = 0.05, power: float = 0.8) -> float:
    """How many SEs a true effect must be to be detected: z_{1−α/2} + z_power (2.80)."""
    return _N.inv_cdf(1 - alpha / 2) + _N.inv_cdf(power)


def mdrr(se_log: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable relative risk (ratio of means) at two-sided ``alpha`` and ``power``."""
    return math.exp(min_detectable_multiple(alpha, power) * se_log)
