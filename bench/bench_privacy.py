"""Privacy–utility frontier of the DP study (issue #6): bias, CI coverage and CI width vs ε.

For ε ∈ {0.5, 1, 2, 4, 8} (δ = 1e-6) and about 1k and 10k treated spread evenly over five
synthetic nodes of different profiles (shared.synth), each seeded study runs

* the non-private federated estimator (= the pooled reference: caliper strata, converged fit);
* the DP study of :func:`shared.dp.study_sim.run_dp_study` — noisy describe counts, R noisy
  Newton rounds on centred covariates, noisy score histogram → DP equal-width strata, noisy PSM
  table, CI with the analytic privacy SE — with each node adding its own noise (no SecAgg), and
  with ``--secagg`` also under secure aggregation (``[privacy] secure_aggregation``: each node
  adds σ/√K to the releases after describe; only their SecAgg+ sums are seen).

It prints, per setting and outcome: bias (outcome units and in SEs), coverage of the true
(capped, sample) ATT by the 95 % CI, the DP CI width relative to the non-private one, and the
privacy share of the DP CI width. Every study runs to its estimate (``unresolved_fit = "warn"``),
so coverage measures the statistics everywhere; "stopped" counts the studies the default
(``"stop"``) would end after describe, and "issued cov." is the coverage of the CIs it
issues. Coverage is over all seeds of that size (200 each by default: a perfectly calibrated
95 % CI then lands in 93–97 % with probability 0.85, so use 400 or more to judge a single
cell; the noise of ε's j-th entry is drawn from ``[seed, j, node, secagg]``, so the same ε at
another position in ``--eps`` draws other noise, and one cell at 1000 seeds has moved by up to
2.4 points that way). Noise here comes from seeded generators so runs are reproducible; nodes
use ``secure_rng``.

    .venv/bin/python bench/bench_privacy.py                    # ≈ 4 min on 2 cores (8 with --secagg)
    .venv/bin/python bench/bench_privacy.py --seeds-1k 20 --seeds-10k 5   # quick look
    .venv/bin/python bench/bench_privacy.py --secagg --write    # also docs/benchmarks/privacy.md

``--grid`` runs the coverage grid instead (issue #19, validation on data the tuning never saw):
data-generating processes of :mod:`shared.synth.dgp` × node layouts (K = 2, 5, 20; see
``bench/_layouts.py``) × exact / DP-local / DP-secagg at one ε, and prints per cell and outcome
the coverage with its Wilson 95 % interval, bias in SEs, CI width ÷ exact and ÷ limit, the
studies the default rule would stop, and the cell's time (``bench/_grid.py``).

    .venv/bin/python bench/bench_privacy.py --grid --seeds 40            # every cell, a quick look
    .venv/bin/python bench/bench_privacy.py --grid --seeds 500 --jobs 2 --write --json grid.json
    .venv/bin/python bench/bench_privacy.py --grid --dgps misspecified --layouts k5_10k --seeds 100
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _coverage import wilson_interval  # noqa: E402
from _grid_cli import add_grid_arguments, run_grid  # noqa: E402
from _levers import add_lever_arguments, apply_levers, run_levers  # noqa: E402
from _table import Table, add_write_argument, write_tables  # noqa: E402

from shared.dp.accounting import accountant_label  # noqa: E402
from shared.dp.plan import plan_study  # noqa: E402
from shared.dp.stoprule import NOISE_SHARE_MAX  # noqa: E402
from shared.dp.study_sim import SiteArrays, run_dp_study  # noqa: E402
from shared.errors import EstimationError  # noqa: E402
from shared.features import FEATURES, scale  # noqa: E402
from shared.psm.reference import estimate_att_pooled  # noqa: E402
from shared.psm.table import scale_outcomes  # noqa: E402
from shared.study import BudgetSplit, Privacy  # noqa: E402
from shared.synth import generate_cohort  # noqa: E402
from shared.synth.outcomes import OUTCOMES  # noqa: E402

# The study driver warns once per flagged study (dp_fit_resolution); the tables below count the
# flags over all seeds, so the thousand warnings of a run would only bury them.
logging.getLogger("rehealth.coordinator").setLevel(logging.ERROR)

EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0)
DELTA = 1e-6
#: five nodes of different case mix, with their approximate programme uptake (sizes are set
#: so each node holds about a fifth of the treated)
NODES = (
    ("insurer_large", 0.127),
    ("insurer_mid_1", 0.193),
    ("insurer_mid_2", 0.088),
    ("company_logistics", 0.157),
    ("company_software", 0.176),
)
NAMES = [f.name for f in FEATURES]


def federation(seed: int, treated: int, outcomes=OUTCOMES) -> tuple[list[SiteArrays], dict[str, float]]:
    """Five nodes' scaled arrays and the pooled true ATT (capped at ``outcomes``' bounds)."""
    sites, truths = [], []
    for i, (profile, uptake) in enumerate(NODES):
        cohort, truth = generate_cohort(
            n=int(round(treated / len(NODES) / uptake)),
            seed=seed * 1000 + i,
            profile=profile,
            outcomes=outcomes,
        )
        z = scale(cohort[NAMES].to_numpy(dtype=float), FEATURES)
        y, _ = scale_outcomes(
            y=cohort[[o.name for o in outcomes]].to_numpy(dtype=float),
            lo=[o.lo for o in outcomes],
            cap=[o.cap for o in outcomes],
        )
        sites.append(SiteArrays(z=z, t=cohort["treated"].to_numpy(dtype=float), y=y))
        truths.append(truth)
    n_t = np.array([t["n_treated"] for t in truths], dtype=float)
    att = {
        o.name: float(sum(t["att_capped"][o.name] * n for t, n in zip(truths, n_t)) / n_t.sum())
        for o in outcomes
    }
    return sites, att


def run(args) -> dict:
    outcomes = args.outcomes
    lo, span = np.array([o.lo for o in outcomes]), np.array([o.cap - o.lo for o in outcomes])
    plans = {
        eps: plan_study(
            epsilon=eps,
            delta=DELTA,
            split=args.split,
            n_covariates=len(NAMES),
            n_outcomes=len(outcomes),
            n_ps_rounds=args.ps_rounds,
        )
        for eps in args.eps
    }
    modes = ("local", "secagg") if args.secagg else ("local",)
    rows: dict[tuple, list] = defaultdict(list)  # (treated, mode, eps, outcome) -> per-seed tuples
    failures: dict[tuple, int] = defaultdict(int)
    unresolved: dict[tuple, list] = defaultdict(list)  # share of covariates whose SMD is n/a
    resolution: dict[tuple, list] = defaultdict(list)  # the stop rule's predicted noise share s
    for treated, n_seeds in ((1000, args.seeds_1k), (10_000, args.seeds_10k)):
        t0 = time.time()
        for seed in range(n_seeds):
            sites, truth = federation(seed, treated, outcomes)
            pooled = estimate_att_pooled(
                z=np.vstack([s.z for s in sites]),
                t=np.concatenate([s.t for s in sites]),
                y=lo + np.vstack([s.y for s in sites]) * span,
                outcomes=outcomes,
                covariates=NAMES,
            ).estimate
            for o in outcomes:
                a = pooled.outcome(o.name)
                rows[(treated, "none", 0.0, o.name)].append(
                    (
                        a.att - truth[o.name],
                        a.se,
                        a.ci[0] <= truth[o.name] <= a.ci[1],
                        a.ci[1] - a.ci[0],
                        0.0,
                        True,
                    )
                )
            for mode in modes:
                for j, eps in enumerate(args.eps):
                    rngs = [np.random.default_rng([seed, j, i, mode == "secagg"]) for i in range(len(sites))]
                    try:
                        privacy = Privacy(
                            epsilon=eps,
                            delta=DELTA,
                            split=args.split,
                            ps_rounds=args.ps_rounds,
                            unresolved_fit="warn",
                            secure_aggregation=mode == "secagg",
                        )
                        study = run_dp_study(
                            sites=sites, outcomes=outcomes, covariates=NAMES, privacy=privacy, rngs=rngs
                        )
                    except EstimationError:
                        failures[(treated, mode, eps)] += 1
                        continue
                    dp = study.estimate
                    unresolved[(treated, mode, eps)].append(
                        np.mean([r.smd_after is None for r in dp.balance])
                    )
                    resolution[(treated, mode, eps)].append(
                        next(c.value for c in dp.diagnostics if c.name == "dp_fit_resolution")
                    )
                    issued = study.at_describe.passed  # the default unresolved_fit = "stop"
                    for o in outcomes:
                        b, a = dp.outcome(o.name), pooled.outcome(o.name)
                        rows[(treated, mode, eps, o.name)].append(
                            (
                                b.att - truth[o.name],
                                b.se,
                                b.ci[0] <= truth[o.name] <= b.ci[1],
                                (b.ci[1] - b.ci[0]) / (a.ci[1] - a.ci[0]),
                                b.privacy_share_of_ci,
                                issued,
                            )
                        )
            if (seed + 1) % 10 == 0 or seed + 1 == n_seeds:
                print(
                    f"  {treated} treated: {seed + 1}/{n_seeds} seeds, {time.time() - t0:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    return {
        "rows": rows,
        "failures": failures,
        "plans": plans,
        "unresolved": unresolved,
        "resolution": resolution,
    }


def summarise(result: dict) -> list[dict]:
    out = []

    def order(kv):  # by treated count, the non-private reference first, then mode, ε, outcome
        (treated, mode, eps, outcome), _ = kv
        return treated, mode != "none", mode, eps, outcome

    for (treated, mode, eps, outcome), v in sorted(result["rows"].items(), key=order):
        a = np.array(v, dtype=float)
        issued = a[:, 5] > 0
        out.append(
            {
                "treated": treated,
                "noise": mode,
                "epsilon": eps or None,
                "outcome": outcome,
                "n": len(a),
                "bias": a[:, 0].mean(),
                "bias_in_se": a[:, 0].mean() / a[:, 1].mean(),
                "coverage": a[:, 2].mean(),
                "wilson": wilson_interval(int(a[:, 2].sum()), len(a)),
                "stopped": int((~issued).sum()),
                "coverage_issued": float(a[issued, 2].mean()) if issued.any() else None,
                "width_ratio": None if mode == "none" else float(np.median(a[:, 3])),
                "privacy_share": None if mode == "none" else a[:, 4].mean(),
            }
        )
    return out


def _wilson(r: dict) -> str:
    """The coverage's binomial 95 % interval (Wilson), in percent."""
    lo, hi = r["wilson"]
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def print_table(summary: list[dict], result: dict) -> None:
    acct = accountant_label(next(iter(result["plans"].values())).accountant)
    print(f"\nPlan per node at δ = 1e-6 ({acct} accountant), σ per release:")
    for eps, plan in result["plans"].items():
        sig = {r.query: r.sigma for r in plan.releases}
        print(
            f"  ε={eps:<4g} describe {sig['describe']:.1f}  ps_fit {sig['ps_fit']:.1f}"
            f" (x{plan.n_ps_rounds})  score_hist {sig['score_hist']:.1f}  psm_main {sig['psm_main']:.1f}"
            f"  psm_sumsq {sig['psm_sumsq']:.1f}  psm_balance {sig.get('psm_balance', float('nan')):.1f}"
            f"  (ε planned {plan.epsilon_planned:.4f})"
        )
    print(
        '\ncoverage: every seeded study run through (unresolved_fit = "warn"); stopped / issued: '
        'the studies the default ("stop") ends after describe, and the coverage of the CIs it issues'
    )
    print(
        "\n| treated | noise  |   ε  | outcome      | seeds |    bias   | bias/SE | coverage |"
        "  Wilson 95 %  | stopped | issued cov. | CI width / non-DP | privacy share |"
    )
    print(
        "|--------:|--------|-----:|--------------|------:|----------:|--------:|---------:|--------------:|--------:|"
        "------------:|------------------:|--------------:|"
    )
    for r in summary:
        eps = "—" if r["epsilon"] is None else f"{r['epsilon']:g}"
        wr = "1.00 (ref)" if r["width_ratio"] is None else f"{r['width_ratio']:.2f}"
        ps = "—" if r["privacy_share"] is None else f"{r['privacy_share']:.2f}"
        ci = "—" if r["coverage_issued"] is None else f"{100 * r['coverage_issued']:.1f}%"
        print(
            f"| {r['treated']:>7} | {r['noise']:<6} | {eps:>4} | {r['outcome']:<12} | {r['n']:>5} | "
            f"{r['bias']:>9.4g} | {r['bias_in_se']:>7.2f} | {100 * r['coverage']:>7.1f}% | "
            f"{_wilson(r):>13} | {r['stopped']:>7} | {ci:>11} | {wr:>17} | {ps:>13} |"
        )
    print("\nshare of covariates whose balance the noise leaves unresolved (SMD n/a), mean over seeds:")
    for (treated, mode, eps), v in sorted(result["unresolved"].items()):
        print(f"  treated {treated}, {mode}, ε={eps:g}: {100 * np.mean(v):.0f} %")
    print(
        f"\ndp_fit_resolution: predicted noise share s of the fit (shared/dp/stoprule.py; the "
        f"default stops at s ≥ {NOISE_SHARE_MAX:g}), mean over seeds:"
    )
    for (treated, mode, eps), v in sorted(result["resolution"].items()):
        print(
            f"  treated {treated}, {mode}, ε={eps:g}: s = {np.mean(v):.3f}"
            f"{'' if np.mean(v) < NOISE_SHARE_MAX else '  (flagged)'}"
        )
    if result["failures"]:
        print("\nstudies that stopped with an estimation error (e.g. no overlap under noise):")
        for k, n in sorted(result["failures"].items()):
            print(f"  treated {k[0]}, {k[1]}, ε={k[2]:g}: {n}")


