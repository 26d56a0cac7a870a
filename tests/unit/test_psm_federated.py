"""Federated = pooled: the coordinator's loop over K nodes' sums gives the pooled estimator."""

from dataclasses import fields

import numpy as np
import pytest
from psm_dgp import COVARIATES, OUTCOMES, make_study, partition
from pydantic import BaseModel

from shared.features import FEATURE_NAMES, FEATURES, scale
from shared.psm.estimator import AttEstimate, estimate_att
from shared.psm.propensity import cov_moments, fit_propensity
from shared.psm.reference import estimate_att_federated, estimate_att_pooled
from shared.psm.strata import caliper_edges, logit_sd
from shared.psm.table import psm_table, scale_outcomes
from shared.synth import generate_federation
from shared.synth.outcomes import OUTCOMES as SYNTH_OUTCOMES

SYNTH_NAMES = [o.name for o in SYNTH_OUTCOMES]
LO = [o.lo for o in OUTCOMES]
CAP = [o.cap for o in OUTCOMES]


def textbook(z, t, y):
    """The stratified estimator on pooled rows, written from its definition with the
    building blocks only (no study driver, no sites): converged pooled fit, caliper edges
    of 0.2 SD of the logit, one table over every row."""
    fitter = fit_propensity(z=z, t=t)
    edges = caliper_edges(beta=fitter.beta, sd=logit_sd(moments=cov_moments(z=z, t=t), beta=fitter.beta))
    y01, _ = scale_outcomes(y=y, lo=LO, cap=CAP)
    table = psm_table(z=z, t=t, y=y01, beta=fitter.beta, edges=edges)
    return fitter, estimate_att(table=table, outcomes=OUTCOMES, covariates=COVARIATES)


def _numbers(obj):
    """Every number in an estimate, flattened in a fixed order."""
    if isinstance(obj, (int, float, np.floating)) and not isinstance(obj, bool):
        return [float(obj)]
    if isinstance(obj, (tuple, list)):
        return [x for item in obj for x in _numbers(item)]
    if hasattr(obj, "__dataclass_fields__"):
        return [x for f in fields(obj) for x in _numbers(getattr(obj, f.name))]
    if isinstance(obj, BaseModel):  # the estimate's parts are shared.result models
        return [x for name in type(obj).model_fields for x in _numbers(getattr(obj, name))]
    if isinstance(obj, dict):
        return [x for k in sorted(obj) for x in _numbers(obj[k])]
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


@pytest.fixture(scope="module")
def pooled_caliper(study):
    return estimate_att_pooled(z=study.z, t=study.t, y=study.y, outcomes=OUTCOMES, covariates=COVARIATES)


def test_the_driver_on_one_site_is_the_textbook_estimator(study, pooled_caliper):
    """The study driver over one in-process site (the pooled reference) equals the estimator
    written from its definition on the same rows, to rounding."""
    fitter, est = textbook(study.z, study.t, study.y)
    np.testing.assert_allclose(pooled_caliper.fitter.beta, fitter.beta, rtol=1e-9, atol=1e-12)
    assert_estimates_equal(pooled_caliper.estimate, est)


