"""How a rare binary outcome's cell variances set its CI: the rule shipped against two others,
on the same stratified tables (a paired comparison).

A cell with ten or more controls but few cardiovascular events reads a variance near 0 just
where the weights are largest (few controls facing many treated at high scores). Since this
benchmark, a binary outcome's cell is worth 2n·p(1 − p)/(1 − 2p)² degrees of freedom
(:func:`shared.psm.cells.variance_information`) and borrows below ten, as a small cell does.
Per seed the exact study runs once (site effects, and with ``--select`` the shipped
``[terms] select = "stepwise"``) and keeps its summed table; the estimate is then recomputed
from the table under each rule:

- ``rows only``: the rule before: a cell is worth n − 1 whatever its events;
- ``shipped``: :func:`~shared.psm.cells.variance_information`, pools weighted by n − 1;
- ``pool without low-event cells``: cells worth < 10 are left out of every pool and take the
  larger of their own and the pooled variance (an upward-biased pool: what closes the gap on
  ``threshold_uptake``, not derived, so not shipped).

Printed per rule and outcome: coverage with its Wilson 95 % interval, the SD of the errors in
SEs (1 when the SE is the estimate's spread) and the mean SE.

    .venv/bin/python bench/bench_binary_variance.py --dgp threshold_uptake --select --seeds 500 \\
        --first-seed 50000 --workers 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _coverage import map_seeds, wilson_interval  # noqa: E402
from _layouts import LAYOUTS, build_nodes  # noqa: E402
from bench_term_selection import study  # noqa: E402

import shared.psm.cells as cells  # noqa: E402
import shared.psm.skew as skew  # noqa: E402
from shared.errors import EstimationError  # noqa: E402
from shared.psm.estimator import estimate_att  # noqa: E402
from shared.psm.table import PsmTable  # noqa: E402
from shared.synth.outcomes import OUTCOMES  # noqa: E402
from shared.terms import DesignTerms  # noqa: E402

ARRAYS = ("count", "sum_y", "sumsq_y", "sum3_y", "sum4_y")
SHIPPED_INFO, SHIPPED_POOL = cells.variance_information, cells._local_pool


def _rows_only(sums, n, dof, binary=None):
    return SHIPPED_INFO(sums, n, dof, None)


def _pool_without_low(dof, s2, min_dof, info):
    low = info < min_dof
    kept = np.where(low, 0.0, dof)
    w = cells.pool_weights(kept, min_dof, kept)
    pooled = np.where(w.sum(axis=1) == 0, 0.25, w @ s2)
    return np.where(low, np.maximum(s2, pooled), s2)


RULES = {
    "rows only": (_rows_only, SHIPPED_POOL),
    "shipped": (SHIPPED_INFO, SHIPPED_POOL),
    "pool without low-event cells": (SHIPPED_INFO, _pool_without_low),
}


def one_seed(seed: int, *, layout: str, dgp: str, select: bool) -> dict:
    nodes, truth = build_nodes(layout=LAYOUTS[layout], dgp=dgp, seed=seed, outcomes=OUTCOMES)
    try:
        run = study(nodes, DesignTerms(select="stepwise") if select else DesignTerms())
    except EstimationError as e:
        return {"seed": seed, "error": type(e).__name__}
    t = run.table
    return {
        "seed": seed,
        "truth": truth,
        "edges": t.edges.tolist(),
        **{a: getattr(t, a).tolist() for a in ARRAYS},
    }


def _table(r: dict) -> PsmTable:
    a = {k: np.asarray(r[k], dtype=float) for k in ARRAYS}
    n = a["count"][..., None]
    # the covariate sums only feed the balance table, not the ATT: placeholders of the right shape
    return PsmTable(edges=np.asarray(r["edges"], dtype=float), sum_z=0.5 * n, sumsq_z=0.3 * n, **a)


def evaluate(results: list[dict]) -> list[str]:
    ok = [r for r in results if "error" not in r]
    lines = [f"{len(ok)} of {len(results)} seeds"]
    try:
        for rule, (info, pool) in RULES.items():
            cells.variance_information = skew.variance_information = info
            cells._local_pool = pool
            est = [estimate_att(table=_table(r), outcomes=OUTCOMES, covariates=["z"]) for r in ok]
            for o in OUTCOMES:
                truth = np.array([r["truth"][o.name] for r in ok])
                e = [x.outcome(o.name) for x in est]
                hits = sum(lo <= tr <= hi for (lo, hi), tr in zip((x.ci for x in e), truth))
                z = (np.array([x.att for x in e]) - truth) / np.array([x.se for x in e])
                lo, hi = wilson_interval(hits, len(ok))
                lines.append(
                    f"  {rule:29} {o.name:13} {100 * hits / len(ok):5.1f}% [{100 * lo:4.1f}, {100 * hi:4.1f}]"
                    f"  sd {z.std(ddof=1):.3f}  mean SE {np.mean([x.se for x in e]):.5g}"
                )
    finally:
        cells.variance_information = skew.variance_information = SHIPPED_INFO
        cells._local_pool = SHIPPED_POOL
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layout", default="k5_1k")
    ap.add_argument("--dgp", default="threshold_uptake")
    ap.add_argument("--select", action="store_true", help='the shipped [terms] select = "stepwise"')
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--first-seed", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--tables", type=Path, help="keep the tables here, or read them from here if it exists")
    args = ap.parse_args()
    t0 = time.time()
    if args.tables and args.tables.exists():
        results = json.loads(args.tables.read_text())
    else:
        fn = partial(one_seed, layout=args.layout, dgp=args.dgp, select=args.select)
        results = map_seeds(
            fn, list(range(args.first_seed, args.first_seed + args.seeds)), workers=args.workers
        )
        if args.tables:
            args.tables.write_text(json.dumps(results))
    basis = 'site effects + select = "stepwise"' if args.select else "site effects"
    print(f"{args.layout} {args.dgp}, {basis}, seeds from {args.first_seed}; exact, caliper strata 0.2 SD")
    for line in evaluate(results):
        print(line)
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