def tables(summary: list[dict], result: dict) -> list[Table]:
    """The printed tables, for ``--write``: the plan's σ, the frontier, the fit's resolution."""
    plan_rows = []
    for eps, plan in result["plans"].items():
        sig = {r.query: r.sigma for r in plan.releases}
        plan_rows.append(
            (
                f"{eps:g}",
                *(
                    f"{sig[q]:.1f}" if q in sig else "—"
                    for q in ("describe", "ps_fit", "score_hist", "psm_main", "psm_sumsq", "psm_balance")
                ),
                plan.n_ps_rounds,
                f"{plan.epsilon_planned:.4f}",
            )
        )
    rows = []
    for r in summary:
        rows.append(
            (
                r["treated"],
                r["noise"],
                "—" if r["epsilon"] is None else f"{r['epsilon']:g}",
                r["outcome"],
                r["n"],
                f"{r['bias']:.4g}",
                f"{r['bias_in_se']:.2f}",
                f"{100 * r['coverage']:.1f}%",
                _wilson(r),
                r["stopped"],
                "—" if r["coverage_issued"] is None else f"{100 * r['coverage_issued']:.1f}%",
                "1.00 (ref)" if r["width_ratio"] is None else f"{r['width_ratio']:.2f}",
                "—" if r["privacy_share"] is None else f"{r['privacy_share']:.2f}",
            )
        )
    fit = [
        (
            treated,
            mode,
            f"{eps:g}",
            f"{np.mean(v):.3f}",
            "yes" if np.mean(v) >= NOISE_SHARE_MAX else "no",
            f"{100 * np.mean(result['unresolved'][(treated, mode, eps)]):.0f} %",
        )
        for (treated, mode, eps), v in sorted(result["resolution"].items())
    ]
    acct = accountant_label(next(iter(result["plans"].values())).accountant)
    out = [
        Table(
            title=f"Noise plan per node (δ = 1e-6, {acct} accountant): σ per release",
            rows=plan_rows,
            columns=(
                "ε",
                "describe",
                "ps_fit",
                "score_hist",
                "psm_main",
                "psm_sumsq",
                "psm_balance",
                "ps_fit rounds",
                "ε planned",
            ),
            align="rrrrrrrrr",
        ),
        Table(
            title="Bias, CI coverage and CI width against the non-private study",
            rows=rows,
            columns=(
                "treated",
                "noise",
                "ε",
                "outcome",
                "seeds",
                "bias",
                "bias/SE",
                "coverage",
                "Wilson 95 %",
                "stopped",
                "issued cov.",
                "CI width / non-DP",
                "privacy share",
            ),
            align="rlllrrrrrrrrr",
            note='Every seeded study runs to its estimate (unresolved_fit = "warn"), so '
            '"coverage" measures the statistics everywhere; "stopped" counts the '
            'studies the default ("stop") ends after describe, "issued cov." is the '
            'coverage of the CIs the default issues. "noise": none = the exact '
            "federated study (= pooled), local = each node adds its noise, secagg = "
            "secure aggregation (each node adds σ/√K; simulated with the same noise as "
            "the Flower study).",
        ),
        Table(
            title="Propensity-fit resolution and unresolved balance",
            rows=fit,
            columns=(
                "treated",
                "noise",
                "ε",
                "predicted fit-noise share s (mean)",
                f"flagged (s ≥ {NOISE_SHARE_MAX:g})",
                "covariates with SMD n/a",
            ),
            align="rllrlr",
        ),
    ]
    if result["failures"]:
        out.append(
            Table(
                title="Studies that stopped with an estimation error",
                columns=("treated", "noise", "ε", "studies"),
                align="rllr",
                rows=[(k[0], k[1], f"{k[2]:g}", n) for k, n in sorted(result["failures"].items())],
            )
        )
    return out


