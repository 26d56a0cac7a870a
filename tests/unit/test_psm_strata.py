"""Strata on the logit score: public range, caliper grid, quantile edges from noisy histograms."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from psm_dgp import make_study

from shared.psm.propensity import cov_moments
from shared.psm.strata import (
    caliper_edges,
    logit_scores,
    logit_sd,
    quantile_edges,
    score_grid,
    score_histogram,
    score_range,
    stratum_index,
)

betas = st.lists(st.floats(-5, 5), min_size=3, max_size=6).map(np.array)


@settings(max_examples=50, deadline=None)
@given(betas, st.floats(0.05, 3.0))
def test_caliper_grid_tiles_the_public_range(beta, sd):
    lo, hi = score_range(beta=beta)
    corners = (
        beta[0] + np.array([[0.0] * (beta.size - 1), (beta[1:] > 0) * 1.0, (beta[1:] < 0) * 1.0]) @ beta[1:]
    )
    assert lo <= corners.min() + 1e-12 and corners.max() <= hi + 1e-12
    edges = caliper_edges(beta=beta, sd=sd)
    assert edges[0] == -np.inf and edges[-1] == np.inf and np.all(np.diff(edges) > 0)
    inner = edges[1:-1]
    if inner.size:
        np.testing.assert_allclose(np.diff(inner), 0.2 * sd, rtol=1e-9)
        assert lo < inner[0] <= lo + 0.2 * sd + 1e-9 and inner[-1] < hi
    assert edges.size - 1 == max(int(np.ceil((hi - lo) / (0.2 * sd) - 1e-9)), 1)


def test_logit_sd_from_moments_equals_sd_of_the_scores():
    s = make_study(n=3000, seed=2)
    beta = np.array([-1.0, 2.0, 1.0, -0.5, 0.3, 0.7, 0.9])
    scores = logit_scores(z=s.z, beta=beta)
    sd = logit_sd(moments=cov_moments(z=s.z, t=s.t), beta=beta)
    assert abs(sd - scores.std(ddof=1)) < 1e-10 * sd


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-20, 200), min_size=40, max_size=40), st.integers(1, 12))
def test_quantile_edges_from_any_noisy_histogram_are_valid(counts, n_strata):
    grid = score_grid(beta=np.array([0.5, 3.0, -2.0]), n_bins=40)
    counts = np.array(counts)
    if np.clip(counts, 0, None).sum() <= 0:
        return
    edges = quantile_edges(grid=grid, treated_counts=counts, n_strata=n_strata)
    assert edges[0] == -np.inf and edges[-1] == np.inf
    assert np.all(np.diff(edges) > 0) and np.all(np.isin(edges, grid))
    assert 1 <= edges.size - 1 <= n_strata


def test_quantile_strata_hold_about_equal_treated():
    s = make_study(n=20000, seed=5)
    beta = np.array([-3.4, 2.2, 1.4, -0.8, 0.6, 0.7, 0.9])
    grid = score_grid(beta=beta, n_bins=400)
    hist = score_histogram(z=s.z, t=s.t, beta=beta, grid=grid)
    assert hist.sum() == s.t.size and hist[:, 1].sum() == s.t.sum()
    edges = quantile_edges(grid=grid, treated_counts=hist[:, 1], n_strata=5)
    b = stratum_index(logit_scores(z=s.z, beta=beta), edges)
    per = np.bincount(b[s.t == 1], minlength=edges.size - 1) / s.t.sum()
    assert edges.size - 1 == 5
    np.testing.assert_allclose(per, 0.2, atol=0.03)


def test_a_score_range_below_float_resolution_still_gives_a_strictly_increasing_grid():
    """Slopes of 1e-16 (found by the sensitivity property test) made 200 equal bins collapse
    onto one float: the grid keeps only distinct edges, and every score still lands in a bin."""
    beta = np.array([1.0, 0.0, 0.0, 0.0, 2.220446049250313e-16])
    grid = score_grid(beta=beta)
    assert grid[0] == -np.inf and grid[-1] == np.inf and np.all(np.diff(grid) > 0)
    assert stratum_index(np.array([1.0, 1.0 + 2e-16]), grid).size == 2
