"""The doubly robust estimator (shared.psm.dr): additivity, a row-level reference, double
robustness under a misspecified propensity, and the DP release's noise scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
from psm_dgp import COVARIATES, OUTCOMES, make_study, partition

from shared.dp.plan import single_release_multiplier
from shared.psm import caliper_edges, cov_moments, estimate_att, fit_propensity, logit_sd, scale_outcomes
from shared.psm.dr import _centre, dp_ridge, dr_sensitivity, dr_stats, estimate_dr, release_dr
from shared.psm.strata import logit_scores, stratum_index

LO, CAP = [o.lo for o in OUTCOMES], [o.cap for o in OUTCOMES]


def _design(z, t):
    beta = fit_propensity(z=z, t=t).beta
    return beta, caliper_edges(beta=beta, sd=logit_sd(moments=cov_moments(z=z, t=t), beta=beta))


def _row_level_dr(z, t, y01, beta, edges) -> np.ndarray:
    """The same estimator from rows: least squares on the controls with one dummy per stratum
    holding controls, predicted for the treated of strata holding both arms."""
    b = stratum_index(logit_scores(z=z, beta=beta), edges)
    c, tr = t == 0, t == 1
    strata_c = np.unique(b[c])
    x = np.hstack([(b[c][:, None] == strata_c).astype(float), z[c]])
    coef, *_ = np.linalg.lstsq(x, y01[c], rcond=None)
    supported = tr & np.isin(b, strata_c)
    xt = np.hstack([(b[supported][:, None] == strata_c).astype(float), z[supported]])
    return (y01[supported] - xt @ coef).mean(axis=0)


def test_federated_dr_equals_pooled_and_row_level_to_1e9():
    st = make_study(n=3000, seed=7)
    y01, _ = scale_outcomes(y=st.y, lo=LO, cap=CAP)
    beta, edges = _design(st.z, st.t)
    parts = partition(3000, 5, np.random.default_rng(3))
    nodes = [dr_stats(z=st.z[p], t=st.t[p], y=y01[p], beta=beta, edges=edges) for p in parts]
    fed = estimate_dr(stats=sum(nodes[1:], nodes[0]), outcomes=OUTCOMES)
    pooled = estimate_dr(stats=dr_stats(z=st.z, t=st.t, y=y01, beta=beta, edges=edges), outcomes=OUTCOMES)
    rows = _row_level_dr(st.z, st.t, y01, beta, edges) * (np.array(CAP) - np.array(LO))
    for f, p, r in zip(fed, pooled, rows):
        assert f.att == pytest.approx(p.att, rel=1e-9, abs=1e-12)
        assert f.se == pytest.approx(p.se, rel=1e-9)
        assert f.att == pytest.approx(r, rel=1e-9)
        assert f.adjustment != 0.0  # the model did something: not the stratified estimate


def _linear_outcome_study(seed: int, n: int):
    """Propensity with a quadratic and an interaction term (the linear logit is misspecified);
    untreated outcome linear in z, constant effect 0.1 on the [0, 1] scale."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(size=(n, 3))
    logit = -2.5 + 5.0 * z[:, 0] ** 3 + 4.0 * z[:, 1] * z[:, 2]
    t = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(float)
    y0 = 0.1 + 0.5 * z[:, 0] + 0.2 * z[:, 1] + 0.1 * z[:, 2] + rng.normal(0, 0.03, n)
    y1 = y0 + 0.1
    y = np.where(t == 1, y1, y0)[:, None]
    return z, t, y, float(np.mean(y1[t == 1] - y0[t == 1]))