def _split(text: str) -> BudgetSplit:
    shares = [float(x) for x in text.split(",")]
    return BudgetSplit(**dict(zip(("describe", "ps_fit", "psm_stats", "balance"), shares, strict=True)))


def _caps(text: str) -> tuple:
    """The synthetic outcomes with some caps replaced: ``claims_cost=25000,absence_days=60``."""
    caps = dict(item.split("=") for item in text.split(","))
    unknown = set(caps) - {o.name for o in OUTCOMES}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown outcome(s): {', '.join(sorted(unknown))}")
    return tuple(o.model_copy(update={"cap": float(caps[o.name])}) if o.name in caps else o for o in OUTCOMES)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds-1k", type=int, default=200)
    p.add_argument("--seeds-10k", type=int, default=200)
    p.add_argument("--eps", type=lambda s: tuple(float(x) for x in s.split(",")), default=EPSILONS)
    p.add_argument(
        "--secagg",
        action="store_true",
        help="also run every study under secure aggregation ([privacy] secure_aggregation)",
    )
    p.add_argument(
        "--split",
        type=_split,
        default=BudgetSplit(),
        help="budget shares describe,ps_fit,psm_stats,balance (default: the study default)",
    )
    p.add_argument(
        "--ps-rounds",
        type=int,
        default=Privacy().ps_rounds,
        help="DP Newton rounds of the propensity fit ([privacy] ps_rounds)",
    )
    p.add_argument(
        "--caps",
        dest="outcomes",
        type=_caps,
        default=OUTCOMES,
        help="other outcome caps, e.g. claims_cost=25000,absence_days=60 (a large-loss "
        "cap: the truth and both estimators are then of the capped outcome)",
    )
    p.add_argument("--json", type=Path, help="write the summary (with --grid: every seed's results) here")
    add_write_argument(p, "privacy")  # --grid writes privacy_grid.md
    add_grid_arguments(p)
    add_lever_arguments(p)
    args = p.parse_args(argv)
    apply_levers(args)
    if args.levers:
        run_levers(args)
        return
    if args.grid:
        run_grid(args)
        return
    t0 = time.time()
    result = run(args)
    summary = summarise(result)
    print_table(summary, result)
    print(f"\ntotal {time.time() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    if args.write:
        setting = (
            f"{args.seeds_1k} seeds at ~1k treated, {args.seeds_10k} at ~10k treated, five "
            f"nodes; ε ∈ {{{', '.join(f'{e:g}' for e in args.eps)}}}, δ = {DELTA:g}; split "
            f"{args.split.model_dump()}; {args.ps_rounds} DP Newton rounds; caps "
            + ", ".join(f"{o.name} {o.cap:g}" for o in args.outcomes)
        )
        if min(args.seeds_1k, args.seeds_10k) < 200:
            setting += (
                ". **Fewer seeds than the default 200 per size: a coverage cell is then "
                "good to ±5 points or worse, so this table shows the shape of the "
                "frontier, not calibration.** The full run: `python "
                "bench/bench_privacy.py --secagg --seeds-1k 1000 --seeds-10k 600 --write`"
            )
        write_tables(
            "privacy",
            title="Differential privacy: the privacy–utility frontier",
            tables=tables(summary, result),
            setting=setting,
        )


if __name__ == "__main__":
    main()
