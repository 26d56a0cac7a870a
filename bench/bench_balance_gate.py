"""What the DP balance gate can show: the SMD noise SD and the verdict per (layout, ε).

For each layout (``bench/_layouts.py``) and ε, a few seeded federations from the baseline DGP
run the shipped DP study (:func:`shared.dp.study_sim.run_dp_study`, secure aggregation on by
default) and the exact study. Printed per cell: the median over seeds of the median and largest
SMD noise SD after weighting (``BalanceRow.smd_after_noise_sd``), the exact study's largest
|SMD| after weighting, and how many DP studies the gate (:func:`shared.psm.balance.balance_verdict`)
calls balanced / imbalanced / not shown, next to what the plain reading on noisy values
("max |SMD| < 0.1") would have said, the median number of covariates whose SMD the noise
resolves, and how many of the studies not shown read every resolved covariate balanced (not
shown only for the unresolved ones).

``--estimator`` is the spec's (default: the spec's default, stratified). A doubly robust study
reads the SMD after weighting from its ``dr_dsum`` release instead of the balance cells
(:mod:`shared.psm.balance`); the denominator, and so which covariates are resolved, stays the
balance release's.

    .venv/bin/python bench/bench_balance_gate.py                       # ≈ 3 min on 2 cores
    .venv/bin/python bench/bench_balance_gate.py --seeds 3 --eps 1 16  # quick look
    .venv/bin/python bench/bench_balance_gate.py --estimator dr        # SMD after from d
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _layouts import LAYOUTS, NAMES, build_nodes  # noqa: E402

from shared import thresholds as th  # noqa: E402
from shared.dp.study_sim import run_dp_study  # noqa: E402
from shared.psm.balance import balance_verdict  # noqa: E402
from shared.psm.reference import estimate_att_federated  # noqa: E402
from shared.study import Privacy, StudySpec  # noqa: E402
from shared.synth.outcomes import OUTCOMES  # noqa: E402


def run_cell(
    layout: str, epsilon: float, seeds: range, secagg: bool, estimator: Literal["stratified", "dr"]
) -> dict:
    sd_med: list[float] = []
    sd_max: list[float] = []
    resolved: list[int] = []
    exact_max: list[float] = []
    states: Counter[str] = Counter()
    plain: Counter[str] = Counter()
    for seed in seeds:
        nodes, _ = build_nodes(layout=LAYOUTS[layout], dgp="baseline", seed=seed, outcomes=OUTCOMES)
        exact = estimate_att_federated(
            nodes=[(n.arrays.z, n.arrays.t, n.y_raw) for n in nodes], outcomes=OUTCOMES, covariates=NAMES
        ).estimate
        exact_max.append(max(abs(b.smd_after) for b in exact.balance if b.smd_after is not None))
        study = run_dp_study(
            sites=[n.arrays for n in nodes],
            outcomes=OUTCOMES,
            covariates=NAMES,
            privacy=Privacy(epsilon=epsilon, delta=1e-6, secure_aggregation=secagg),
            estimator=estimator,
            rngs=[np.random.default_rng([seed, int(epsilon * 1000), i, 77]) for i in range(len(nodes))],
        )
        rows = study.estimate.balance
        sds = [r.smd_after_noise_sd for r in rows if r.smd_after_noise_sd is not None]
        sd_med.append(float(np.median(sds)) if sds else float("nan"))
        sd_max.append(max(sds) if sds else float("nan"))
        resolved.append(len(sds))
        verdict = balance_verdict(rows, th.SMD_MAX)
        states[verdict.state] += 1
        # every covariate the noise resolves reads balanced: "not shown" only for the unresolved
        read = [st for r, st in zip(rows, verdict.states) if r.smd_after is not None]
        if verdict.state == "not_shown" and read and all(st == "balanced" for st in read):
            states["resolved_balanced"] += 1
        known = [abs(r.smd_after) for r in rows if r.smd_after is not None]
        plain["pass" if known and max(known) < th.SMD_MAX else "fail"] += 1
    return {
        "sd_med": float(np.median(sd_med)),
        "sd_max": float(np.median(sd_max)),
        "exact_max": float(np.median(exact_max)),
        "resolved": float(np.median(resolved)),
        "states": states,
        "plain": plain,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layouts", nargs="+", default=["k5_10k", "k5_1k"], choices=sorted(LAYOUTS))
    ap.add_argument("--eps", nargs="+", type=float, default=[1.0, 2.0, 4.0, 8.0, 16.0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--no-secagg", action="store_true")
    ap.add_argument(
        "--estimator",
        choices=("stratified", "dr"),
        default=StudySpec.model_fields["estimator"].default,
        help="the spec's estimator (default: the spec's default)",
    )
    args = ap.parse_args()
    print(f"estimator {args.estimator}, secure aggregation {'off' if args.no_secagg else 'on'}")
    print(
        f"{'layout':8} {'eps':>5} {'SD med':>7} {'SD max':>7} {'resolved':>8} {'exact max|SMD|':>15} "
        f"{'balanced':>9} {'imbal.':>7} {'not shown':>10} {'(resolved bal.)':>15} {'plain pass':>11}"
    )
    for layout in args.layouts:
        for eps in args.eps:
            c = run_cell(layout, eps, range(args.seeds), not args.no_secagg, args.estimator)
            s = c["states"]
            print(
                f"{layout:8} {eps:5g} {c['sd_med']:7.3f} {c['sd_max']:7.3f} {c['resolved']:8g} "
                f"{c['exact_max']:15.3f} {s['balanced']:9d} {s['imbalanced']:7d} {s['not_shown']:10d} "
                f"{s['resolved_balanced']:15d} "
                f"{c['plain']['pass']:5d}/{args.seeds}",
                flush=True,
            )


if __name__ == "__main__":
    main()
