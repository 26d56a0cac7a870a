"""A doubly robust DP study reads each covariate's SMD after weighting from its ``dr_dsum``
release (:mod:`shared.psm.balance`, :func:`shared.dp.drwsum.dsum_imbalance`): d = Σ_b w_b(z̄_bT −
z̄_bC) is the SMD's numerator. Without noise it is the cells' SMD after weighting to 1e-9 (the
rest of the balance row unchanged); with noise the SD each row reports is the spread of the
SMD after weighting over re-drawn noise, and it is well below the cells' SD."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from shared.answer import SiteArrays, exact_answer
from shared.dp.drwsum import dsum_centers, dsum_imbalance
from shared.dp.study_sim import run_dp_study
from shared.dp.wsum import att_weights, max_weight, wsum_centers, wsum_query_counts
from shared.protocol import PrivacyQuery, PsmWsum, StudyQuery
from shared.psm.balance import balance_table
from shared.psm.cells import clamped_counts
from shared.psm.reference import estimate_att_federated
from shared.psm.table import psm_table, scale_outcomes
from shared.study import BudgetSplit, Covariate, Privacy
from tests.unit.psm_dgp import COVARIATES, OUTCOMES, make_study, partition

N_ROWS, N_SITES = 20_000, 3


@pytest.fixture(scope="module")
def federation():
    """About 5k treated over three sites, six covariates; outcomes in original units and on
    the [0, 1] scale the nodes hold."""
    s = make_study(n=N_ROWS, seed=4)
    y01, _ = scale_outcomes(y=s.y, lo=[o.lo for o in OUTCOMES], cap=[o.cap for o in OUTCOMES])
    parts = partition(N_ROWS, N_SITES, np.random.default_rng(1))
    return s, y01, parts


def _query(op) -> StudyQuery:
    return StudyQuery(
        study_id="drbalance",
        treatment_column="treated",
        covariates=tuple(Covariate(name=c, lo=0.0, hi=1.0) for c in COVARIATES),
        outcomes=OUTCOMES,
        ops=(op,),
        privacy=PrivacyQuery(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_ps_rounds=2, estimator="dr"),
    )


def test_without_noise_the_smd_after_from_d_is_the_cells(federation):
    """The exact DR study over in-process sites gives the table, weights and balance rows; the
    sites then answer the DR study's weighted sums (``psm_wsum`` with ``z_center``) with the
    node's own code at those strata and exact counts. d over the cells' pooled SD is the cells'
    SMD after weighting to 1e-9, and every other field of the row is the cells'."""
    s, y01, parts = federation
    exact = estimate_att_federated(
        nodes=[(s.z[p], s.t[p], s.y[p]) for p in parts],
        outcomes=OUTCOMES,
        covariates=COVARIATES,
        estimator="dr",
    )
    table = exact.table
    n = clamped_counts(table.count)
    used = (n[:, 0] >= 1) & (n[:, 1] >= 1)
    assert [r.used for r in exact.estimate.strata] == used.tolist()
    z_centers = dsum_centers(table=table, used=used)
    assert not np.allclose(z_centers, 0.5)  # the centres' terms are exercised
    op = PsmWsum(
        beta=tuple(float(b) for b in exact.fitter.beta),
        edges=tuple(float(e) for e in table.edges),
        count=wsum_query_counts(table.count, used),
        center=tuple(wsum_centers(count=table.count, sum_y=table.sum_y, used=used).reshape(-1)),
        max_weight=max_weight(att_weights(table.count, used)),
        z_center=tuple(z_centers.reshape(-1)),
    )
    sites = [SiteArrays(z=s.z[p], t=s.t[p], y=y01[p]) for p in parts]
    dsum = sum(exact_answer(op, _query(op), site)["dsum"] for site in sites)
    imbalance = dsum_imbalance(
        table=table, used=used, dsum=dsum, z_centers=z_centers, sigma_dsum=0.0, sigma_count=0.0
    )
    w = np.where(used, n[:, 1], 0.0) / n[used, 1].sum()
    rows = balance_table(table=table, covariates=COVARIATES, weights=w, used=used, imbalance=imbalance)
    assert np.all(imbalance.noise_sd == 0.0)
    for got, want in zip(rows, exact.estimate.balance, strict=True):
        assert abs(want.smd_after) > 1e-4  # a real imbalance, not 0 = 0
        assert got.smd_after == pytest.approx(want.smd_after, rel=1e-9, abs=1e-12)
        assert got.model_copy(update={"smd_after": want.smd_after}) == want