@pytest.mark.parametrize("k", range(2, 9))
def test_federated_equals_pooled_for_k_unequal_nodes(study, pooled_caliper, k):
    """The driver over k unequal in-process sites (each answering with the node's code) gives
    the pooled estimator: the same fit, iterations, strata and every number of the estimate."""
    pooled = pooled_caliper
    parts = partition(study.t.size, k, np.random.default_rng(100 + k))
    sizes = sorted(p.size for p in parts)
    assert sizes[0] != sizes[-1]
    fed = estimate_att_federated(
        nodes=[(study.z[p], study.t[p], study.y[p]) for p in parts], outcomes=OUTCOMES, covariates=COVARIATES
    )
    np.testing.assert_allclose(fed.fitter.beta, pooled.fitter.beta, rtol=1e-9, atol=1e-12)
    assert fed.fitter.iterations == pooled.fitter.iterations
    assert_estimates_equal(fed.estimate, pooled.estimate)
    # and the estimate is not trivially the same object: the effect is real and in original units
    assert fed.estimate.outcome("claims_cost").att < -500
    # the CIs compared are the skewness-corrected ones, from the sites' summed Σy³ and Σy⁴
    # (shared/psm/skew.py): asymmetric about the estimate, identical to the pooled rows' to 1e-9
    for o in fed.estimate.outcomes:
        assert o.ci_method == "skew_t"
        assert o.ci[1] - o.ci[0] > 2 * 1.96 * o.se  # the t reference is wider than the normal
    claims = fed.estimate.outcome("claims_cost")
    assert abs((claims.ci[1] - claims.att) - (claims.att - claims.ci[0])) > 0.01 * claims.se
    np.testing.assert_allclose(fed.table.sum3_y, pooled.table.sum3_y, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fed.table.sum4_y, pooled.table.sum4_y, rtol=1e-9, atol=1e-12)


def test_federated_equals_pooled_with_quantile_strata(study):
    pooled = estimate_att_pooled(
        z=study.z,
        t=study.t,
        y=study.y,
        outcomes=OUTCOMES,
        covariates=COVARIATES,
        strata="quantile",
        n_strata=6,
    )
    parts = partition(study.t.size, 5, np.random.default_rng(5))
    fed = estimate_att_federated(
        nodes=[(study.z[p], study.t[p], study.y[p]) for p in parts],
        outcomes=OUTCOMES,
        covariates=COVARIATES,
        strata="quantile",
        n_strata=6,
    )
    assert len(fed.estimate.strata) == 6
    assert_estimates_equal(fed.estimate, pooled.estimate)


def test_nodes_missing_an_arm_still_add_up(study, pooled_caliper):
    """A small company may have no treated at all; its rows still count as controls."""
    controls_only = np.flatnonzero(study.t == 0)[:500]
    rest = np.setdiff1d(np.arange(study.t.size), controls_only)
    fed = estimate_att_federated(
        nodes=[(study.z[p], study.t[p], study.y[p]) for p in (controls_only, rest)],
        outcomes=OUTCOMES,
        covariates=COVARIATES,
    )
    assert_estimates_equal(fed.estimate, pooled_caliper.estimate)
    np.testing.assert_array_equal(fed.n_clipped, pooled_caliper.n_clipped)


def test_federated_equals_pooled_on_shared_synth_sites():
    """The synthetic federation's sites (16 features, nearly collinear lipids): the estimate
    agrees to 1e-9; stratum edges may move by ~1e-8 of a stratum width (β is determined only to
    ~1e-10 along the collinear direction), which moves no row."""
    fed_data = generate_federation(seed=3, sites=5, scale=0.1)
    nodes = []
    for s in fed_data.sites:
        z = scale(s.cohort[list(FEATURE_NAMES)].to_numpy(float), FEATURES)
        nodes.append((z, s.cohort["treated"].to_numpy(float), s.cohort[SYNTH_NAMES].to_numpy(float)))
    fed = estimate_att_federated(nodes=nodes, outcomes=SYNTH_OUTCOMES, covariates=FEATURE_NAMES)
    z, t, y = (np.concatenate(parts) for parts in zip(*nodes))
    pooled = estimate_att_pooled(z=z, t=t, y=y, outcomes=SYNTH_OUTCOMES, covariates=FEATURE_NAMES)
    np.testing.assert_array_equal(fed.table.count, pooled.table.count)
    for part in ("outcomes", "balance", "diagnostics"):
        a, b = (
            np.array(_numbers(getattr(fed.estimate, part))),
            np.array(_numbers(getattr(pooled.estimate, part))),
        )
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    width = 0.2 * pooled.logit_sd
    assert np.max(np.abs(fed.edges[1:-1] - pooled.edges[1:-1])) < 1e-6 * width