def test_dr_unbiased_where_stratification_is_not():
    """20 seeds of 4,000 rows: the DR mean error stays within 3 SEs of the mean (its derived
    tolerance) while stratification's exceeds it, on the same strata."""
    from shared.study import Outcome

    outs = (Outcome(name="y", lo=-1.0, cap=2.0),)
    dr_err, st_err, ses = [], [], []
    for seed in range(20):
        z, t, y, truth = _linear_outcome_study(seed, 4000)
        beta, edges = _design(z, t)
        y01, _ = scale_outcomes(y=y, lo=[-1.0], cap=[2.0])
        stats = dr_stats(z=z, t=t, y=y01, beta=beta, edges=edges)
        (e,) = estimate_dr(stats=stats, outcomes=outs)
        (s,) = estimate_att(table=stats.table, outcomes=outs, covariates=("a", "b", "c")).outcomes
        dr_err.append(e.att - truth)
        st_err.append(s.att - truth)
        ses.append(e.se)
    tol = 3 * float(np.mean(ses)) / math.sqrt(len(ses))
    assert abs(np.mean(dr_err)) < tol
    assert abs(np.mean(st_err)) > 2 * tol


def test_dp_release_noise_scale_and_sensitivity():
    st = make_study(n=2000, seed=2)
    y01, _ = scale_outcomes(y=st.y, lo=LO, cap=CAP)
    beta, edges = _design(st.z, st.t)
    stats = dr_stats(z=st.z, t=st.t, y=y01, beta=beta, edges=edges)
    # the sensitivity bound is attained by a corner row and never exceeded by real rows
    d, o = len(COVARIATES), len(OUTCOMES)
    delta = dr_sensitivity(n_covariates=d, n_outcomes=o)
    corner = dr_stats(z=np.ones((1, d)), t=np.zeros(1), y=np.ones((1, o)), beta=beta, edges=edges)
    moved = _centre(corner)
    flat = np.concatenate([moved[k][np.triu_indices(d)] if k == "zz" else moved[k].ravel() for k in moved])
    assert np.linalg.norm(flat) == pytest.approx(delta, rel=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(50):  # any single row (either arm) moves the release by at most Δ
        one = dr_stats(
            z=rng.uniform(size=(1, d)),
            t=rng.integers(0, 2, 1),
            y=rng.uniform(size=(1, o)),
            beta=beta,
            edges=edges,
        )
        c = _centre(one)
        v = np.concatenate([c[k][np.triu_indices(d)] if k == "zz" else c[k].ravel() for k in c])
        assert np.linalg.norm(v) <= delta + 1e-12
    # σ = μ·Δ with μ from the ledger's accountant; every released (centred) entry carries
    # N(0, σ²) once, zz's lower triangle mirroring its upper one
    sigma = single_release_multiplier(epsilon=1.0, delta=1e-6) * delta
    exact = _centre(stats)
    noise = {k: [] for k in exact}
    for s in range(300):
        rel = _centre(release_dr(stats, sigma=sigma, rng=np.random.default_rng(s)))
        for k in exact:
            noise[k].append(rel[k] - exact[k])
    for k, v in noise.items():
        arr = np.stack(v)
        if k == "zz":
            assert np.allclose(arr, np.swapaxes(arr, 1, 2))
            arr = arr[:, *np.triu_indices(d)]
        assert arr.std() == pytest.approx(sigma, rel=0.03), k
        assert abs(arr.mean()) < 4 * sigma / np.sqrt(arr.size), k


def test_dp_dr_tends_to_exact_as_noise_vanishes():
    st = make_study(n=3000, seed=4)
    y01, _ = scale_outcomes(y=st.y, lo=LO, cap=CAP)
    beta, edges = _design(st.z, st.t)
    stats = dr_stats(z=st.z, t=st.t, y=y01, beta=beta, edges=edges)
    exact = estimate_dr(stats=stats, outcomes=OUTCOMES, min_cell=0.5)  # counts 1 ± 1e-7 stay in
    rel = release_dr(stats, sigma=1e-7, rng=np.random.default_rng(1))
    noisy = estimate_dr(
        stats=rel, outcomes=OUTCOMES, min_cell=0.5, ridge=dp_ridge(sigma=1e-7, n_covariates=len(COVARIATES))
    )
    for e, n in zip(exact, noisy):
        assert n.att == pytest.approx(e.att, rel=1e-4)
