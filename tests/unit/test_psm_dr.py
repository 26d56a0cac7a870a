"""The doubly robust estimator (shared.psm.dr): additivity, a row-level reference, double
robustness under a misspecified propensity, and the DP release's noise scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
from psm_dgp import COVARIATES, OUTCOMES, make_study, partition

from shared.psm import caliper_edges, cov_moments, estimate_att, fit_propensity, logit_sd, scale_outcomes
from shared.psm.dr import (
    _split,
    dr_sensitivities,
    dr_sigmas,
    dr_stats,
    estimate_dr,
    estimate_dr_release,
    release_dr,
)
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


def _flat(arrays: dict, d: int) -> np.ndarray:
    """A release's entries as one vector (``zz``: its distinct entries, as released)."""
    return np.concatenate([arrays[k][np.triu_indices(d)] if k == "zz" else arrays[k].ravel() for k in arrays])


def test_dp_releases_sensitivity_noise_and_cost():
    """Each release's Δ₂ is attained by a corner row and never exceeded; each carries N(0, σ²)
    on every released entry; the pair of multipliers costs what one release at ε does."""
    from shared.dp.accounting import epsilon_spent

    st = make_study(n=2000, seed=2)
    y01, _ = scale_outcomes(y=st.y, lo=LO, cap=CAP)
    beta, edges = _design(st.z, st.t)
    stats = dr_stats(z=st.z, t=st.t, y=y01, beta=beta, edges=edges)
    d, o = len(COVARIATES), len(OUTCOMES)
    deltas = dr_sensitivities(n_covariates=d, n_outcomes=o)
    corner = dr_stats(z=np.ones((1, d)), t=np.zeros(1), y=np.ones((1, o)), beta=beta, edges=edges)
    for part, delta in zip(_split(corner), deltas):
        assert np.linalg.norm(_flat(part, d)) == pytest.approx(delta, rel=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(50):  # any single row (either arm) moves each release by at most its Δ
        one = dr_stats(
            z=rng.uniform(size=(1, d)),
            t=rng.integers(0, 2, 1),
            y=rng.uniform(size=(1, o)),
            beta=beta,
            edges=edges,
        )
        for part, delta in zip(_split(one), deltas):
            assert np.linalg.norm(_flat(part, d)) <= delta + 1e-12
    sc, ss = dr_sigmas(epsilon=1.0, delta=1e-6, n_covariates=d, n_outcomes=o)
    assert epsilon_spent(
        noise_multipliers=[sc / deltas[0], ss / deltas[1]], delta=1e-6, accountant="gaussian"
    ) == (pytest.approx(1.0, rel=1e-4))
    exact = _split(stats)
    noise: list[list[np.ndarray]] = [[], []]
    for s in range(200):
        rel = release_dr(stats, sigma_cells=sc, sigma_slope=ss, rng=np.random.default_rng(s))
        got = (_split(rel.cells)[0], _split(rel.slope)[1])
        for i in (0, 1):
            noise[i].append(_flat(got[i], d) - _flat(exact[i], d))
    for i, sigma in enumerate((sc, ss)):
        arr = np.stack(noise[i])
        assert arr.std() == pytest.approx(sigma, rel=0.03)
        assert abs(arr.mean()) < 4 * sigma / np.sqrt(arr.size)
    # the releases are independent: no correlation between the cells' and the slope's noise
    corr = np.corrcoef(np.stack(noise[0])[:, :50].ravel(), np.stack(noise[1])[:, :50].ravel())[0, 1]
    assert abs(corr) < 4 / np.sqrt(200 * 50)


def _quintile_stats(n: int, seed: int):
    st = make_study(n=n, seed=seed)
    y01, _ = scale_outcomes(y=st.y, lo=LO, cap=CAP)
    beta, _ = _design(st.z, st.t)
    score = st.z @ beta[1:] + beta[0]
    edges = np.concatenate(([-np.inf], np.quantile(score, [0.2, 0.4, 0.6, 0.8]), [np.inf]))
    return dr_stats(z=st.z, t=st.t, y=y01, beta=beta, edges=edges)


def test_dp_slope_centring_bias_matches_its_analytic_value_and_is_removed():
    """The centring −Σ_g s_g s_gᵀ/n_g of noisy group sums has mean −m_gσ²/n_g on S_zz's
    diagonal: over 3,000 releases of the control cells (Σzzᵀ kept exact: its noise has mean 0 and
    only blurs the comparison) the uncorrected S_zz's diagonal falls short of the exact one by
    that analytic amount, and the corrected one does not (both within 4 Monte-Carlo SEs).
    And at any σ the ridged matrix keeps every eigenvalue ≥ λ (a noisy S_zz is projected onto
    the semi-definite cone before the ridge), so the slope stays bounded."""
    from shared.psm.dr import _fit, _noisy, _release_from_centred, dp_ridge

    stats = _quintile_stats(4000, 3)
    cells, slope = _split(stats)
    sigma = 6.0  # the noisy S_zz stays positive definite (smallest eigenvalue 21): no projection
    lam = dp_ridge(sigma=sigma, n_covariates=len(COVARIATES))
    exact = np.diag(_fit(stats, 1, lam)[1])
    analytic = sigma**2 * np.sum(1.0 / stats.table.count[:, 0])  # one stratum per group
    raw, fixed = [], []
    for s in range(3000):
        noisy = _noisy(slope, sigma, np.random.default_rng(s)) | {"zz": slope["zz"], "zy": slope["zy"]}
        rel = _release_from_centred(cells, noisy, stats.table.edges, 0, sigma)
        raw.append(np.mean(np.diag(_fit(rel.slope, 1, lam)[1]) - exact))
        fixed.append(np.mean(np.diag(_fit(rel.slope, 1, lam, noise_sd=sigma)[1]) - exact))
    for vals, target in ((raw, -analytic), (fixed, 0.0)):
        v = np.array(vals)
        assert abs(v.mean() - target) < 4 * v.std(ddof=1) / np.sqrt(v.size), (v.mean(), target)
    assert analytic > 6 * np.std(raw, ddof=1) / np.sqrt(3000)  # the test can tell them apart
    big = 200.0  # noise far above S_zz's spread: the noisy matrix is indefinite
    lam = dp_ridge(sigma=big, n_covariates=len(COVARIATES))
    for s in range(50):
        rel = _release_from_centred(
            cells, _noisy(slope, big, np.random.default_rng(s)), stats.table.edges, 0, big
        )
        assert np.linalg.eigvalsh(_fit(rel.slope, 1, lam, noise_sd=big)[1])[0] >= lam * (1 - 1e-9)


def test_dp_dr_unbiased_over_noise_and_its_se_matches_the_noise():
    """Fixed data, the two releases re-drawn: the DP estimate's mean error against the same
    estimator without noise (same ridge) is within 4 Monte-Carlo SEs of 0 for every outcome,
    and the parametric-bootstrap privacy SE (corrected for re-drawing at a noisy point) is
    within 30 % of the SD of the estimate over releases (3 × the relative SE of an SD of 60
    draws, 1/√118)."""
    from shared.psm.dr import dp_ridge, redraw_dr_se

    stats = _quintile_stats(4000, 3)
    sigma = 4.0
    lam = dp_ridge(sigma=sigma, n_covariates=len(COVARIATES))
    ref = np.array([e.att for e in estimate_dr(stats=stats, outcomes=OUTCOMES, min_cell=1, ridge=lam)])
    att, se = [], []
    for s in range(60):
        rng = np.random.default_rng(s)
        rel = release_dr(stats, sigma_cells=sigma, sigma_slope=sigma, rng=rng)
        est = estimate_dr(
            stats=rel.cells, outcomes=OUTCOMES, min_cell=1, ridge=lam, slope=rel.slope, slope_noise_sd=sigma
        )
        att.append([e.att for e in est])
        se.append(redraw_dr_se(rel, outcomes=OUTCOMES, min_cell=1, n_draws=10, rng=rng))
    err, sd = np.array(att) - ref, np.array(att).std(axis=0, ddof=1)
    assert np.all(np.abs(err.mean(axis=0)) < 4 * sd / np.sqrt(len(att))), (err.mean(axis=0), sd)
    assert np.all(np.abs(np.mean(se, axis=0) / sd - 1) < 0.3), np.mean(se, axis=0) / sd


def test_dp_dr_covers_on_a_misspecified_propensity():
    """Coverage smoke test, DP, on the misspecified-propensity process with a linear outcome:
    40 seeds of 4,000 rows, ε = 4; the count of covering CIs lies in the binomial(40, 0.95)
    central 99.9 % range (34–40)."""
    from shared.study import Outcome

    outs = (Outcome(name="y", lo=-1.0, cap=2.0),)
    covered = 0
    for seed in range(40):
        z, t, y, truth = _linear_outcome_study(100 + seed, 4000)
        beta, edges = _design(z, t)
        y01, _ = scale_outcomes(y=y, lo=[-1.0], cap=[2.0])
        score = z @ beta[1:] + beta[0]
        edges = np.concatenate(([-np.inf], np.quantile(score[t == 1], np.linspace(0.1, 0.9, 9)), [np.inf]))
        stats = dr_stats(z=z, t=t, y=y01, beta=beta, edges=edges)
        sc, ss = dr_sigmas(epsilon=4.0, delta=1e-6, n_covariates=3, n_outcomes=1)
        rel = release_dr(stats, sigma_cells=sc, sigma_slope=ss, rng=np.random.default_rng(seed))
        (e,) = estimate_dr_release(
            rel, outcomes=outs, min_cell=2 * sc, n_draws=10, rng=np.random.default_rng(seed)
        )
        covered += e.ci[0] <= truth <= e.ci[1]
    assert 34 <= covered <= 40, covered


def test_study_path_dr_equals_pooled_dr_to_1e9():
    """``estimator = "dr"`` through the study driver over five in-process sites (the node's
    answer code, the coordinator's sums) equals the DR estimator on the pooled rows' statistics
    at the study's own β and strata, and the same least squares on rows."""
    from shared.psm.reference import estimate_att_federated

    st = make_study(n=3000, seed=11)
    parts = partition(3000, 5, np.random.default_rng(5))
    nodes = [(st.z[p], st.t[p], st.y[p]) for p in parts]
    run = estimate_att_federated(nodes=nodes, outcomes=OUTCOMES, covariates=COVARIATES, estimator="dr")
    strat = estimate_att_federated(nodes=nodes, outcomes=OUTCOMES, covariates=COVARIATES)
    y01, _ = scale_outcomes(y=st.y, lo=LO, cap=CAP)
    beta, edges = run.fitter.beta, run.edges
    pooled = estimate_dr(stats=dr_stats(z=st.z, t=st.t, y=y01, beta=beta, edges=edges), outcomes=OUTCOMES)
    rows = _row_level_dr(st.z, st.t, y01, beta, edges) * (np.array(CAP) - np.array(LO))
    for o, p, r, s in zip(run.estimate.outcomes, pooled, rows, strat.estimate.outcomes):
        assert o.att == pytest.approx(p.att, rel=1e-9, abs=1e-12)
        assert o.se == pytest.approx(p.se, rel=1e-9)
        # the exact stratified CI's skewness-corrected shape carried to DR's estimate and SE
        upper, lower = (s.att - s.ci[0]) / s.se, (s.att - s.ci[1]) / s.se
        assert o.ci_method == s.ci_method == "skew_t" and o.ci != pytest.approx(p.ci, rel=1e-6)
        assert o.ci == pytest.approx((p.att - upper * p.se, p.att - lower * p.se), rel=1e-9)
        assert o.att == pytest.approx(r, rel=1e-9)
        assert o.att_stratified == pytest.approx(s.att, rel=1e-12)  # the stratified one, kept
        assert o.control_mean == pytest.approx(o.treated_mean - o.att, rel=1e-12)
        assert o.att != pytest.approx(s.att, rel=1e-6)  # DR is not the stratified estimate
