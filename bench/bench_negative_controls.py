"""EASE and empirically calibrated CIs from the 24 synthetic negative controls, with and without
an unmeasured confounder (``unmeasured_confounding``, :mod:`shared.synth.dgp`).

Each cell runs the shipped study (the driver over in-process sites answering with the node's
code, :func:`shared.driver.run_study`; under DP each site draws seeded noise) on the first three
synthetic sites at ``--scale``, with the negative controls declared, then the report's own
section (:func:`coordinator.report.negative_controls.negative_control_section`). Printed per
(process, ε): EASE (median and range over seeds), how often the EASE gate fails, the fitted
systematic error μ and τ (medians), and per outcome the coverage of the plain and the calibrated
95 % CI of the true (capped, sample) ATT, with their median widths.

    .venv/bin/python bench/bench_negative_controls.py                 # ≈ 2 min on 2 cores
    .venv/bin/python bench/bench_negative_controls.py --seeds 5 --eps none 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.report.negative_controls import negative_control_section  # noqa: E402
from coordinator.study.assemble import assemble_result  # noqa: E402
from coordinator.synth.io import study_document  # noqa: E402
from node.study_service import prepare_arrays  # noqa: E402
from shared import thresholds as th  # noqa: E402
from shared.driver import run_study  # noqa: E402
from shared.inprocess_sites import InProcessSites  # noqa: E402
from shared.protocol import Describe, StudyQuery  # noqa: E402
from shared.study import StudySpec  # noqa: E402
from shared.synth import generate_federation  # noqa: E402


def one(seed: int, dgp: str, epsilon: float | None, scale: float, negative_controls: bool = True) -> dict:
    fed = generate_federation(seed=seed, sites=3, scale=scale, dgp=dgp)
    spec = StudySpec.from_dict(study_document(fed, epsilon=epsilon, negative_controls=negative_controls))
    query = StudyQuery.for_spec(spec, (Describe(),))
    arrays = {s.name: prepare_arrays(s.cohort, query) for s in fed.sites}
    rngs = {s.name: np.random.default_rng([seed, i, 7]) for i, s in enumerate(fed.sites)}
    run = run_study(spec, InProcessSites(arrays, rngs=rngs))
    result = assemble_result(run, dropped={}, started_at="", finished_at="", total_s=0.0)
    truth = fed.truth["pooled"]["att_capped"]
    out = {"truth": truth, "ci": {o.name: o.ci for o in result.outcomes}}
    section = negative_control_section(result)
    if section is not None:
        out.update(
            ease=section.ease,
            mu=section.null_mean,
            tau=section.null_sd,
            cal={c.outcome: c.calibrated_ci for c in section.calibrated},
        )
    return out


def _cover(ci, t) -> bool:
    return ci is not None and ci[0] <= t <= ci[1]


def cell(dgp: str, epsilon: float | None, seeds: range, scale: float) -> list[str]:
    runs = [one(s, dgp, epsilon, scale) for s in seeds]
    eases = [r["ease"] if r["ease"] is not None else float("inf") for r in runs]  # inf: no null fitted
    n = len(runs)
    label = "exact" if epsilon is None else f"ε = {epsilon:g}"
    head = (
        f"| {dgp} | {label} | {statistics.median(eases):.3f} [{min(eases):.3f}, {max(eases):.3f}] | "
        f"{sum(e > th.EASE_MAX for e in eases)}/{n} | "
        f"{statistics.median(r['mu'] for r in runs if r['mu'] is not None):.3f} | "
        f"{statistics.median(r['tau'] for r in runs if r['tau'] is not None):.3f} |"
    )
    rows = [head]
    for name in runs[0]["ci"]:
        plain = sum(_cover(r["ci"][name], r["truth"][name]) for r in runs)
        cal = sum(_cover(r["cal"][name], r["truth"][name]) for r in runs)
        wp = statistics.median(r["ci"][name][1] - r["ci"][name][0] for r in runs)
        have = [r["cal"][name] for r in runs if r["cal"][name] is not None]
        wc = statistics.median(c[1] - c[0] for c in have) if have else float("nan")
        none = f", {n - len(have)} without one" if len(have) < n else ""
        rows.append(
            f"|  | {name} | plain {plain}/{n} (width {wp:.4g}) | "
            f"calibrated {cal}/{n} (width {wc:.4g}{none}) | | |"
        )
    return rows


def dp_cost(seeds: range, scale: float, epsilon: float) -> str:
    """The primary outcomes' median CI width under DP with and without the negative controls."""
    w = {}
    for nc in (False, True):
        runs = [one(s, "baseline", epsilon, scale, negative_controls=nc) for s in seeds]
        w[nc] = {k: statistics.median(r["ci"][k][1] - r["ci"][k][0] for r in runs) for k in runs[0]["ci"]}
    parts = ", ".join(
        f"{k} {w[False][k]:.4g} → {w[True][k]:.4g} (×{w[True][k] / w[False][k]:.2f})" for k in w[False]
    )
    return f"DP ε = {epsilon:g}, median 95 % CI width without → with the 24 negative controls: {parts}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--eps", nargs="+", default=["none", "4"], help="ε per cell; none = exact")
    args = ap.parse_args()
    seeds = range(100, 100 + args.seeds)
    print(
        f"3 sites at scale {args.scale} (~{int(98_000 * args.scale):,} people), {args.seeds} seeds per cell\n"
    )
    print("| process | ε | EASE median [range] | EASE gate fails | μ (median) | τ (median) |")
    print("|:--|:--|:--|:--|--:|--:|")
    for dgp in ("baseline", "unmeasured_confounding"):
        for e in args.eps:
            eps = None if e == "none" else float(e)
            print("\n".join(cell(dgp, eps, seeds, args.scale)), flush=True)
    for e in args.eps:
        if e != "none":
            print("\n" + dp_cost(range(100, 100 + min(args.seeds, 10)), args.scale, float(e)))


if __name__ == "__main__":
    main()
