"""A doubly robust DP study's ATT by weighted sums (``psm_wsum`` + ``dr_dsum``,
:mod:`shared.dp.drwsum`): without noise, summed over nodes through the node's own answer code,
it is the pooled DR estimate to 1e-9; with noise, its privacy SE follows re-drawing every noise
the estimate carries (counts, both weighted sums, the slope)."""

from __future__ import annotations

import numpy as np
import pytest

from shared.answer import SiteArrays, exact_answer
from shared.dp.drwsum import dr_wsum_estimates, dsum_centers
from shared.dp.wsum import (
    att_weights,
    max_weight,
    weighted_sums,
    wsum_centers,
    wsum_query_counts,
    wsum_sensitivity,
)
from shared.protocol import PrivacyQuery, PsmStats, PsmWsum, StudyQuery
from shared.psm.dr import DrStats, dr_stats, estimate_dr, release_dr
from shared.psm.table import PsmTable
from shared.study import BudgetSplit, Covariate, Outcome

BETA = np.array([-1.0, 1.4, -0.8, 0.5])
EDGES = (-np.inf, -1.0, -0.6, -0.2, np.inf)
COVARIATES = (
    Covariate(name="age", lo=18, hi=90),
    Covariate(name="bmi", lo=15, hi=60),
    Covariate(name="sbp", lo=80, hi=200),
)
OUTCOMES = (Outcome(name="cost", cap=1000.0), Outcome(name="event", cap=1.0, kind="binary"))


def _data(rng: np.random.Generator, n: int):
    """Confounded rows whose outcomes depend on the covariates (so γ ≠ 0 and d matters)."""
    z = rng.uniform(size=(n, 3))
    t = (rng.uniform(size=n) < 1 / (1 + np.exp(-(BETA[0] + z @ BETA[1:])))).astype(float)
    mu = 0.05 + 0.2 * z[:, 0] + 0.1 * z[:, 2] - 0.03 * t
    cost = np.clip(mu + rng.normal(0, 0.05, n), 0, 1)
    return z, t, np.column_stack([cost, rng.uniform(size=n) < mu]).astype(float)


def _query(op) -> StudyQuery:
    return StudyQuery(
        study_id="drwsum-federated",
        treatment_column="treated",
        covariates=COVARIATES,
        outcomes=OUTCOMES,
        ops=(op,),
        privacy=PrivacyQuery(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_ps_rounds=2, estimator="dr"),
    )


def test_without_noise_the_federated_weighted_sums_are_the_pooled_dr_estimate():
    """Three nodes answer ``psm_stats`` (with the slope) and then ``psm_wsum`` with
    ``z_center`` through :func:`shared.answer.exact_answer`, the code every node runs; summed,
    with exact counts and no noise, the DR ATT, its stratified ATT and its sampling SE are the
    pooled :func:`shared.psm.dr.estimate_dr`'s to 1e-9, whatever the centres (they cancel)."""
    rng = np.random.default_rng(11)
    sites = [SiteArrays(**dict(zip("zty", _data(rng, n)))) for n in (3000, 1800, 2500)]
    beta = tuple(float(b) for b in BETA)
    stats_op = PsmStats(beta=beta, edges=EDGES, slope=True)
    answers = [exact_answer(stats_op, _query(stats_op), s) for s in sites]
    summed = {k: sum(np.asarray(a[k], dtype=float) for a in answers) for k in answers[0]}
    stats = DrStats.from_answer(summed)
    table = stats.table
    used = (table.count[:, 0] >= 1) & (table.count[:, 1] >= 1)
    assert used.all()
    v = att_weights(table.count, used)
    centers = wsum_centers(count=table.count, sum_y=table.sum_y, used=used)
    z_centers = dsum_centers(table=table, used=used)
    assert not np.allclose(z_centers, 0.5)  # the cell means: the centres' terms are exercised
    op = PsmWsum(
        beta=beta,
        edges=EDGES,
        count=wsum_query_counts(table.count, used),
        center=tuple(centers.reshape(-1)),
        max_weight=max_weight(v),
        z_center=tuple(z_centers.reshape(-1)),
    )
    sums = [exact_answer(op, _query(op), s) for s in sites]
    release = release_dr(stats, sigma_cells=0.0, sigma_slope=0.0, rng=np.random.default_rng(0))
    got = dr_wsum_estimates(
        release=release,
        table=table,
        used=used,
        wsum=sum(a["wsum"] for a in sums),
        centers=centers,
        sigma_wsum=0.0,
        dsum=sum(a["dsum"] for a in sums),
        z_centers=z_centers,
        sigma_dsum=0.0,
        sigma_count=0.0,
        outcomes=OUTCOMES,
        min_cell=1,
        n_draws=2,
        rng=np.random.default_rng(1),
    )
    z = np.vstack([s.z for s in sites])
    t = np.concatenate([s.t for s in sites])
    y = np.vstack([s.y for s in sites])
    pooled = estimate_dr(
        stats=dr_stats(z=z, t=t, y=y, beta=BETA, edges=np.array(EDGES)), outcomes=OUTCOMES, min_cell=1
    )
    for g, p, o in zip(got, pooled, OUTCOMES):
        assert abs(p.adjustment) > 1e-3 * o.cap  # the imbalance is corrected, not 0
        for field in ("att", "att_stratified", "adjustment", "se_sampling"):
            assert getattr(g, field) == pytest.approx(getattr(p, field), rel=1e-9, abs=1e-12), field
        assert g.se_privacy == 0.0


