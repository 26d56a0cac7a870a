"""DP estimation end to end: the CI carries the privacy noise (it is accounted for, not just
added), the analytic privacy SE matches re-drawing the noise, and the DP strata rules hold."""

from __future__ import annotations

import numpy as np
import pytest

from shared.dp.forms import CENTER, release_arrays
from shared.dp.plan import plan_study
from shared.dp.strata import dp_min_cell, dp_n_strata, dp_quantile_edges, dp_width_edges
from shared.dp.study_sim import SiteArrays, run_dp_study
from shared.dp.uncertainty import att_privacy_se, combine_se, redraw_se
from shared.dp.workflow import dp_estimate, dp_table
from shared.psm.estimator import estimate_att
from shared.psm.strata import score_grid
from shared.psm.table import PsmTable, psm_table
from shared.study import BudgetSplit, Outcome, Privacy

OUTCOMES = (Outcome(name="cost", cap=1000.0), Outcome(name="event", cap=1.0, kind="binary"))
COVS = ("a", "b", "c")
BETA = np.array([-1.2, 1.5, -1.0, 0.8])
EFFECT = np.array([-0.05, -0.04])  # on the [0, 1] scale
#: ε = 1, δ = 1e-6, the default split; every study runs to its estimate
PRIVACY = Privacy(epsilon=1.0, delta=1e-6, unresolved_fit="warn")


def _site(rng: np.random.Generator, n: int) -> SiteArrays:
    """A correctly specified logistic treatment model and a constant effect: without noise the
    stratified estimator is nearly unbiased, so coverage measures the noise accounting."""
    z = rng.uniform(size=(n, 3))
    t = (rng.uniform(size=n) < 1 / (1 + np.exp(-(BETA[0] + z @ BETA[1:])))).astype(float)
    base = np.column_stack([0.3 + 0.3 * z[:, 0], 0.2 + 0.3 * z[:, 0]])
    y0 = np.column_stack(
        [np.clip(base[:, 0] + rng.normal(0, 0.1, n), 0, 1), (rng.uniform(size=n) < base[:, 1]).astype(float)]
    )
    y1 = np.column_stack(
        [np.clip(y0[:, 0] + EFFECT[0], 0, 1), (rng.uniform(size=n) < base[:, 1] + EFFECT[1]).astype(float)]
    )
    return SiteArrays(z=z, t=t, y=np.where(t[:, None] == 1, y1, y0)), (y1 - y0)[t == 1]


def test_dp_cis_cover_and_would_not_without_the_privacy_term():
    hits, hits_naive, shares = [], [], []
    for seed in range(60):
        rng = np.random.default_rng(seed)
        pairs = [_site(rng, 4000) for _ in range(3)]
        sites = [p[0] for p in pairs]
        truth = np.concatenate([p[1] for p in pairs]).mean(axis=0) * np.array([o.cap for o in OUTCOMES])
        est = run_dp_study(
            sites=sites,
            outcomes=OUTCOMES,
            covariates=COVS,
            privacy=PRIVACY,
            rngs=[np.random.default_rng([seed, i]) for i in range(3)],
        ).estimate
        for k, o in enumerate(est.outcomes):
            hits.append(o.ci[0] <= truth[k] <= o.ci[1])
            hits_naive.append(abs(o.att - truth[k]) <= 1.96 * o.se_sampling)
            shares.append(o.privacy_share_of_ci)
    coverage, naive = np.mean(hits), np.mean(hits_naive)
    assert 0.88 <= coverage <= 1.0, coverage
    assert naive < 0.85, naive  # ignoring the noise would under-cover badly
    assert 0.1 < np.mean(shares) < 1.0  # a visible share, smaller since the ATT is one weighted sum


def _fixed_table(seed: int = 0) -> tuple[list[dict], np.ndarray]:
    rng = np.random.default_rng(seed)
    sites = [_site(rng, 5000)[0] for _ in range(4)]
    edges = np.array([-np.inf, -0.5, 0.0, 0.5, np.inf])
    return [psm_table(z=s.z, t=s.t, y=s.y, beta=BETA, edges=edges).to_arrays() for s in sites], edges


def test_analytic_privacy_se_matches_the_spread_of_repeated_noise():
    plan = plan_study(epsilon=1.0, delta=1e-6, split=BudgetSplit(), n_covariates=3, n_outcomes=2)
    tables, edges = _fixed_table()
    atts, ses = [], []
    for r in range(300):
        rng = np.random.default_rng(r)
        main = {}
        for query in ("psm_main", "psm_sumsq"):  # noise on the release form, as a node adds it
            formed = [release_arrays(query, t) for t in tables]
            main.update(
                {
                    k: sum(f[k] + rng.normal(0, plan.sigma(query), f[k].shape) for f in formed)
                    for k in formed[0]
                }
            )
        table = dp_table(main=main, balance=None, edges=edges, n_covariates=3)
        est = dp_estimate(table=table, plan=plan, n_nodes=4, outcomes=OUTCOMES, covariates=COVS)
        atts.append([o.att for o in est.outcomes])
        ses.append([o.se_privacy for o in est.outcomes])
    empirical = np.std(np.array(atts), axis=0, ddof=1)
    assert np.mean(ses, axis=0) == pytest.approx(empirical, rel=0.15)


