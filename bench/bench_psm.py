"""Benchmark of the PSM statistics core (shared.psm); prints figures, asserts nothing.

1. federated vs pooled: the in-process federation over the synthetic sites vs the pooled rows;
2. coverage of the 95 % CI, mean |bias| against the synthetic sample-ATT truth over many seeds
   (shared.synth cohorts, and the small test DGP of tests/unit/psm_dgp.py), with the 1:1 NN
   matching reference alongside;
3. time per node for 1M rows split over 5 nodes (validation + scaling, describe, one Newton
   round, the PSM table) and the coordinator's compute.

    .venv/bin/python bench/bench_psm.py              # 400 seeds, 1M rows
    .venv/bin/python bench/bench_psm.py --seeds 50 --rows 200000   # quicker
    .venv/bin/python bench/bench_psm.py --write     # also docs/benchmarks/psm.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "unit")]

from _table import Table, add_write_argument, write_tables  # noqa: E402

from shared.features import FEATURE_NAMES, FEATURES, scale  # noqa: E402
from shared.psm import (
    cov_moments,
    logit_scores,
    ps_contribution,
    psm_table,  # noqa: E402
    scale_outcomes,
)
from shared.psm.reference import estimate_att_federated, estimate_att_pooled, nn_match_att  # noqa: E402
from shared.synth import generate_cohort, generate_federation  # noqa: E402
from shared.synth.outcomes import OUTCOMES  # noqa: E402

NAMES = [o.name for o in OUTCOMES]
CAPS = np.array([o.cap for o in OUTCOMES])


def site_arrays(cohort):
    """A cohort frame as (z scaled by the public bounds, t, y in original units)."""
    z = scale(cohort[list(FEATURE_NAMES)].to_numpy(float), FEATURES)
    return z, cohort["treated"].to_numpy(float), cohort[NAMES].to_numpy(float)


def numbers(items) -> np.ndarray:
    """Every finite number of a sequence of result models, in field order."""

    def flat(x):
        if isinstance(x, (tuple, list)):
            return [v for item in x for v in flat(item)]
        return [float(x)] if isinstance(x, (int, float)) and not isinstance(x, bool) else []

    v = np.array(flat([tuple(i.model_dump().values()) for i in items]))
    return v[np.isfinite(v)]


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    nz = b != 0
    return float(np.max(np.abs(a[nz] - b[nz]) / np.abs(b[nz]), initial=0.0)) + float(np.any(a[~nz] != 0))


def federated_vs_pooled(seeds: range, scale_: float) -> Table:
    title = f"federated (all synthetic sites) vs pooled, scale {scale_:g}"
    print(f"\n== {title} ==")
    worst, rows = 0.0, []
    for seed in seeds:
        fed_data = generate_federation(seed=seed, scale=scale_)
        nodes = [site_arrays(s.cohort) for s in fed_data.sites]
        fed = estimate_att_federated(nodes=nodes, outcomes=OUTCOMES, covariates=FEATURE_NAMES)
        z, t, y = (np.concatenate(parts) for parts in zip(*nodes))
        pooled = estimate_att_pooled(z=z, t=t, y=y, outcomes=OUTCOMES, covariates=FEATURE_NAMES)
        a, b = fed.estimate, pooled.estimate
        rel = {
            name: max_rel(numbers(getattr(a, name)), numbers(getattr(b, name)))
            for name in ("outcomes", "balance", "diagnostics")
        }
        counts_equal = np.array_equal(fed.table.count, pooled.table.count)
        width = 0.2 * pooled.logit_sd
        edge_shift = float(np.max(np.abs(fed.edges[1:-1] - pooled.edges[1:-1]), initial=0.0)) / width
        beta = float(np.max(np.abs(fed.fitter.beta - pooled.fitter.beta)))
        worst = max(worst, *rel.values())
        print(
            f"seed {seed}: {len(nodes)} nodes {[len(n[1]) for n in nodes]}, Newton rounds "
            f"{fed.fitter.iterations}/{pooled.fitter.iterations}; max rel diff "
            + ", ".join(f"{k} {v:.1e}" for k, v in rel.items())
            + f"; stratum counts equal: {counts_equal}; max |dbeta| {beta:.1e}; "
            f"edges moved by {edge_shift:.1e} stratum widths"
        )
        rows.append(
            (
                seed,
                len(nodes),
                f"{fed.fitter.iterations}/{pooled.fitter.iterations}",
                *(f"{v:.1e}" for v in rel.values()),
                "yes" if counts_equal else "no",
                f"{beta:.1e}",
                f"{edge_shift:.1e}",
            )
        )
    print(f"federated vs pooled: max relative difference of the estimate {worst:.2e}")
    return Table(
        title=title,
        columns=(
            "seed",
            "nodes",
            "Newton rounds fed/pooled",
            "max rel. diff outcomes",
            "balance",
            "diagnostics",
            "stratum counts equal",
            "max abs Δβ",
            "edges moved (stratum widths)",
        ),
        rows=rows,
        align="rrrrrrlrr",
        note=f"Max relative difference of the estimate over these seeds: {worst:.2e}.",
    )


def coverage(title: str, studies, seeds: range, nn: bool = True) -> list[tuple]:
    """``studies(seed) -> (z, t, y, truth, outcomes, covariates)``."""
    print(f"\n== coverage: {title}, {len(seeds)} seeds ==")
    rows, rows_nn = [], []
    started = time.perf_counter()
    for seed in seeds:
        z, t, y, truth, outcomes, covariates = studies(seed)
        ref = estimate_att_pooled(z=z, t=t, y=y, outcomes=outcomes, covariates=covariates)
        rows.append(
            [
                (o.att - truth[o.name], o.se, o.ci[0] <= truth[o.name] <= o.ci[1])
                for o in ref.estimate.outcomes
            ]
        )
        if nn:
            caps = np.array([o.cap for o in outcomes])
            m = nn_match_att(
                scores=logit_scores(z=z, beta=ref.fitter.beta),
                t=t,
                y=np.clip(y, 0, caps),
                caliper=0.2 * ref.logit_sd,
                names=[o.name for o in outcomes],
            )
            rows_nn.append([(r.att - truth[r.name], r.se, r.ci[0] <= truth[r.name] <= r.ci[1]) for r in m])
    elapsed = time.perf_counter() - started
    out = []
    for label, data in (("stratified", rows), ("1:1 NN", rows_nn)):
        if not data:
            continue
        arr = np.array(data, dtype=float)  # (seeds, outcomes, [bias, se, hit])
        for k, o in enumerate(outcomes):
            bias, se, hit = arr[:, k, 0], arr[:, k, 1], arr[:, k, 2]
            print(
                f"{label:>10} {o.name:>13}: coverage {hit.mean():6.1%}"
                f"  mean|bias| {np.abs(bias).mean():10.4g}  mean bias {bias.mean():+10.3g}"
                f"  mean SE {se.mean():10.4g}  sd(err)/SE {bias.std() / se.mean():.3f}"
            )
            out.append(
                (
                    title,
                    label,
                    o.name,
                    f"{hit.mean():.1%}",
                    f"{np.abs(bias).mean():.4g}",
                    f"{bias.mean():+.3g}",
                    f"{se.mean():.4g}",
                    f"{bias.std() / se.mean():.3f}",
                )
            )
    print(f"({elapsed / len(seeds):.3f} s per study)")
    return out


def synth_study(n: int, profile: str):
    def make(seed: int):
        cohort, truth = generate_cohort(n=n, seed=seed, profile=profile)
        z, t, y = site_arrays(cohort)
        return z, t, y, truth["att_capped"], OUTCOMES, FEATURE_NAMES

    return make


def dgp_study(n: int):
    import psm_dgp

    def make(seed: int):
        s = psm_dgp.make_study(n=n, seed=seed)
        return s.z, s.t, s.y, s.truth, psm_dgp.OUTCOMES, psm_dgp.COVARIATES

    return make


def timing(rows: int, n_nodes: int) -> Table:
    title = f"time: {rows:,} rows over {n_nodes} nodes"
    print(f"\n== {title} ==")
    profiles = ["insurer_large", "insurer_mid_1", "insurer_mid_2", "company_logistics", "company_retail"]
    per_node = rows // n_nodes
    frames = [
        generate_cohort(n=per_node, seed=40 + i, profile=profiles[i % len(profiles)])[0]
        for i in range(n_nodes)
    ]
    nodes, prep = [], []
    for f in frames:
        t0 = time.perf_counter()
        nodes.append(site_arrays(f))
        prep.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    fed = estimate_att_federated(nodes=nodes, outcomes=OUTCOMES, covariates=FEATURE_NAMES)
    total = time.perf_counter() - t0
    beta, edges = fed.fitter.beta, fed.edges
    lo, cap = [o.lo for o in OUTCOMES], [o.cap for o in OUTCOMES]
    print(
        f"Newton rounds {fed.fitter.iterations}, strata {len(edges) - 1}, "
        f"treated {fed.estimate.n_treated:,}, controls {fed.estimate.n_control:,}"
    )
    print(
        f"{'node':>4} {'rows':>8} {'validate+scale':>15} {'describe':>9} {'ps_fit/round':>13}"
        f" {'psm_stats':>10}"
    )
    node_total, table = [], []
    for i, (z, t, y) in enumerate(nodes):
        t1 = time.perf_counter()
        y01, _ = scale_outcomes(y=y, lo=lo, cap=cap)
        t2 = time.perf_counter()
        cov_moments(z=z, t=t)
        t3 = time.perf_counter()
        ps_contribution(z=z, t=t, beta=beta)
        t4 = time.perf_counter()
        psm_table(z=z, t=t, y=y01, beta=beta, edges=edges)
        t5 = time.perf_counter()
        node_total.append(prep[i] + (t2 - t1) + (t3 - t2) + fed.fitter.iterations * (t4 - t3) + (t5 - t4))
        print(
            f"{i:>4} {len(t):>8,} {prep[i] + t2 - t1:>14.3f}s {t3 - t2:>8.3f}s {t4 - t3:>12.3f}s"
            f" {t5 - t4:>9.3f}s"
        )
        table.append(
            (
                i,
                f"{len(t):,}",
                f"{prep[i] + t2 - t1:.3f}",
                f"{t3 - t2:.3f}",
                f"{t4 - t3:.3f}",
                f"{t5 - t4:.3f}",
                f"{node_total[-1]:.2f}",
            )
        )
    print(
        f"per node, whole study ({fed.fitter.iterations} Newton rounds): "
        f"mean {np.mean(node_total):.2f} s, max {np.max(node_total):.2f} s"
    )
    print(f"in-process federated study over {rows:,} rows (all nodes serially + coordinator): {total:.2f} s")
    est = fed.estimate
    for o in est.outcomes:
        print(f"  {o.name:>13}: ATT {o.att:+.4g} (95% CI {o.ci[0]:+.4g} .. {o.ci[1]:+.4g})")
    return Table(
        title=title,
        columns=(
            "node",
            "rows",
            "validate+scale s",
            "describe s",
            "ps_fit s/round",
            "psm_stats s",
            "whole study s",
        ),
        rows=table,
        align="rrrrrrr",
        note=f"Newton rounds {fed.fitter.iterations}, strata {len(edges) - 1}, treated "
        f"{fed.estimate.n_treated:,}, controls {fed.estimate.n_control:,}. Per node, "
        f"whole study: mean {np.mean(node_total):.2f} s, max {np.max(node_total):.2f} s. "
        f"The in-process federated study over {rows:,} rows (all nodes serially + "
        f"coordinator) took {total:.2f} s.",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=400)
    ap.add_argument("--n", type=int, default=5000, help="people per synthetic study for coverage")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--skip", nargs="*", default=[], choices=["federated", "coverage", "timing"])
    add_write_argument(ap, "psm")
    args = ap.parse_args()
    tables = []
    if "federated" not in args.skip:
        tables.append(federated_vs_pooled(range(3), scale_=0.25))
    if "coverage" not in args.skip:
        rows = coverage(
            f"synth insurer_mid_1, n={args.n}",
            synth_study(args.n, "insurer_mid_1"),
            range(10_000, 10_000 + args.seeds),
        )
        rows += coverage(
            f"test DGP (psm_dgp.py), n={args.n}", dgp_study(args.n), range(20_000, 20_000 + args.seeds)
        )
        tables.append(
            Table(
                title=f"coverage of the 95 % CI over {args.seeds} seeds",
                rows=rows,
                columns=(
                    "study",
                    "estimator",
                    "outcome",
                    "coverage",
                    "mean abs bias",
                    "mean bias",
                    "mean SE",
                    "sd(err)/SE",
                ),
                align="lllrrrrr",
                note="Against the synthetic sample-ATT truth (capped outcomes); the test DGP is "
                'tests/unit/psm_dgp.py. "stratified" is the product\'s estimator on pooled rows '
                '(= federated), "1:1 NN" the caliper-matching reference.',
            )
        )
    if "timing" not in args.skip:
        tables.append(timing(args.rows, args.nodes))
    if args.write:
        write_tables(
            "psm",
            title="PSM statistics: federated = pooled, CI coverage, node time",
            tables=tables,
            setting=f"{args.seeds} seeds of n = {args.n:,} for coverage; "
            f"{args.rows:,} rows over {args.nodes} nodes for the timing"
            + (f"; skipped: {', '.join(args.skip)}" if args.skip else ""),
        )


if __name__ == "__main__":
    main()
