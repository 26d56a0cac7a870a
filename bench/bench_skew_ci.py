"""The exact study's CI before and after the skewness correction: coverage, misses by side, width.

For each cell (a layout × process of :mod:`_layouts` / :mod:`shared.synth.dgp`, and the small
test DGP of tests/unit/psm_dgp.py) and seed: the propensity fit and caliper strata on the pooled
rows (federated = pooled, tests/unit/test_psm_federated.py), one table with the outcomes' Σy³
and Σy⁴, then

* ``wald``: the stratified ATT ± 1.96 SE (the exact CI before, and still every DP CI);
* ``skew_t``: the shipped exact CI, Hall's skewness-corrected interval with a kurtosis-aware t
  reference (:mod:`shared.psm.skew`);
* ``dr_wald`` / ``dr_skew``: the doubly robust estimate (:func:`shared.psm.dr.estimate_dr`) on
  the same strata with its Wald CI, and with the stratified interval's multipliers applied to
  its own SE (what ``with_dr`` does when the stratified CI is skew-corrected).

The truth is the sample ATT over all treated (the benchmarks' target). Printed per cell and
outcome: coverage with its Wilson 95 % interval, misses above (truth above the CI: estimate too
low) and below, and the mean width relative to Wald's.

    PYTHONPATH=$PWD nice .venv/bin/python bench/bench_skew_ci.py --seeds 40 --dgps baseline
    PYTHONPATH=$PWD nice .venv/bin/python bench/bench_skew_ci.py --seeds 400 --workers 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests" / "unit")]

from _coverage import Z95, map_seeds, wilson_interval  # noqa: E402
from bench_dr import _cell_setup, _design  # noqa: E402

from shared.psm import estimate_att, scale_outcomes  # noqa: E402
from shared.psm.dr import dr_stats, estimate_dr  # noqa: E402

METHODS = ("wald", "skew_t", "dr_wald", "dr_skew")
#: Issue #21's coverage band.
BAND = (0.93, 0.97)


def _run_seed(job):
    """{(method, outcome): (covered, truth above CI, truth below CI, width)} for one seed."""
    layout, dgp, seed = job
    make, outcomes, covariates = _cell_setup(layout, dgp)
    z, t, y_raw, truth = make(seed)
    y01, _ = scale_outcomes(y=y_raw, lo=[o.lo for o in outcomes], cap=[o.cap for o in outcomes])
    beta, edges = _design(z, t)
    stats = dr_stats(z=z, t=t, y=y01, beta=beta, edges=edges)
    est = estimate_att(table=stats.table, outcomes=outcomes, covariates=covariates)
    dr = {d.name: d for d in estimate_dr(stats=stats, outcomes=outcomes)}
    out = {}
    for o in est.outcomes:
        assert o.ci_method == "skew_t"
        upper, lower = (o.att - o.ci[0]) / o.se, (o.att - o.ci[1]) / o.se
        d = dr[o.name]
        cis = {
            "wald": (o.att - Z95 * o.se, o.att + Z95 * o.se),
            "skew_t": o.ci,
            "dr_wald": (d.att - Z95 * d.se, d.att + Z95 * d.se),
            "dr_skew": (d.att - upper * d.se, d.att - lower * d.se),
        }
        tr = truth[o.name]
        for m, (lo, hi) in cis.items():
            out[(m, o.name)] = (lo <= tr <= hi, tr > hi, tr < lo, hi - lo)
    return out


def run_cell(label, seeds, layout, dgp, workers):
    _, outcomes, _ = _cell_setup(layout, dgp)
    t0 = time.time()
    results = map_seeds(_run_seed, [(layout, dgp, s) for s in seeds], workers=workers, chunksize=4)
    print(f"\n== {label}: {len(seeds)} seeds, {time.time() - t0:.0f} s ==", flush=True)
    rows = []
    for o in outcomes:
        base: dict[bool, float] = {}
        for m in METHODS:
            a = np.array([r[(m, o.name)] for r in results], dtype=float)
            cov = int(a[:, 0].sum())
            lo, hi = wilson_interval(cov, len(a))
            base.setdefault(m[:2] == "dr", a[:, 3].mean())
            width = a[:, 3].mean() / base[m[:2] == "dr"]
            in_band = BAND[0] <= cov / len(a) <= BAND[1]
            above, below = int(a[:, 1].sum()), int(a[:, 2].sum())
            print(
                f"  {o.name:13s} {m:8s} cover {cov / len(a):6.1%} [{lo:.1%}, {hi:.1%}]"
                f"{'' if in_band else ' *'}  truth above {above:3d}, below {below:3d}  width ×{width:.3f}",
                flush=True,
            )
            rows.append((label, o.name, m, cov / len(a), in_band, width))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=400)
    ap.add_argument("--layout", default="k5_1k")
    ap.add_argument("--dgps", default="baseline,strong_confounding,heavy_tail,threshold_uptake,misspecified")
    ap.add_argument("--no-test-dgp", action="store_true")
    ap.add_argument("--workers", type=int, default=1, help="processes over seeds (run it under nice)")
    args = ap.parse_args()
    seeds = range(args.seeds)
    rows = []
    for d in args.dgps.split(","):
        rows += run_cell(f"{args.layout}/{d}", seeds, args.layout, d, args.workers)
    if not args.no_test_dgp:
        rows += run_cell("psm_dgp n=4000", seeds, None, None, args.workers)
    print("\nrows in the 93–97 % band (* above marks the others):")
    for m in METHODS:
        mine = [r for r in rows if r[2] == m]
        print(f"  {m:8s} {sum(r[4] for r in mine)} of {len(mine)}")


if __name__ == "__main__":
    main()
