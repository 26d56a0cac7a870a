"""Stratification vs the doubly robust estimator (shared.psm.dr): bias and 95 % CI coverage.

For each benchmark cell (a node layout of :mod:`_layouts` × a data-generating process of
:mod:`shared.synth.dgp`, ``misspecified`` included, plus the small test DGP of
tests/unit/psm_dgp.py) and each seed: the propensity fit and caliper strata on the pooled rows
(federated = pooled, tests/unit/test_psm_dr.py and test_psm_federated.py), then on the same
strata

* ``strat``: the stratified estimator (:func:`shared.psm.estimate_att`, the study's default);
* ``dr``: regression adjustment within strata (:func:`shared.psm.dr.estimate_dr`);
* with ``--dp``: both estimators on one Gaussian release of the DR statistics
  (:func:`shared.psm.dr.release_dr`, σ = μ·Δ for ε at δ = 1e-6 under the ledger's accountant),
  privacy SE by re-drawing that noise (40 draws). Only this last release is noised: the
  propensity fit and the strata are the exact ones (the DP pipeline's fit noise is not
  simulated here). The strata are the DP design's (:func:`shared.dp.workflow.dp_edges`: equal
  width over the treated range, as many as the count noise allows), from the exact histogram.

Printed per cell, estimator and outcome: mean error (bias) ± its Monte-Carlo SE, RMSE, mean SE,
and coverage with its Wilson 95 % interval (:mod:`_coverage`).

    .venv/bin/python bench/bench_dr.py                 # 400 seeds
    .venv/bin/python bench/bench_dr.py --seeds 40 --dp # quicker, with DP
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests" / "unit")]

from _coverage import wilson_interval  # noqa: E402
from _layouts import LAYOUTS, NAMES, build_nodes  # noqa: E402
from _table import Table, add_write_argument, write_tables  # noqa: E402

from shared.dp.plan import single_release_multiplier  # noqa: E402
from shared.dp.strata import dp_min_cell, dp_n_strata, dp_width_edges  # noqa: E402
from shared.dp.workflow import dp_grid  # noqa: E402
from shared.psm import caliper_edges, cov_moments, estimate_att, fit_propensity, logit_sd, scale_outcomes  # noqa: E402
from shared.psm.dr import (  # noqa: E402
    dr_sensitivities,
    dr_sigmas,
    dr_stats,
    estimate_dr,
    estimate_dr_release,
    release_dr,
)
from shared.psm.strata import score_histogram  # noqa: E402
from shared.synth.outcomes import OUTCOMES  # noqa: E402

DELTA = 1e-6


def _pooled(nodes):
    return (np.concatenate(p) for p in zip(*nodes))


def _design(z, t):
    beta = fit_propensity(z=z, t=t).beta
    return beta, caliper_edges(beta=beta, sd=logit_sd(moments=cov_moments(z=z, t=t), beta=beta))


def _dp_edges(z, t, beta, count_sigma):
    """The DP design's strata (:func:`shared.dp.workflow.dp_edges`: equal width over the
    treated range, as many as the count noise allows), read off the exact histogram here."""
    grid = dp_grid(beta=beta)
    hist = score_histogram(z=z, t=t, beta=beta, grid=grid)
    return dp_width_edges(
        grid=grid,
        treated_counts=hist[:, 1],
        noise_sd=count_sigma,
        n_strata=dp_n_strata(n_treated=float(t.sum()), count_sigma=count_sigma, requested=None),
    )


def one_seed(z, t, y01, outcomes, covariates, truth, dp_eps, seed):
    """{(mode, estimator, outcome): (error, se, covered)} for one seed."""
    beta, edges = _design(z, t)
    stats = dr_stats(z=z, t=t, y=y01, beta=beta, edges=edges)
    out = {}

    def record(mode, strat, dr):
        for o, s, d in zip(outcomes, strat, dr):
            for name, e in (("strat", s), ("dr", d)):
                out[(mode, name, o.name)] = (e.att - truth[o.name], e.se, e.ci[0] <= truth[o.name] <= e.ci[1])

    record(
        "exact",
        estimate_att(table=stats.table, outcomes=outcomes, covariates=covariates).outcomes,
        estimate_dr(stats=stats, outcomes=outcomes),
    )
    if dp_eps:
        rng = np.random.default_rng(10_000_000 + seed)
        d, o = z.shape[1], len(outcomes)
        # stratification alone spends the whole ε on the cells; DR splits it (dr_sigmas)
        sigma_strat = (
            single_release_multiplier(epsilon=dp_eps, delta=DELTA)
            * dr_sensitivities(n_covariates=d, n_outcomes=o)[0]
        )
        sigma_c, sigma_s = dr_sigmas(epsilon=dp_eps, delta=DELTA, n_covariates=d, n_outcomes=o)
        stats = dr_stats(z=z, t=t, y=y01, beta=beta, edges=_dp_edges(z, t, beta, sigma_strat))
        strat_rel = release_dr(stats, sigma_cells=sigma_strat, sigma_slope=sigma_s, rng=rng).cells
        mc = dp_min_cell(count_sigma=sigma_strat)

        def strat_att(arrays_stats):
            est = estimate_att(
                table=arrays_stats.table, outcomes=outcomes, covariates=covariates, min_cell=mc
            )
            return np.array([o.att for o in est.outcomes])

        se_st = _redraw_strat(strat_rel, sigma_strat, strat_att, rng)
        rel = release_dr(stats, sigma_cells=sigma_c, sigma_slope=sigma_s, rng=rng)
        record(
            f"dp eps={dp_eps:g}",
            estimate_att(
                table=strat_rel.table, outcomes=outcomes, covariates=covariates, min_cell=mc, se_privacy=se_st
            ).outcomes,
            estimate_dr_release(
                rel, outcomes=outcomes, min_cell=dp_min_cell(count_sigma=sigma_c), n_draws=40, rng=rng
            ),
        )
    return out


def _redraw_strat(rel, sigma, strat_att, rng):
    """Privacy SE of the stratified estimate on its release (re-drawn noise)."""
    from shared.dp.uncertainty import redraw_se
    from shared.psm.dr import _centre, _uncentre

    def est(arrays):
        return strat_att(_uncentre(dict(arrays), rel.table.edges, rel.table.sumsq_z))

    keys = ("count", "sum_y", "sumsq_y", "sum_z")
    return redraw_se(arrays=_centre(rel), sigma={k: sigma for k in keys}, estimate=est, n_draws=40, rng=rng)


def run_cell(label, seeds, make, outcomes, covariates, dp_eps):
    rows: dict = {}
    t0 = time.time()
    for seed in seeds:
        z, t, y_raw, truth = make(seed)
        y01, _ = scale_outcomes(y=y_raw, lo=[o.lo for o in outcomes], cap=[o.cap for o in outcomes])
        for key, v in one_seed(z, t, y01, outcomes, covariates, truth, dp_eps, seed).items():
            rows.setdefault(key, []).append(v)
    print(f"\n== {label}: {len(seeds)} seeds, {time.time() - t0:.0f} s ==", flush=True)
    table = []
    for (mode, est, outcome), vals in sorted(rows.items()):
        err = np.array([v[0] for v in vals])
        se = np.array([v[1] for v in vals])
        cov = int(sum(v[2] for v in vals))
        lo, hi = wilson_interval(cov, len(vals))
        bias_se = err.std(ddof=1) / np.sqrt(err.size)
        table.append(
            (
                label,
                mode,
                est,
                outcome,
                f"{err.mean():.4g} ± {bias_se:.2g}",
                float(np.sqrt(np.mean(err**2))),
                float(se.mean()),
                f"{cov / len(vals):.1%} [{lo:.1%}, {hi:.1%}]",
            )
        )
        print(f"  {mode:10s} {est:5s} {outcome:14s} " + "  ".join(str(c) for c in table[-1][4:]), flush=True)
    return table


def synth_maker(layout, dgp_name):
    def make(seed):
        nodes, truth = build_nodes(layout=LAYOUTS[layout], dgp=dgp_name, seed=seed, outcomes=tuple(OUTCOMES))
        z, t, y = _pooled([(n.arrays.z, n.arrays.t, n.y_raw) for n in nodes])
        return z, t, y, truth

    return make


def test_dgp_maker():
    from psm_dgp import PS_BETA, make_study

    def make(seed):
        st = make_study(n=4000, seed=seed, beta=PS_BETA)
        return st.z, st.t, st.y, st.truth

    return make


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=400)
    ap.add_argument("--layout", default="k5_1k")
    ap.add_argument("--dgps", default="baseline,misspecified,strong_confounding")
    ap.add_argument("--dp", action="store_true", help="also the DP release (ε = --epsilon)")
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--no-test-dgp", action="store_true")
    add_write_argument(ap, "dr")
    args = ap.parse_args()
    seeds = range(args.seeds)
    dp_eps = args.epsilon if args.dp else 0.0
    tables = []
    for d in args.dgps.split(","):
        tables += run_cell(
            f"{args.layout}/{d}", seeds, synth_maker(args.layout, d), tuple(OUTCOMES), NAMES, dp_eps
        )
    if not args.no_test_dgp:
        from psm_dgp import COVARIATES
        from psm_dgp import OUTCOMES as TOUT

        tables += run_cell("psm_dgp n=4000", seeds, test_dgp_maker(), TOUT, COVARIATES, dp_eps)
    if args.write:
        write_tables(
            "dr",
            title="Stratification vs doubly robust (regression adjustment within strata)",
            tables=[
                Table(
                    columns=(
                        "cell",
                        "mode",
                        "estimator",
                        "outcome",
                        "bias ± MC SE",
                        "RMSE",
                        "mean SE",
                        "coverage [Wilson 95 %]",
                    ),
                    rows=tables,
                    align="llllrrrl",
                )
            ],
            setting=f"{args.seeds} seeds, layout {args.layout}, caliper strata 0.2 SD",
        )


if __name__ == "__main__":
    main()
