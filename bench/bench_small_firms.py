"""Wall time of a pooled small-firm study over real Flower processes (SuperLink + one SuperNode
per firm on 127.0.0.1, SecAgg+ on), and its estimates against the simulated truth.

    .venv/bin/python bench/bench_small_firms.py [--firms 20] [--epsilon 2] [--scale 1.0] [--ps-rounds 1]

The CI suite runs the same 20 firms, ε and Newton rounds (tests/integration/test_small_firms.py);
this script prints the figures (wall time, the run's own timings, each estimate against the
truth) instead of asserting, and takes other sizes. Figures: docs/USAGE.md, "Cross-company
studies for small firms".
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from coordinator.files import load_spec
from coordinator.report import build_report
from coordinator.study.requirements import requirements
from coordinator.study.runner import run_local
from coordinator.synth import write_federation
from shared.synth import generate_federation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firms", type=int, default=20)
    ap.add_argument("--epsilon", type=float, default=2.0)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--ps-rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--work", type=Path, default=None, help="Keep data, logs and progress.jsonl here.")
    args = ap.parse_args()

    fed = generate_federation(seed=args.seed, sites=args.firms, scale=args.scale, profile_set="small-firms")
    pooled = fed.truth["pooled"]
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.work or Path(scratch)
        spec = write_federation(fed, Path(tmp) / "data", epsilon=args.epsilon, secure_aggregation=True)
        spec.write_text(
            spec.read_text().replace("[privacy]\n", f"[privacy]\nps_rounds = {args.ps_rounds}\n", 1)
        )
        needs = requirements(
            load_spec(spec),
            treated=pooled["n_treated"],
            controls=pooled["n"] - pooled["n_treated"],
            nodes=args.firms,
        )
        print(
            f"{args.firms} firms, {pooled['n']:,} staff, {pooled['n_treated']:,} treated; "
            f"ε = {args.epsilon:g} "
            f"(the pool needs ε ≥ {needs.min_epsilon:.2g}, or ≥ {needs.min_treated:,} treated at this ε); "
            f"{os.cpu_count()} cores"
        )
        t0 = time.perf_counter()
        result = run_local(spec, Path(tmp) / "run", timeout_s=args.timeout)
        wall = time.perf_counter() - t0
        doc = build_report(result)
    print(
        f"wall time: {wall:.1f} s, load average {os.getloadavg()[0]:.1f} at the end  "
        f"(timings: {', '.join(f'{k} {v:.1f}' for k, v in result.timings.items())})"
    )
    for o in result.outcomes:
        truth = pooled["att_capped"][o.name]
        print(f"  {o.name:14s} ATT {o.att:+10.4g}  CI [{o.ci[0]:+.4g}, {o.ci[1]:+.4g}]  true {truth:+.4g}")
    print(f"report sites without counts: {all(s.n is None for s in doc.sites)}; billable: {doc.billable}")


if __name__ == "__main__":
    main()
