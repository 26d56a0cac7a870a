"""Empirical calibration (shared/psm/calibration.py) against references computed another way:
a brute-force likelihood grid, numerical integration, the textbook normal test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.psm.calibration import (
    NullModel,
    calibrated_ci,
    calibrated_p,
    ease,
    fit_null,
    log_ratio,
    mdrr,
    min_detectable_multiple,
    null_loglik,
)


def _brute_force(theta, se):
    """The likelihood's maximum on a fine (μ, τ) grid, then a finer one around it."""
    t, s = np.asarray(theta), np.asarray(se)
    mus, taus = np.linspace(-1, 1, 401), np.linspace(0, 1, 401)
    for _ in range(3):
        M, T = np.meshgrid(mus, taus, indexing="ij")
        v = T[..., None] ** 2 + s**2
        ll = -0.5 * np.sum(np.log(2 * np.pi * v) + (t - M[..., None]) ** 2 / v, axis=-1)
        i, j = np.unravel_index(np.argmax(ll), ll.shape)
        dm, dt = mus[1] - mus[0], taus[1] - taus[0]
        mus = np.linspace(mus[i] - 2 * dm, mus[i] + 2 * dm, 101)
        taus = np.linspace(max(taus[j] - 2 * dt, 0), taus[j] + 2 * dt, 101)
    return float(M[i, j]), float(T[i, j]), float(ll[i, j])


@pytest.mark.parametrize("seed,mu,tau", [(0, 0.0, 0.0), (1, 0.1, 0.05), (2, -0.2, 0.3), (3, 0.4, 0.15)])
def test_fit_null_is_the_maximum_likelihood_of_a_brute_force_grid(seed, mu, tau):
    rng = np.random.default_rng(seed)
    se = rng.uniform(0.03, 0.3, size=24)
    theta = rng.normal(mu, np.sqrt(tau**2 + se**2))
    fit = fit_null(theta, se)
    m, t, ll = _brute_force(theta, se)
    assert fit.loglik >= ll - 1e-7  # never worse than the grid's best
    assert fit.mean == pytest.approx(m, abs=2e-4)
    assert fit.sd == pytest.approx(t, abs=2e-4)
    assert fit.loglik == pytest.approx(null_loglik(fit.mean, fit.sd, theta, se), abs=1e-12)


def test_fit_null_recovers_a_known_systematic_error_from_many_controls():
    rng = np.random.default_rng(7)
    se = rng.uniform(0.05, 0.2, size=4000)
    theta = rng.normal(0.3, np.sqrt(0.2**2 + se**2))
    fit = fit_null(theta, se)
    assert fit.mean == pytest.approx(0.3, abs=0.01)
    assert fit.sd == pytest.approx(0.2, abs=0.01)


def test_no_excess_spread_gives_tau_zero():
    """Estimates closer together than their SEs say: the maximum is on the boundary τ = 0,
    where μ is the precision-weighted mean."""
    se = np.full(10, 0.5)
    theta = np.linspace(-0.01, 0.01, 10) + 0.05
    fit = fit_null(theta, se)
    assert fit.sd == 0.0
    assert fit.mean == pytest.approx(0.05, abs=1e-12)


def test_fit_null_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError):
        fit_null([0.1], [0.1])
    with pytest.raises(ValueError):
        fit_null([0.1, 0.2], [0.1, 0.0])


@pytest.mark.parametrize("mu,tau", [(0.0, 0.2), (0.15, 0.1), (-0.3, 0.25), (0.5, 0.01), (0.2, 0.0)])
def test_ease_is_the_mean_absolute_systematic_error_by_numerical_integration(mu, tau):
    null = NullModel(mean=mu, sd=tau, n=20, loglik=0.0)
    if tau == 0:
        assert ease(null) == abs(mu)
        return
    x = np.linspace(mu - 12 * tau, mu + 12 * tau, 400_001)
    dens = np.exp(-((x - mu) ** 2) / (2 * tau**2)) / (tau * math.sqrt(2 * math.pi))
    assert ease(null) == pytest.approx(np.trapezoid(np.abs(x) * dens, x), rel=1e-8)


def test_calibration_with_a_null_of_no_error_is_the_textbook_normal_test():
    none = NullModel(mean=0.0, sd=0.0, n=20, loglik=0.0)
    theta, se = 0.3, 0.15  # z = 2
    assert calibrated_p(theta, se, none) == pytest.approx(0.04550026389635842, rel=1e-12)
    point, lo, hi = calibrated_ci(theta, se, none)
    half = 1.959963984540054 * 0.15
    assert (point, lo, hi) == pytest.approx((0.3, 0.3 - half, 0.3 + half))


def test_calibration_removes_the_systematic_error_and_widens_by_its_spread():
    null = NullModel(mean=0.2, sd=0.1, n=20, loglik=0.0)
    # an estimate equal to the bias is no evidence at all
    assert calibrated_p(0.2, 0.05, null) == pytest.approx(1.0)
    point, lo, hi = calibrated_ci(0.2, 0.05, null)
    assert point == pytest.approx(0.0)
    assert hi - lo == pytest.approx(2 * 1.959963984540054 * math.sqrt(0.1**2 + 0.05**2))
    # the calibrated CI excludes 0 exactly when the calibrated p is below 0.05
    for theta in np.linspace(-0.5, 0.8, 27):
        _, lo, hi = calibrated_ci(float(theta), 0.05, null)
        assert (lo > 0 or hi < 0) == (calibrated_p(float(theta), 0.05, null) < 0.05)


def test_log_ratio_and_mdrr():
    theta, se = log_ratio(se=10.0, treated_mean=100.0, control_mean=100.0)  # type: ignore[misc]
    assert theta == 0.0 and se == pytest.approx(0.1)
    assert log_ratio(se=1.0, treated_mean=0.0, control_mean=2.0) is None
    assert min_detectable_multiple() == pytest.approx(1.959963984540054 + 0.8416212335729143)
    assert mdrr(0.1) == pytest.approx(math.exp(0.28015852), rel=1e-7)
    assert mdrr(math.log(10) / min_detectable_multiple()) == pytest.approx(10.0)
