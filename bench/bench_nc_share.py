"""The negative controls' share of ``psm_stats`` (issue #21): outcome CI width against EASE and
the calibrated CI's width and coverage, for a few shares f, against riding along and against no
controls at all, on the synthetic generator's 24 negative controls.

Each seed draws one federation (3 sites at ``--scale``) and one seeded noise stream per site,
then runs the shipped DP study (the driver over in-process sites answering with the node's code,
:func:`shared.driver.run_study`) once per configuration on the same data and noise seeds, and
the report's own section (:func:`coordinator.report.negative_controls.negative_control_section`).
Every configuration costs each node the spec's ε (riding along too; only "apart" changes who
gets what). Printed per (process, configuration), over seeds:

- ``width``: median plain 95 % CI width per outcome (claims / CV event / absence days);
- ``EASE``: median and how often the gate (≤ 0.25) fails;
- ``cal``: the calibrated CI's coverage of the true (capped, sample) ATT and its median width,
  ``n/a`` counting seeds without one (an arm mean not positive);
- ``cal+μ``: the same CI widened by μ̂'s own SE (1/√Σ 1/(τ̂² + s_i²)), the error
  :func:`shared.dp.plan.default_control_share` minimises: its coverage and median width;
- ``√(s² + SE(μ̂)²)``: the median over seeds of the calibrated estimate θ̂ − μ̂'s SD on the log
  ratio of means without τ (the outcome's own SE and μ̂'s): what the derived share minimises.

    .venv/bin/python bench/bench_nc_share.py --seeds 4 --workers 1              # a smoke run
    .venv/bin/python bench/bench_nc_share.py --seeds 20 --workers 2             # the table quoted
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from _coverage import map_seeds  # noqa: E402

import shared.protocol as protocol  # noqa: E402
from coordinator.report.negative_controls import negative_control_section  # noqa: E402
from coordinator.study.assemble import assemble_result  # noqa: E402
from coordinator.synth.io import study_document  # noqa: E402
from node.study_service import prepare_arrays  # noqa: E402
from shared import thresholds as th  # noqa: E402
from shared.dp.plan import default_control_share  # noqa: E402
from shared.driver import run_study  # noqa: E402
from shared.inprocess_sites import InProcessSites  # noqa: E402
from shared.protocol import Describe, StudyQuery  # noqa: E402
from shared.psm.calibration import Z_95, fit_null, log_ratio  # noqa: E402
from shared.study import StudySpec  # noqa: E402
from shared.synth import generate_federation  # noqa: E402

OUTCOMES = ("claims_cost", "cv_event", "absence_days")


def _configs(shares: list[float]) -> list[tuple[str, bool, bool, float | None]]:
    """(label, controls declared, apart, share)."""
    out = [("no controls", False, True, None), ("ride along", True, False, None)]
    return out + [(f"apart f = {f:.3g}", True, True, f) for f in shares]


def _one_run(fed, seed: int, epsilon: float, controls: bool, apart: bool, share: float | None) -> dict:
    protocol.NEGATIVE_CONTROLS_APART = apart
    doc = study_document(fed, epsilon=epsilon, negative_controls=controls)
    doc["privacy"]["unresolved_fit"] = "warn"  # measure every seed, not only those the stop rule runs
    if share is not None:
        doc["privacy"]["negative_control_share"] = share
    spec = StudySpec.from_dict(doc)
    query = StudyQuery.for_spec(spec, (Describe(),))
    arrays = {s.name: prepare_arrays(s.cohort, query) for s in fed.sites}
    rngs = {s.name: np.random.default_rng([seed, i, 7]) for i, s in enumerate(fed.sites)}
    run = run_study(spec, InProcessSites(arrays, rngs=rngs))
    result = assemble_result(run, dropped={}, started_at="", finished_at="", total_s=0.0)
    assert run.plan is not None  # a DP study
    out: dict = {"ci": {o.name: o.ci for o in result.outcomes}, "eps": run.plan.epsilon_planned}
    section = negative_control_section(result)
    if section is None:
        return out
    out["ease"] = section.ease
    # μ̂'s SE from the controls the section used (its precision-weighted mean at τ̂)
    used = [
        lr
        for o in result.negative_controls
        if (lr := log_ratio(se=o.se, treated_mean=o.treated_mean, control_mean=o.control_mean)) is not None
    ]
    mu_se = None
    if len(used) >= 5:
        null = fit_null([t for t, _ in used], [s for _, s in used])
        mu_se = 1.0 / math.sqrt(sum(1.0 / (null.sd**2 + s**2) for _, s in used))
    out["cal"], out["cal_mu"], out["sd"] = {}, {}, {}
    for c in section.calibrated:
        out["cal"][c.outcome] = c.calibrated_ci
        o = result.outcome(c.outcome)
        if c.calibrated_log_ratio_ci is None or mu_se is None or c.log_ratio_se is None:
            out["cal_mu"][c.outcome] = out["sd"][c.outcome] = None
            continue
        lo, hi = c.calibrated_log_ratio_ci
        point = (lo + hi) / 2
        half = math.sqrt(((hi - lo) / (2 * Z_95)) ** 2 + mu_se**2) * Z_95
        lo_hi = (point - half, point + half)
        out["cal_mu"][c.outcome] = tuple(o.treated_mean * (1 - math.exp(-x)) for x in lo_hi)
        out["sd"][c.outcome] = math.sqrt(c.log_ratio_se**2 + mu_se**2)  # the derivation's objective
    return out


def one(job) -> dict:
    seed, dgp, epsilon, scale, shares = job
    fed = generate_federation(seed=seed, sites=3, scale=scale, dgp=dgp)
    truth = fed.truth["pooled"]["att_capped"]
    runs = {label: _one_run(fed, seed, epsilon, c, a, f) for label, c, a, f in _configs(shares)}
    return {"truth": truth, "runs": runs}


def _cover(ci, t) -> bool:
    return ci is not None and ci[0] <= t <= ci[1]


def _med(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def table(dgp: str, results: list[dict], shares: list[float]) -> list[str]:
    n = len(results)
    rows = []
    for label, controls, _, _ in _configs(shares):
        rs = [r["runs"][label] for r in results]
        eps = max(r["eps"] for r in rs)
        width = " / ".join(f"{_med(r['ci'][k][1] - r['ci'][k][0] for r in rs):.4g}" for k in OUTCOMES)
        if not controls:
            truths = {k: [res["truth"][k] for res in results] for k in OUTCOMES}
            hits = [sum(_cover(r["ci"][k], tk) for r, tk in zip(rs, truths[k])) for k in OUTCOMES]
            cov = " / ".join(str(h) for h in hits)
            rows.append(f"| {dgp} | {label} | {eps:.6f} | {width} | {cov} | | | | |")
            continue
        eases = [r["ease"] if r["ease"] is not None else math.inf for r in rs]
        plain, cal, calmu, sd = [], [], [], []
        for k in OUTCOMES:
            t = [res["truth"][k] for res in results]
            plain.append(f"{sum(_cover(r['ci'][k], tk) for r, tk in zip(rs, t))}")
            have = [(r["cal"][k], tk) for r, tk in zip(rs, t) if r["cal"][k] is not None]
            covered = sum(_cover(ci, tk) for ci, tk in have)
            none = f" ({n - len(have)} n/a)" if len(have) < n else ""
            cal.append(f"{covered}{none} {_med(ci[1] - ci[0] for ci, _ in have):.4g}")
            hm = [(r["cal_mu"][k], tk) for r, tk in zip(rs, t) if r["cal_mu"][k] is not None]
            calmu.append(f"{sum(_cover(ci, tk) for ci, tk in hm)} {_med(ci[1] - ci[0] for ci, _ in hm):.4g}")
            sd.append(f"{_med(r['sd'].get(k) for r in rs):.4f}")
        rows.append(
            f"| {dgp} | {label} | {eps:.6f} | {width} | {' / '.join(plain)} | {_med(eases):.3f}, "
            f"{sum(e > th.EASE_MAX for e in eases)} | {' · '.join(cal)} | {' · '.join(calmu)} | "
            f"{' / '.join(sd)} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--scale", type=float, default=0.3)
    ap.add_argument("--eps", type=float, default=1.0)
    shares = [0.15, 0.25, default_control_share(3), 0.5, 0.65]
    ap.add_argument("--shares", type=float, nargs="+", default=shares)
    ap.add_argument("--dgp", nargs="+", default=["baseline", "unmeasured_confounding"])
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    print(
        f"3 sites at scale {args.scale} (~{int(98_000 * args.scale):,} people), ε = {args.eps:g}, "
        f"{args.seeds} seeds per cell, 24 negative controls\n"
    )
    print(
        f"Counts are of {args.seeds} seeds. Columns per outcome (claims / CV event / absence days).\n\n"
        "| process | controls | ε charged | plain CI width | plain covered | EASE median, gate fails "
        "| calibrated: covered (n/a), width | calibrated + μ̂ SE: covered, width | √(s² + SE(μ̂)²) (log) |"
    )
    print("|:--|:--|--:|:--|:--|:--|:--|:--|:--|")
    for dgp in args.dgp:
        jobs = [(s, dgp, args.eps, args.scale, args.shares) for s in range(100, 100 + args.seeds)]
        results = map_seeds(one, jobs, workers=args.workers, chunksize=1)
        print("\n".join(table(dgp, results, args.shares)), flush=True)


if __name__ == "__main__":
    main()
