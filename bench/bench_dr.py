"""Stratification vs the doubly robust estimator (shared.psm.dr): bias and 95 % CI coverage.

For each benchmark cell (a node layout of :mod:`_layouts` × a data-generating process of
:mod:`shared.synth.dgp`, ``misspecified`` included, plus the small test DGP of
tests/unit/psm_dgp.py) and each seed: the propensity fit and caliper strata on the pooled rows
(federated = pooled, tests/unit/test_psm_dr.py and test_psm_federated.py), then on the same
strata

* ``strat``: the stratified estimator (:func:`shared.psm.estimate_att`, the study's default);
* ``dr``: regression adjustment within strata (:func:`shared.psm.dr.estimate_dr`);
* with ``--dp``, at one ε (δ = 1e-6, the ledger's accountant, the default split): the noise
  of a DR study's plan (:func:`dp_plan_sigmas`: ``psm_main`` on counts and Σy, ``psm_sumsq`` on
  Σy², ``psm_balance`` on Σz, ``dr_slope`` on the slope release; central σ, as under secure
  aggregation), ``strat`` and ``dr`` on the same noisy cells, ``dr`` also on the slope release
  (:func:`shared.psm.dr.release_dr`), privacy SE by the parametric bootstrap of each (40 draws;
  DR's corrected for re-drawing at a noisy point, :func:`shared.psm.dr.redraw_dr_se`). Only
  these releases are noised: the propensity fit is the exact one (the DP pipeline's fit noise
  is not simulated here), and ``strat`` is read off the table, not the production ``psm_wsum``
  path. The strata are the DP design's (:func:`shared.dp.workflow.dp_edges`: equal width over
  the treated range, as many as the count noise allows), from the exact histogram, the same
  for both.

Printed per cell, noise mode and outcome: each estimator's mean error (bias) ± its Monte-Carlo
SE and coverage with its Wilson 95 % interval (:mod:`_coverage`), |DR bias| − |strat bias| with
the paired difference of the errors, and whether DR meets issue #21's acceptance there
(coverage 93–97 %, and |bias| no larger than stratification's: not above it by more than
2 Monte-Carlo SEs of the paired difference of the errors). ``--write`` writes the table to
docs/benchmarks/dr.md and into the marked block of docs/STATISTICS.md.

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

from _coverage import map_seeds, wilson_interval  # noqa: E402
from _layouts import LAYOUTS, NAMES, build_nodes  # noqa: E402
from _table import Table, add_write_argument, provenance, write_tables  # noqa: E402

from shared.dp.strata import dp_min_cell, dp_n_strata, dp_width_edges  # noqa: E402
from shared.dp.workflow import dp_grid  # noqa: E402
from shared.psm import caliper_edges, cov_moments, estimate_att, fit_propensity, logit_sd, scale_outcomes  # noqa: E402
from shared.psm.dr import (  # noqa: E402
    dr_stats,
    estimate_dr,
    estimate_dr_release,
    release_dr,
    with_dr,
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


def dp_plan_sigmas(epsilon: float, n_covariates: int, n_outcomes: int):
    """``({array: σ}, σ_slope)`` of a DR study's plan at ``epsilon`` (default split, δ = 1e-6):
    the noise the coordinator's sums carry under secure aggregation
    (:func:`shared.dp.drstudy.dp_dr_release` maps the releases the same way)."""
    from shared.dp.plan import plan_study
    from shared.study import BudgetSplit

    plan = plan_study(
        epsilon=epsilon,
        delta=DELTA,
        split=BudgetSplit(),
        n_covariates=n_covariates,
        n_outcomes=n_outcomes,
        estimator="dr",
    )
    main = plan.sigma("psm_main")
    cells = {
        "count": main,
        "sum_y": main,
        "sumsq_y": plan.sigma("psm_sumsq"),
        "sum_z": plan.sigma("psm_balance"),
    }
    return cells, plan.sigma("dr_slope")


def one_seed(z, t, y01, outcomes, covariates, truth, dp_eps, seed):
    """{(mode, estimator, outcome): (error, se, covered)} for one seed."""
    beta, edges = _design(z, t)
    stats = dr_stats(z=z, t=t, y=y01, beta=beta, edges=edges)
    out = {}

    def record(mode, strat, dr):
        for o, s, d in zip(outcomes, strat, dr):
            for name, e in (("strat", s), ("dr", d)):
                out[(mode, name, o.name)] = (e.att - truth[o.name], e.se, e.ci[0] <= truth[o.name] <= e.ci[1])

    strat = estimate_att(table=stats.table, outcomes=outcomes, covariates=covariates)
    # the shipped exact CIs: the stratified skewness-corrected interval, its shape carried to DR
    record("exact", strat.outcomes, with_dr(strat, estimate_dr(stats=stats, outcomes=outcomes)).outcomes)
    if dp_eps:
        rng = np.random.default_rng(10_000_000 + seed)
        sigma_c, sigma_s = dp_plan_sigmas(dp_eps, z.shape[1], len(outcomes))
        stats = dr_stats(z=z, t=t, y=y01, beta=beta, edges=_dp_edges(z, t, beta, sigma_c["count"]))
        rel = release_dr(stats, sigma_cells=sigma_c, sigma_slope=sigma_s, rng=rng)
        strat_rel = rel.cells  # the same noisy cells: the two estimators differ by the slope only
        mc = dp_min_cell(count_sigma=sigma_c["count"])

        def strat_att(arrays_stats):
            est = estimate_att(
                table=arrays_stats.table, outcomes=outcomes, covariates=covariates, min_cell=mc
            )
            return np.array([o.att for o in est.outcomes])

        se_st = _redraw_strat(strat_rel, sigma_c, strat_att, rng)
        record(
            f"dp eps={dp_eps:g}",
            estimate_att(
                table=strat_rel.table, outcomes=outcomes, covariates=covariates, min_cell=mc, se_privacy=se_st
            ).outcomes,
            estimate_dr_release(rel, outcomes=outcomes, min_cell=mc, n_draws=40, rng=rng),
        )
    return out


def _redraw_strat(rel, sigma, strat_att, rng):
    """Privacy SE of the stratified estimate on its release (re-drawn noise)."""
    from shared.dp.uncertainty import redraw_se
    from shared.psm.dr import _centre, _uncentre

    centred = _centre(rel)
    keys = ("count", "sum_y", "sumsq_y", "sum_z")
    arrays = {k: v for k, v in centred.items() if k in keys}

    def est(noisy):
        whole = {**noisy, "zz": centred["zz"], "zy": centred["zy"]}  # not read by the stratified ATT
        return strat_att(_uncentre(whole, rel.table.edges, rel.table.sumsq_z))

    return redraw_se(arrays=arrays, sigma={k: sigma[k] for k in keys}, estimate=est, n_draws=40, rng=rng)


#: The acceptance of issue #21: 95 % CIs covering 93–97 % of seeds, and the DR default's bias
#: no larger than stratification's.
COVERAGE_BAND = (0.93, 0.97)


def _cell_setup(layout, dgp):
    """(maker, outcomes, covariates) of a cell: a layout × process, or the test DGP (layout None)."""
    if layout is None:
        from psm_dgp import COVARIATES
        from psm_dgp import OUTCOMES as TOUT

        return test_dgp_maker(), TOUT, COVARIATES
    return synth_maker(layout, dgp), tuple(OUTCOMES), NAMES


def _run_seed(job):
    """One seed of one cell (top level, so a process pool can run it)."""
    layout, dgp, seed, dp_eps = job
    make, outcomes, covariates = _cell_setup(layout, dgp)
    z, t, y_raw, truth = make(seed)
    y01, _ = scale_outcomes(y=y_raw, lo=[o.lo for o in outcomes], cap=[o.cap for o in outcomes])
    return one_seed(z, t, y01, outcomes, covariates, truth, dp_eps, seed)


def run_cell(label, seeds, layout, dgp, dp_eps, workers=1):
    """Per mode and outcome: both estimators' bias (± MC SE), coverage (Wilson 95 %), and
    the verdicts; one row each, printed as it comes. Seeds run over ``workers`` processes."""
    _, outcomes, _ = _cell_setup(layout, dgp)
    rows: dict = {}
    t0 = time.time()
    jobs = [(layout, dgp, seed, dp_eps) for seed in seeds]
    results = map_seeds(_run_seed, jobs, workers=workers, chunksize=4)
    for res in results:
        for key, v in res.items():
            rows.setdefault(key, []).append(v)
    print(f"\n== {label}: {len(seeds)} seeds, {time.time() - t0:.0f} s ==", flush=True)
    table = []
    for mode in sorted({k[0] for k in rows}, key=lambda m: (m != "exact", m)):
        for o in outcomes:
            st, dr = (rows[(mode, e, o.name)] for e in ("strat", "dr"))
            cells = [label, mode, o.name]
            summary = {}
            for name, vals in (("strat", st), ("dr", dr)):
                err = np.array([v[0] for v in vals])
                cov = int(sum(v[2] for v in vals))
                lo, hi = wilson_interval(cov, len(vals))
                mc = err.std(ddof=1) / np.sqrt(err.size)
                summary[name] = (err, cov / len(vals))
                cells += [f"{err.mean():.4g} ± {mc:.2g}", f"{cov / len(vals):.1%} [{lo:.1%}, {hi:.1%}]"]
            diff = np.abs(summary["dr"][0].mean()) - np.abs(summary["strat"][0].mean())
            paired = summary["dr"][0] - summary["strat"][0]
            paired_se = paired.std(ddof=1) / np.sqrt(paired.size)
            in_band = COVERAGE_BAND[0] <= summary["dr"][1] <= COVERAGE_BAND[1]
            # "no larger": not measurably larger, i.e. within 2 MC SEs of the paired difference
            cells += [
                f"{diff:.3g} (± {paired_se:.2g})",
                "yes" if (in_band and diff <= 2 * paired_se) else "no",
            ]
            table.append(tuple(cells))
            print("  " + " | ".join(str(c) for c in cells[1:]), flush=True)
    return table


COLUMNS = (
    "cell",
    "mode",
    "outcome",
    "strat bias ± MC SE",
    "strat coverage [Wilson 95 %]",
    "DR bias ± MC SE",
    "DR coverage [Wilson 95 %]",
    "|DR bias| − |strat bias| (± paired MC SE)",
    "DR meets both",
)

#: The block of docs/STATISTICS.md the bench rewrites with --write.
DOC, BEGIN, END = ROOT / "docs" / "STATISTICS.md", "<!-- bench_dr:begin -->", "<!-- bench_dr:end -->"


def write_doc_block(table: Table, setting: str, verdict: str) -> None:
    """Replace the marked block of docs/STATISTICS.md with this run's table (no hand copy)."""
    text = DOC.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC} lacks the {BEGIN} … {END} block")
    prov = provenance()
    block = "\n".join(
        [
            BEGIN,
            f"Written by `{prov['command']}` on {prov['date']} at commit `{prov['commit']}`; {setting}.",
            "",
            table.markdown(),
            "",
            verdict,
            END,
        ]
    )
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(head + block + rest.split(END, 1)[1], encoding="utf-8")
    print(f"wrote {DOC}", file=sys.stderr)