def test_privacy_se_follows_re_drawing_every_noise():
    """Re-draw the counts' and cell sums' noise (the weights and both sets of centres follow
    them, as the coordinator computes them), both weighted sums' noise and the slope's; the
    privacy SE (the residual's analytic part ⊕ the adjustment's bootstrap) follows the spread
    of the DR estimate, which here is materially noisier than its stratified part."""
    rng = np.random.default_rng(2)
    z, t, y = _data(rng, 12_000)
    stats = dr_stats(z=z, t=t, y=y, beta=BETA, edges=np.array(EDGES))
    table = stats.table
    used = np.ones(table.n_strata, dtype=bool)
    sigma_n, mu_w, mu_d, sigma_s = 12.0, 6.0, 6.0, 40.0
    atts, ses, strat = [], [], []
    draws = np.random.default_rng(3)
    for _ in range(250):
        count = table.count + draws.normal(0, sigma_n, table.count.shape)
        noisy = PsmTable(
            edges=table.edges,
            count=count,
            sum_y=table.sum_y + draws.normal(0, sigma_n, table.sum_y.shape),
            sumsq_y=table.sumsq_y,
            sum_z=table.sum_z + draws.normal(0, sigma_n, table.sum_z.shape),
            sumsq_z=table.sumsq_z,
        )
        v = att_weights(count, used)
        c = wsum_centers(count=count, sum_y=noisy.sum_y, used=used)
        cz = dsum_centers(table=noisy, used=used)
        sig_w, sig_d = mu_w * wsum_sensitivity(v, c), mu_d * wsum_sensitivity(v, cz)
        wz = dict(z=z, t=t, beta=BETA, edges=np.array(EDGES), v=v)
        w = weighted_sums(**wz, y=y, centers=c) + draws.normal(0, sig_w, 2)
        dsum = weighted_sums(**wz, y=z, centers=cz) + draws.normal(0, sig_d, 3)
        rel = release_dr(stats, sigma_cells=sigma_n, sigma_slope=sigma_s, rng=draws)
        kw = dict(
            release=rel,
            table=noisy,
            used=used,
            wsum=w,
            centers=c,
            dsum=dsum,
            z_centers=cz,
            sigma_dsum=sig_d,
            sigma_count=sigma_n,
            outcomes=OUTCOMES,
            min_cell=1,
            n_draws=40,
        )
        est = dr_wsum_estimates(**kw, sigma_wsum=sig_w, rng=np.random.default_rng(draws.integers(1 << 30)))
        atts.append([e.att for e in est])
        strat.append([e.att_stratified for e in est])
        ses.append([e.se_privacy for e in est])
    empirical = np.std(np.array(atts), axis=0, ddof=1)
    assert np.mean(ses, axis=0) == pytest.approx(empirical, rel=0.15)
    # the adjustment's noise is material here: the DR estimate is noisier than its stratified part
    assert np.all(empirical > 1.2 * np.std(np.array(strat), axis=0, ddof=1))
