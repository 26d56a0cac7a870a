"""Federated = pooled: the coordinator's loop over K nodes' sums gives the pooled estimator."""

from dataclasses import fields
from functools import reduce

import numpy as np
import pytest

from psm_dgp import COVARIATES, OUTCOMES, make_study, partition
from shared.psm.estimator import AttEstimate, estimate_att, estimate_att_pooled
from shared.psm.propensity import PropensityFitter, cov_moments, initial_beta, ps_contribution
from shared.psm.strata import caliper_edges, logit_sd, quantile_edges, score_grid, score_histogram
from shared.psm.table import psm_table, scale_outcomes

LO = [o.lo for o in OUTCOMES]
CAP = [o.cap for o in OUTCOMES]


def _sum(items):
    return reduce(lambda a, b: a + b, items)


def federated(nodes, *, strata="caliper", n_strata=8):
    """What the coordinator does (coordinator/study/workflow.py), with nodes as (z, t, y01)."""
    moments = _sum(cov_moments(z=z, t=t) for z, t, _ in nodes)
    fitter = PropensityFitter(p=moments.d + 1, beta0=initial_beta(moments=moments))
    while not fitter.update(_sum(ps_contribution(z=z, t=t, beta=fitter.beta) for z, t, _ in nodes)):
        pass
    if strata == "caliper":
        edges = caliper_edges(beta=fitter.beta, sd=logit_sd(moments=moments, beta=fitter.beta))
    else:
        grid = score_grid(beta=fitter.beta)
        hist = _sum(score_histogram(z=z, t=t, beta=fitter.beta, grid=grid) for z, t, _ in nodes)
        edges = quantile_edges(grid=grid, treated_counts=hist[:, 1], n_strata=n_strata)
    table = _sum(psm_table(z=z, t=t, y=y, beta=fitter.beta, edges=edges) for z, t, y in nodes)
    return fitter, estimate_att(table=table, outcomes=OUTCOMES, covariates=COVARIATES)


def _numbers(obj):
    """Every number in an estimate, flattened in a fixed order."""
    if isinstance(obj, (int, float, np.floating)) and not isinstance(obj, bool):
        return [float(obj)]
    if isinstance(obj, (tuple, list)):
        return [x for item in obj for x in _numbers(item)]
    if hasattr(obj, "__dataclass_fields__"):
        return [x for f in fields(obj) for x in _numbers(getattr(obj, f.name))]
    return []


def assert_estimates_equal(a: AttEstimate, b: AttEstimate, rtol=1e-9):
    assert [s.used for s in a.strata] == [s.used for s in b.strata]
    assert a.warnings == b.warnings
    x, y = np.array(_numbers(a)), np.array(_numbers(b))
    assert x.shape == y.shape and x.size > 50
    finite = np.isfinite(x)
    np.testing.assert_array_equal(x[~finite], y[~finite])
    np.testing.assert_allclose(x[finite], y[finite], rtol=rtol, atol=1e-12)


@pytest.fixture(scope="module")
def study():
    return make_study(n=6000, seed=11)


@pytest.mark.parametrize("k", range(1, 9))
def test_federated_equals_pooled_for_k_unequal_nodes(study, k):
    pooled = estimate_att_pooled(z=study.z, t=study.t, y=study.y, outcomes=OUTCOMES, covariates=COVARIATES)
    y01, _ = scale_outcomes(y=study.y, lo=LO, cap=CAP)
    parts = partition(study.t.size, k, np.random.default_rng(100 + k))
    sizes = sorted(p.size for p in parts)
    assert k == 1 or sizes[0] != sizes[-1]
    fitter, est = federated([(study.z[p], study.t[p], y01[p]) for p in parts])
    np.testing.assert_allclose(fitter.beta, pooled.fitter.beta, rtol=1e-9, atol=1e-12)
    assert fitter.iterations == pooled.fitter.iterations
    assert_estimates_equal(est, pooled.estimate)
    # and the estimate is not trivially the same object: the effect is real and in original units
    assert est.outcome("claims_cost").att < -500


def test_federated_equals_pooled_with_quantile_strata(study):
    pooled = estimate_att_pooled(z=study.z, t=study.t, y=study.y, outcomes=OUTCOMES,
                                 covariates=COVARIATES, strata="quantile", n_strata=6)
    y01, _ = scale_outcomes(y=study.y, lo=LO, cap=CAP)
    parts = partition(study.t.size, 5, np.random.default_rng(5))
    _, est = federated([(study.z[p], study.t[p], y01[p]) for p in parts], strata="quantile", n_strata=6)
    assert len(est.strata) == 6
    assert_estimates_equal(est, pooled.estimate)


def test_nodes_missing_an_arm_still_add_up(study):
    """A small company may have no treated at all; its rows still count as controls."""
    y01, _ = scale_outcomes(y=study.y, lo=LO, cap=CAP)
    controls_only = np.flatnonzero(study.t == 0)[:500]
    rest = np.setdiff1d(np.arange(study.t.size), controls_only)
    _, est = federated([(study.z[p], study.t[p], y01[p]) for p in (controls_only, rest)])
    pooled = estimate_att_pooled(z=study.z, t=study.t, y=study.y, outcomes=OUTCOMES, covariates=COVARIATES)
    assert_estimates_equal(est, pooled.estimate)
