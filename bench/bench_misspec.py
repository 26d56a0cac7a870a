"""A misspecified propensity: the linear covariate basis against the squares basis (shared/terms.py).

For each data-generating process of :mod:`shared.synth.dgp` named on the command line and each
seed, the pooled rows of the layout (federated = pooled, tests/unit/test_psm_terms.py) are
analysed twice on the same people:

* ``linear``: the study's 16 scaled covariates, as every study before ``[terms]``;
* ``squares``: the same plus the square of every continuous covariate (``[terms] squares =
  "continuous"``, 11 more columns; no interaction, none being declared by the design).

Each is run through :func:`bench_dr.one_seed` — propensity fit, caliper strata, the stratified
and the doubly robust estimate, and with ``--dp`` both on their DP releases at ε (whose
sensitivities grow with the number of columns: the squares' DP cost is in the CI width). Printed
per process, basis, mode, estimator and outcome: bias ± Monte-Carlo SE, coverage with its
Wilson 95 % interval and the mean CI width; and, per process, how often the balance gate
(max |SMD| after stratification over the 27 columns above 0.1, :data:`SMD_GATE`) fails under
each basis — the linear basis judged on the squares too (β padded with zeros), which is how a
misspecified score shows up in the diagnostics.

``threshold_uptake`` was added to the generator, and fixed, before this benchmark ever ran on it
(commit 2e42327): the squares basis was chosen from the ``misspecified`` diagnosis
(docs/benchmarks/misspec.md), so this process is its out-of-sample check.

    PYTHONPATH=$PWD nice .venv/bin/python bench/bench_misspec.py --seeds 40
    PYTHONPATH=$PWD nice .venv/bin/python bench/bench_misspec.py --seeds 400 --workers 2 --write
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
from _table import Table, add_write_argument, write_tables  # noqa: E402
from bench_dr import one_seed, synth_maker  # noqa: E402

from shared.features import FEATURES  # noqa: E402
from shared.psm import caliper_edges, cov_moments, estimate_att, fit_propensity, logit_sd, scale_outcomes  # noqa: E402
from shared.psm.table import psm_table  # noqa: E402
from shared.study import Covariate  # noqa: E402
from shared.synth.outcomes import OUTCOMES  # noqa: E402
from shared.terms import DesignTerms, derived_covariates, expand  # noqa: E402

COVS = tuple(Covariate(name=f.name, lo=0.0, hi=1.0, kind=f.kind) for f in FEATURES)
SQUARES = DesignTerms(squares="continuous")
NAMES = [c.name for c in COVS]
ALL_NAMES = NAMES + [c.name for c in derived_covariates(COVS, SQUARES)]
#: the balance gate's threshold on |SMD| after stratification (CohortMethod's default)
SMD_GATE = 0.1
BASES = ("linear", "squares")


def _max_smd(z_all, t, y01, beta) -> float:
    """Max |SMD| after stratification over every column of ``z_all`` on the strata of ``beta``
    (padded with zeros where ``z_all`` has more columns than the model)."""
    pad = np.concatenate([beta, np.zeros(z_all.shape[1] + 1 - beta.size)])
    d = beta.size - 1
    edges = caliper_edges(beta=beta, sd=logit_sd(moments=cov_moments(z=z_all[:, :d], t=t), beta=beta))
    table = psm_table(z=z_all, t=t, y=y01, beta=pad, edges=edges)
    est = estimate_att(table=table, outcomes=OUTCOMES, covariates=ALL_NAMES)
    return max(abs(b.smd_after) for b in est.balance if b.smd_after is not None)


def _run_seed(job):
    layout, dgp, seed, dp_eps = job
    z, t, y, truth = synth_maker(layout, dgp)(seed)
    y01, _ = scale_outcomes(y=y, lo=[o.lo for o in OUTCOMES], cap=[o.cap for o in OUTCOMES])
    z_all = expand(z, COVS, SQUARES)
    out = {}
    for basis, zb, names in (("linear", z, NAMES), ("squares", z_all, ALL_NAMES)):
        res = one_seed(zb, t, y01, tuple(OUTCOMES), names, truth, dp_eps, seed)
        out.update({(basis, *k): v for k, v in res.items()})
        beta = fit_propensity(z=zb, t=t).beta
        out[(basis, "smd")] = _max_smd(z_all, t, y01, beta)
    return out


def run_cell(layout, dgp, seeds, dp_eps, workers):
    t0 = time.time()
    jobs = [(layout, dgp, s, dp_eps) for s in seeds]
    results = map_seeds(_run_seed, jobs, workers=workers, chunksize=2)
    took = time.time() - t0
    rows, gate = [], []
    order = [o.name for o in OUTCOMES]
    keys = sorted(
        {k for r in results for k in r if k[1] != "smd"},
        key=lambda k: (k[1] != "exact", k[1], k[0], k[2] != "strat", order.index(k[3])),
    )
    for basis, mode, est, outcome in keys:
        vals = [r[(basis, mode, est, outcome)] for r in results]
        err = np.array([v[0] for v in vals])
        se = np.array([v[1] for v in vals])
        cov = int(sum(v[2] for v in vals))
        lo, hi = wilson_interval(cov, len(vals))
        mc = err.std(ddof=1) / np.sqrt(err.size) if err.size > 1 else float("nan")
        rows.append(
            (
                dgp,
                basis,
                mode,
                est,
                outcome,
                f"{err.mean():.4g} ± {mc:.2g}",
                f"{cov / len(vals):.1%} [{lo:.1%}, {hi:.1%}]",
                f"{2 * 1.959964 * se.mean():.4g}",
            )
        )
    for basis in BASES:
        smd = np.array([r[(basis, "smd")] for r in results])
        fails = int((smd > SMD_GATE).sum())
        lo, hi = wilson_interval(fails, smd.size)
        gate.append((dgp, basis, f"{np.median(smd):.3f}", f"{fails / smd.size:.1%} [{lo:.1%}, {hi:.1%}]"))
    print(f"\n== {layout}/{dgp}: {len(seeds)} seeds, {took:.0f} s ==", flush=True)
    for r in rows:
        print("  " + " | ".join(r[1:]), flush=True)
    for g in gate:
        print(f"  balance gate, {g[1]}: median max|SMD| {g[2]}, fails {g[3]}", flush=True)
    return rows, gate, took


COLUMNS = (
    "process",
    "basis",
    "mode",
    "estimator",
    "outcome",
    "bias ± MC SE",
    "coverage [Wilson 95 %]",
    "mean CI width",
)
GATE_COLUMNS = (
    "process",
    "basis",
    "median max |SMD| (27 columns)",
    f"gate fails (max |SMD| > {SMD_GATE}) [Wilson 95 %]",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=400)
    ap.add_argument("--layout", default="k5_1k")
    ap.add_argument("--dgps", default="misspecified,threshold_uptake,strong_confounding,baseline")
    ap.add_argument("--dp", action="store_true", help="also the DP releases at --epsilon")
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=1)
    add_write_argument(ap, "misspec")  # misspec_dp.md with --dp
    args = ap.parse_args()
    dp_eps = args.epsilon if args.dp else 0.0
    rows, gates, secs = [], [], []
    for d in args.dgps.split(","):
        r, g, took = run_cell(args.layout, d, range(args.seeds), dp_eps, args.workers)
        rows += r
        gates += g
        secs.append(f"{d} {took:.0f} s")
    if args.write:
        setting = (
            f"{args.seeds} seeds per process, layout {args.layout}, pooled rows (= federated), "
            "caliper strata 0.2 SD; squares = 16 covariates + 11 squares of the continuous ones"
            + (f"; DP ε = {args.epsilon:g}, δ = 1e-6 (bench_dr's releases)" if dp_eps else "")
            + f"; seconds per process: {', '.join(secs)}"
        )
        write_tables(
            "misspec_dp" if dp_eps else "misspec",
            title="Misspecified propensity: linear basis vs squares basis",
            tables=[
                Table(columns=COLUMNS, rows=rows, align="llllllll", title="Bias and coverage"),
                Table(columns=GATE_COLUMNS, rows=gates, align="llll", title="Balance gate on the squares"),
            ],
            setting=setting,
        )


if __name__ == "__main__":
    main()