def verdict(rows) -> str:
    failing = [r for r in rows if r[-1] != "yes"]
    if not failing:
        return "Every cell meets the acceptance: DR can be the default."
    said = "; ".join(f"{r[0]} {r[1]} {r[2]}" for r in failing)
    return (
        f"**{len(failing)} of {len(rows)} rows fail** (DR coverage outside 93–97 %, or |DR bias| "
        f"more than 2 paired MC SEs above |strat bias|): {said}. "
        'The default stays `estimator = "stratified"`.'
    )


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
    ap.add_argument("--dp", action="store_true", help="also the DP releases (ε = --epsilon)")
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--no-test-dgp", action="store_true")
    ap.add_argument("--workers", type=int, default=1, help="processes over seeds (run it under nice)")
    add_write_argument(ap, "dr")
    args = ap.parse_args()
    seeds = range(args.seeds)
    dp_eps = args.epsilon if args.dp else 0.0
    rows = []
    for d in args.dgps.split(","):
        rows += run_cell(f"{args.layout}/{d}", seeds, args.layout, d, dp_eps, args.workers)
    if not args.no_test_dgp:
        rows += run_cell("psm_dgp n=4000", seeds, None, None, dp_eps, args.workers)
    said = verdict(rows)
    print("\n" + said)
    if args.write:
        setting = f"{args.seeds} seeds, layout {args.layout}, exact: caliper strata 0.2 SD" + (
            f"; DP ε = {args.epsilon:g}, δ = {DELTA:g}: a DR study's plan (central σ), equal-width DP strata"
            if dp_eps
            else ""
        )
        table = Table(columns=COLUMNS, rows=rows, align="lllllllll")
        write_tables(
            "dr",
            title="Stratification vs doubly robust (regression adjustment within strata)",
            tables=[table],
            setting=setting,
            notes=said,
        )
        write_doc_block(table, setting, said)


if __name__ == "__main__":
    main()
