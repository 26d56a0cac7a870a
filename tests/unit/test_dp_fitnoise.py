"""The propensity fit's noise in the DP CI (shared/dp/fitnoise.py): the bias-aware half-width
covers at 95 % whenever the bias is within its bound, the slopes' noise covariance is the
spread of a noisy Newton step, and the bias bound follows its formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shared.dp.fitnoise import bias_aware_halfwidth, fit_bias_bound, score_variance, slope_noise_covariance
from shared.dp.forms import CENTER, ps_from_release


@pytest.mark.parametrize("t", [0.0, 0.5, 1.0, 3.0])
def test_bias_aware_halfwidth_covers_at_the_bound_and_not_narrower(t):
    rng = np.random.default_rng(0)
    se = 2.0
    half = bias_aware_halfwidth(se=se, bias=t * se)
    err = t * se + rng.normal(0.0, se, 400_000)  # a bias exactly at the bound
    assert np.mean(np.abs(err) <= half) == pytest.approx(0.95, abs=0.002)
    assert np.mean(np.abs(err) <= 1.96 * se) < 0.94 or t == 0.0  # the plain CI would not cover
    if t == 0.0:
        assert half == pytest.approx(1.959964 * se, rel=1e-5)


def test_slope_noise_covariance_is_the_spread_of_the_noisy_newton_step():
    """The node adds N(0, σ²) to the centred gradient; the step H⁻¹g in the fitter's basis then
    varies by the covariance the bound uses (slopes only)."""
    rng = np.random.default_rng(1)
    p, sigma = 4, 3.0
    X = rng.normal(size=(200, p))
    H = X.T @ X  # a positive-definite Hessian in the basis of [1, z]
    draws = []
    for _ in range(20_000):
        e_c = rng.normal(0.0, sigma, p)
        g, _ = ps_from_release(g=e_c, H=np.eye(p))  # the noise mapped back to [1, z]
        draws.append(np.linalg.solve(H, g)[1:])
    want = slope_noise_covariance(H=H, sigma_fit=sigma)
    assert np.cov(np.array(draws).T) == pytest.approx(want, rel=0.05, abs=0.03 * np.abs(want).max())
    assert CENTER == 0.5


def test_fit_bias_bound_is_the_removed_confounding_times_the_noise_share():
    C = np.diag([0.01, 0.04])
    bound = fit_bias_bound(
        crude=[10.0, 1.0], adjusted=[4.0, 1.0], noise_cov=C, var_score=0.5, sd_z=[0.5, 0.5]
    )
    share = (0.25 * 0.01 + 0.25 * 0.04) / 0.5
    assert bound == pytest.approx([6.0 * share / (1 - share), 0.0])
    # without the covariates' SDs the bound assumes the largest a scaled covariate can have
    assert fit_bias_bound(crude=[10.0], adjusted=[4.0], noise_cov=C, var_score=0.5)[0] == pytest.approx(
        bound[0]
    )
    # correlations are not released: off-diagonal noise counts at its worst sign
    C2 = np.array([[0.01, -0.01], [-0.01, 0.04]])
    worse = fit_bias_bound(crude=[10.0], adjusted=[4.0], noise_cov=C2, var_score=0.5, sd_z=[0.5, 0.5])[0]
    assert worse > bound[0]
    # a score that is all noise: no bound
    assert math.isinf(fit_bias_bound(crude=[10.0], adjusted=[4.0], noise_cov=C * 100, var_score=0.5)[0])
    assert math.isinf(bias_aware_halfwidth(se=1.0, bias=math.inf))


def test_score_variance_from_a_histogram():
    grid = np.array([-np.inf, 0.0, 1.0, 2.0, 3.0, np.inf])
    hist = np.array([[0, 0], [5, 5], [0, 0], [5, 5], [0, 0]], dtype=float)  # mids 0.5 and 2.5
    assert score_variance(grid=grid, hist=hist) == pytest.approx(1.0)
    assert score_variance(grid=grid, hist=-hist) == 0.0  # noise-only (negative) bins carry nothing