def _run(sites, seed: int, estimator: str):
    return run_dp_study(
        sites=sites,
        outcomes=OUTCOMES,
        covariates=COVARIATES,
        privacy=Privacy(epsilon=4.0, delta=1e-6, secure_aggregation=True),
        estimator=estimator,
        rngs=[np.random.default_rng([seed, i, 5]) for i in range(len(sites))],
    )


def test_with_noise_the_reported_sd_is_the_spread_of_re_drawn_noise(federation):
    """The shipped DR DP study re-run on the same data with K noise seeds. Each run's error is
    its SMD after weighting less the exact one at *its own* design (its noisy β, merged strata
    and used strata, from the pooled rows): the noise SD is conditional on the design, which
    moves with the noise too. If the reported SD σ is right, Σ error² / σ² over K runs is
    χ²_K (mean-zero normal errors), so per covariate the ratio RMS(error)² / mean(σ²) lies in
    [χ²_K(α/2D)/K, χ²_K(1 − α/2D)/K] with α = 1 % over the D covariates (Bonferroni), widened by
    10 % for the delta method's own error (bounds 0.58–1.60 at K = 120; measured here 0.86–1.05,
    and 0.97–1.12 at K = 200, ε = 1 and 4)."""
    s, y01, parts = federation
    sites = [SiteArrays(z=s.z[p], t=s.t[p], y=y01[p]) for p in parts]
    denom = np.sqrt((s.z[s.t == 1].var(axis=0, ddof=1) + s.z[s.t == 0].var(axis=0, ddof=1)) / 2.0)
    k_runs, d = 120, len(COVARIATES)
    err, var = np.zeros((k_runs, d)), np.zeros((k_runs, d))
    for k in range(k_runs):
        study = _run(sites, k, "dr")
        exact = psm_table(z=s.z, t=s.t, y=y01, beta=study.beta, edges=study.edges)
        used = np.array([b.used for b in study.estimate.strata])
        w = np.where(used, exact.count[:, 1], 0.0) / exact.count[used, 1].sum()
        means = exact.sum_z / np.maximum(exact.count, 1.0)[..., None]
        smd = (w @ (means[:, 1] - means[:, 0])) / denom
        rows = study.estimate.balance
        assert all(r.smd_after is not None and r.smd_after_noise_sd is not None for r in rows)
        err[k] = [r.smd_after - e for r, e in zip(rows, smd)]
        var[k] = [r.smd_after_noise_sd**2 for r in rows]
    ratio = np.mean(err**2, axis=0) / np.mean(var, axis=0)
    q = 0.01 / (2 * d)
    lo, hi = chi2.ppf(q, k_runs) / k_runs / 1.1, chi2.ppf(1 - q, k_runs) / k_runs * 1.1
    assert np.all((lo < ratio) & (ratio < hi)), (ratio, lo, hi)
    # the stratified study on the same seed reads the cells: its SD is the larger, ≥ 3× here
    cells = _run(sites, 0, "stratified").estimate.balance
    dr = _run(sites, 0, "dr").estimate.balance
    for c, r in zip(cells, dr):
        assert c.smd_after_noise_sd is not None and r.smd_after_noise_sd is not None
        assert r.smd_after_noise_sd < c.smd_after_noise_sd / 3.0
