"""Property: every node statistic is additive over any partition of the rows."""

from functools import reduce

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import DataError
from shared.psm.propensity import cov_moments, ps_contribution
from shared.psm.strata import caliper_edges, score_grid, score_histogram
from shared.psm.table import PsmTable, psm_table

N, D, O = 60, 3, 2  # noqa: E741 - rows, covariates, outcomes
_rng = np.random.default_rng(3)
Z = _rng.uniform(size=(N, D))
Z[:5] = np.round(Z[:5])  # rows on the cube's corners: extreme scores
T = (_rng.uniform(size=N) < 0.4).astype(float)
Y = _rng.uniform(size=(N, O))
Y[:4] = [[0, 1], [1, 0], [0, 0], [1, 1]]  # outcomes at the clip bounds
BETA = np.array([-0.3, 1.5, -2.0, 0.7])
EDGES = caliper_edges(beta=BETA, sd=0.8)

labels = st.lists(st.integers(0, 7), min_size=N, max_size=N).map(np.array)
betas = st.lists(st.floats(-4, 4), min_size=D + 1, max_size=D + 1).map(np.array)


def _parts(lab):
    return [np.flatnonzero(lab == k) for k in np.unique(lab)]


def _sum(items):
    return reduce(lambda a, b: a + b, items)


@settings(max_examples=40, deadline=None)
@given(labels)
def test_psm_table_is_additive(lab):
    full = psm_table(z=Z, t=T, y=Y, beta=BETA, edges=EDGES)
    merged = _sum(psm_table(z=Z[p], t=T[p], y=Y[p], beta=BETA, edges=EDGES) for p in _parts(lab))
    np.testing.assert_array_equal(merged.count, full.count)  # integer counts: exact
    for name in ("sum_y", "sumsq_y", "sum_z", "sumsq_z"):
        np.testing.assert_allclose(getattr(merged, name), getattr(full, name), rtol=1e-12, atol=1e-12)
    assert merged.count.sum() == N
    np.testing.assert_allclose(merged.sum_y.sum(axis=(0, 1)), Y.sum(axis=0), rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(labels, betas)
def test_propensity_statistics_are_additive(lab, beta):
    full = ps_contribution(z=Z, t=T, beta=beta)
    merged = _sum(ps_contribution(z=Z[p], t=T[p], beta=beta) for p in _parts(lab))
    assert merged.n == N
    np.testing.assert_allclose(merged.g, full.g, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(merged.H, full.H, rtol=1e-10, atol=1e-12)
    assert abs(merged.loglik - full.loglik) <= 1e-10 * (1 + abs(full.loglik))


@settings(max_examples=40, deadline=None)
@given(labels)
def test_covariate_moments_and_score_histogram_are_additive(lab):
    full = cov_moments(z=Z, t=T)
    merged = _sum(cov_moments(z=Z[p], t=T[p]) for p in _parts(lab))
    np.testing.assert_array_equal(merged.count, full.count)
    np.testing.assert_allclose(merged.sum_z, full.sum_z, rtol=1e-12)
    np.testing.assert_allclose(merged.sum_zz, full.sum_zz, rtol=1e-12)
    grid = score_grid(beta=BETA, n_bins=30)
    hist = _sum(score_histogram(z=Z[p], t=T[p], beta=BETA, grid=grid) for p in _parts(lab))
    np.testing.assert_array_equal(hist, score_histogram(z=Z, t=T, beta=BETA, grid=grid))


def test_table_arrays_round_trip_and_refuse_other_edges():
    tab = psm_table(z=Z, t=T, y=Y, beta=BETA, edges=EDGES)
    back = PsmTable.from_arrays(tab.to_arrays())
    for name in ("edges", "count", "sum_y", "sumsq_y", "sum_z", "sumsq_z"):
        np.testing.assert_array_equal(getattr(back, name), getattr(tab, name))
    other = psm_table(z=Z, t=T, y=Y, beta=BETA, edges=caliper_edges(beta=BETA, sd=0.5))
    with pytest.raises(DataError, match="different stratum edges"):
        tab + other