@pytest.mark.parametrize("center", [0.0, CENTER])
def test_redraw_and_analytic_privacy_se_agree(center):
    """Noise on Σy (center 0) or on the centred Σ(y − c) the nodes release, mapped back with the
    noisy count: the analytic SE follows the re-drawn spread either way. Outcomes are shrunk
    towards 0 (means 0.03–0.05, like claims and event rates), where the centred form's count
    noise weighs most (the uncentred formula would be 10 % narrow here)."""
    tables, edges = _fixed_table(1)
    tables = [{**t, "sum_y": 0.1 * t["sum_y"], "sumsq_y": 0.01 * t["sumsq_y"]} for t in tables]
    total = {k: sum(t[k] for t in tables) for k in tables[0]}
    total["sum_y"] = total["sum_y"] - center * total["count"][..., None]
    sigma = 40.0

    def att(arrays: dict) -> np.ndarray:
        mapped = {**arrays, "sum_y": arrays["sum_y"] + center * arrays["count"][..., None]}
        est = estimate_att(table=PsmTable.from_arrays(mapped), outcomes=OUTCOMES, covariates=COVS)
        return np.array([o.att for o in est.outcomes])

    redrawn = redraw_se(
        arrays=total,
        sigma={"count": sigma, "sum_y": sigma},
        estimate=att,
        n_draws=1500,
        rng=np.random.default_rng(3),
    )
    table = PsmTable.from_arrays({k: sum(t[k] for t in tables) for k in tables[0]})
    used = np.ones(table.n_strata, dtype=bool)
    analytic = att_privacy_se(
        count=table.count, sum_y=table.sum_y, used=used, sigma_count=sigma, sigma_sum=sigma, center=center
    ) * np.array([o.cap for o in OUTCOMES])
    assert redrawn == pytest.approx(analytic, rel=0.08)


def test_combine_se_and_privacy_share():
    se, share = combine_se(se_sampling=[3.0, 1.0, 0.0], se_privacy=[4.0, 0.0, 0.0])
    assert se.tolist() == [5.0, 1.0, 0.0]
    assert share.tolist() == pytest.approx([0.4, 0.0, 0.0])


def test_secure_aggregation_shrinks_the_privacy_se_by_about_root_k():
    rng = np.random.default_rng(11)
    sites = [_site(rng, 4000)[0] for _ in range(4)]
    se = {}
    for sa in (False, True):
        est = run_dp_study(
            sites=sites,
            outcomes=OUTCOMES,
            covariates=COVS,
            privacy=PRIVACY.model_copy(update={"secure_aggregation": sa}),
            rngs=[np.random.default_rng(i) for i in range(4)],
            strata_n=3,
        ).estimate
        se[sa] = np.array([o.se_privacy for o in est.outcomes])
    ratio = se[False] / se[True]
    assert np.all((ratio > 1.6) & (ratio < 2.5)), ratio  # √4 = 2, up to the noisy fit


def test_strata_rule_caps_by_noise_and_by_the_request():
    assert dp_n_strata(n_treated=10_000, count_sigma=64.0) == 15  # 10000 / (10 * 64)
    assert dp_n_strata(n_treated=10_000, count_sigma=32.0, requested=5) == 5
    assert dp_n_strata(n_treated=10_000, count_sigma=4.0) == 20  # the DP cap
    assert dp_n_strata(n_treated=1_000, count_sigma=32.0) == 3  # 1000 / (10 * 32)
    assert dp_n_strata(n_treated=1_000, count_sigma=4.0) == 20  # 1000 / (10 * 4), capped
    assert dp_n_strata(n_treated=1_000, count_sigma=8.0) == 12  # 1000 / (10 * 8) beyond 5
    assert dp_n_strata(n_treated=100, count_sigma=32.0) == 1
    assert dp_min_cell(count_sigma=0.2) == 1.0 and dp_min_cell(count_sigma=30.0) == 60.0


def test_dp_quantile_edges_ignore_noise_in_the_empty_public_range():
    """Treated scores fill 10 of 100 public bins; clamping the noise of the 90 empty bins at 0
    would pile phantom treated into the tails and shift every quantile."""
    beta = np.array([0.0, 10.0, -10.0])
    grid = score_grid(beta=beta, n_bins=100)
    true = np.zeros(100)
    true[45:55] = 200.0  # 2000 treated in the middle tenth of the public range
    rng = np.random.default_rng(0)
    noisy = true + rng.normal(0, 30.0, size=100)
    edges = dp_quantile_edges(grid=grid, treated_counts=noisy, noise_sd=30.0, n_strata=4)
    inner = edges[1:-1]
    assert len(inner) == 3
    assert np.all((inner >= grid[45]) & (inner <= grid[56]))  # all cuts inside the occupied bins


def test_dp_width_edges_span_the_occupied_treated_range_evenly():
    beta = np.array([0.0, 10.0, -10.0])
    grid = score_grid(beta=beta, n_bins=100)
    true = np.zeros(100)
    true[40:60] = 100.0
    noisy = true + np.random.default_rng(1).normal(0, 20.0, size=100)
    noisy[5] = 50.0  # a lone noise bin far out that passes the 2-sigma threshold
    edges = dp_width_edges(grid=grid, treated_counts=noisy, noise_sd=20.0, n_strata=5)
    assert edges[0] == -np.inf and edges[-1] == np.inf and len(edges) == 6
    inner = edges[1:-1]
    assert np.allclose(np.diff(inner), np.diff(inner)[0])  # equal widths
    lo, hi = grid[40], grid[60]  # edges of the occupied bins 40..59
    assert np.allclose(inner, lo + (hi - lo) * np.arange(1, 5) / 5)


def test_dp_balance_never_divides_by_noise():
    """A narrow covariate (SD 0.01 on [0, 1]) has a variance the balance noise cannot resolve:
    its SMD is None instead of a quotient of noise; a wide one stays measured and sane."""
    from shared.psm.balance import BalanceNoise, balance_table

    rng = np.random.default_rng(11)
    n = 20000
    z = np.column_stack([rng.uniform(size=n), np.clip(0.3 + 0.01 * rng.normal(size=n), 0, 1)])
    t = (rng.uniform(size=n) < 1 / (1 + np.exp(-(z[:, 0] - 0.5)))) * 1.0
    edges = np.array([-np.inf, -0.25, 0.0, 0.25, np.inf])
    exact = psm_table(z=z, t=t, y=rng.uniform(size=(n, 1)), beta=np.array([-0.5, 1.0, 0.0]), edges=edges)
    sigma = 60.0
    noisy = PsmTable.from_arrays(
        {
            k: v + (rng.normal(0, sigma, v.shape) if k in ("sum_z", "sumsq_z") else 0.0)
            for k, v in exact.to_arrays().items()
        }
    )
    weights = np.clip(exact.count[:, 1], 0, None) / exact.count[:, 1].sum()
    used = np.ones(4, dtype=bool)
    wide, narrow = balance_table(
        table=noisy,
        covariates=("wide", "narrow"),
        weights=weights,
        used=used,
        noise=BalanceNoise(sum_z=sigma, sumsq_z=sigma),
    )
    assert narrow.smd_before is None and narrow.smd_after is None
    assert wide.smd_before is not None and abs(wide.smd_before) < 2.0
    exact_rows = balance_table(table=exact, covariates=("wide", "narrow"), weights=weights, used=used)
    assert exact_rows[1].smd_before is not None  # None above is the noise's doing
    assert exact_rows[1].var_ratio_before == pytest.approx(1.0, abs=0.1)


def test_a_simulated_study_states_the_stop_rule_and_keeps_the_spec_split():
    """The simulated study runs the driver's after_describe: the estimate carries the rule's
    check (the predicted noise share, under ½ here) and no re-split of the spec's plan."""
    plan = plan_study(epsilon=4.0, delta=1e-6, split=BudgetSplit(), n_covariates=3, n_outcomes=2)
    rng = np.random.default_rng(11)
    sites = [_site(rng, 4000)[0] for _ in range(3)]
    study = run_dp_study(
        sites=sites,
        outcomes=OUTCOMES,
        covariates=COVS,
        rngs=[np.random.default_rng([11, i]) for i in range(3)],
        privacy=PRIVACY.model_copy(update={"epsilon": 4.0}),
    )
    assert study.plan.sigma("ps_fit") == pytest.approx(plan.sigma("ps_fit"))
    assert study.plan.sigma("psm_main") == pytest.approx(plan.sigma("psm_main"))
    check = next(c for c in study.estimate.diagnostics if c.name == "dp_fit_resolution")
    assert check.passed and 0 < check.value < check.threshold == 0.5
    assert study.at_describe.passed and not any("dp_fit_resolution" in w for w in study.estimate.warnings)
