"""Can the coordinator bound the DP propensity fit's unconverged part from what it holds? (issue #19)

Per seed (default ``k5_1k``, baseline process, SecAgg+, ε = 1, no cap round) it runs the shipped DP
study and, at its final β, draws what one more ``ps_fit`` release would give (the exact centred
(g, H) plus the plan's noise, the Hessian floored as :func:`shared.dp.workflow.dp_ps_stats` does).
The step that release would take, δ = H̃⁻¹g̃, is the candidate "distance to the MLE": its score
share s = (Σ sd_j |δ_j|)² / Var(ŝ) goes into the fit-bias bound's own form
|crude − adjusted|·s/(1 − s) (:mod:`shared.dp.fitnoise`), and the bench prints that bound, the
bound at the realised s = 1 − ρ² (ρ: DP score vs exact score, which no coordinator knows), the
shipped CI's bound, and coverage (Wilson 95 %) of the shipped CI and of the CI widened by the
step's bound::

    .venv/bin/python bench/bench_fit_distance.py --seeds 50
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _coverage import wilson_interval  # noqa: E402
from _layouts import LAYOUTS, NAMES, build_nodes  # noqa: E402
from bench_dp_strata import calibration, stated_bound  # noqa: E402

from shared.dp.fitnoise import bias_aware_halfwidth  # noqa: E402
from shared.dp.forms import CENTER  # noqa: E402
from shared.dp.mechanisms import project_psd  # noqa: E402
from shared.dp.study_sim import run_dp_study  # noqa: E402
from shared.psm.reference import estimate_att_federated  # noqa: E402
from shared.study import Privacy  # noqa: E402
from shared.synth.outcomes import OUTCOMES  # noqa: E402

logging.getLogger("rehealth.coordinator").setLevel(logging.ERROR)


def scaled_floor(scale: float) -> None:
    """Run the study with the fit's Hessian floor times ``scale`` (a sensitivity: does a lower
    floor turn the floor's shrinkage, which the bound does not hold, into noise, which it does?)."""
    import math

    import shared.driver as driver
    from shared.dp.forms import ps_from_release
    from shared.psm.propensity import PsStats

    def stats(*, g, H, plan, n_nodes, secure_aggregation=False):
        g = np.asarray(g, dtype=float).reshape(-1)
        sigma = plan.release("ps_fit").total_sigma(n_nodes, secure_aggregation=secure_aggregation)
        floor = scale * math.sqrt(2.0 * g.size) * sigma
        g, H = ps_from_release(g=g, H=project_psd(np.asarray(H, dtype=float), floor=floor))
        return PsStats(n=0, g=g, H=H, loglik=0.0)

    driver.dp_ps_stats = stats


def dr_studies() -> None:
    """Run the study with the doubly robust estimator (``estimator = "dr"``, shared/dp/drstudy.py)."""
    import shared.dp.study_sim as sim

    plain = sim.dp_spec

    def spec(**kw):
        return plain(**kw).model_copy(update={"estimator": "dr"})

    sim.dp_spec = spec


def next_step(z, t, beta, sigma: float, rng, scale: float = 1.0) -> tuple[np.ndarray, int]:
    """Slopes of the Newton step one more noisy, floored ``ps_fit`` release at ``beta`` would
    take, and how many of the released Hessian's eigenvalues the floor raised (which the
    coordinator sees)."""
    x = np.hstack([np.ones((len(t), 1)), z - CENTER])
    bc = np.concatenate(([beta[0] + CENTER * beta[1:].sum()], beta[1:]))
    p = 1.0 / (1.0 + np.exp(-(x @ bc)))
    g = x.T @ (t - p) + rng.normal(0.0, sigma, x.shape[1])
    H = (x * (p * (1 - p))[:, None]).T @ x + rng.normal(0.0, sigma, (x.shape[1], x.shape[1]))
    floor = scale * np.sqrt(2.0 * x.shape[1]) * sigma
    n_floored = int(np.sum(np.linalg.eigvalsh((H + H.T) / 2) < floor))
    H = project_psd(H, floor=floor)
    return np.linalg.solve(H, g)[1:], n_floored


def form(removed, s: float) -> np.ndarray:
    return removed * s / (1.0 - s) if s < 1 else np.full_like(removed, np.inf)


def one_seed(seed: int, args) -> dict:
    outs = tuple(OUTCOMES)
    nodes, truth = build_nodes(layout=LAYOUTS[args.layout], dgp="baseline", seed=seed, outcomes=outs)
    dp = run_dp_study(
        sites=[n.arrays for n in nodes],
        outcomes=outs,
        covariates=NAMES,
        privacy=Privacy(epsilon=args.epsilon, secure_aggregation=True, unresolved_fit="warn"),
        rngs=[np.random.default_rng([seed, 19, i]) for i in range(len(nodes))],
    )
    k = len(nodes)
    z = np.vstack([n.arrays.z for n in nodes])
    t = np.concatenate([n.arrays.t for n in nodes])
    y = np.vstack([n.arrays.y for n in nodes])
    exact = estimate_att_federated(
        nodes=[(n.arrays.z, n.arrays.t, n.y_raw) for n in nodes], outcomes=outs, covariates=NAMES
    )
    sigma = dp.plan.release("ps_fit").total_sigma(k, secure_aggregation=True)
    delta, n_floored = next_step(z, t, dp.beta, sigma, np.random.default_rng([seed, 88]), args.floor_scale)
    sd = np.clip(z.std(0), 0.0, 0.5)
    var_s = float(np.var(dp.beta[0] + z @ dp.beta[1:]))
    s_step = float(sd @ np.abs(delta)) ** 2 / var_s
    span = np.array([o.cap - o.lo for o in outs])
    crude = span * (y[t == 1].mean(0) - y[t == 0].mean(0))
    est = [dp.estimate.outcome(o.name) for o in outs]
    att = np.array([o.att for o in est])
    se = np.array([o.se for o in est])
    removed = np.abs(crude - att)
    shipped = np.array([stated_bound(dp.estimate, o.name) for o in outs]) * se
    rho2 = calibration((z, t, y), dp.beta, exact.fitter.beta)[1] ** 2
    b_step = shipped + form(removed, s_step)  # the shipped noise bound plus the step's share
    half = np.array([bias_aware_halfwidth(se=s, bias=float(b)) for s, b in zip(se, b_step)])
    tr = np.array([truth[o.name] for o in outs])
    return {
        "se": se,
        "shipped": shipped / se,
        "step": form(removed, s_step) / se,
        "realised": form(removed, 1.0 - rho2) / se,
        "s": (s_step, 1.0 - rho2),
        "floored": n_floored,
        "calib": calibration((z, t, y), dp.beta, exact.fitter.beta),
        "hit": np.array([o.ci[0] <= x <= o.ci[1] for o, x in zip(est, tr)]),
        "hit_step": np.abs(att - tr) <= half,
    }


def _cov(hits) -> str:
    n, h = len(hits), np.sum(hits, axis=0)
    out = []
    for x in h:
        lo, hi = wilson_interval(int(x), n)
        out.append(f"{100 * x / n:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]")
    return " / ".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--layout", default="k5_1k", choices=sorted(LAYOUTS))
    p.add_argument("--epsilon", type=float, default=1.0)
    p.add_argument("--floor-scale", type=float, default=1.0, help="the Hessian floor times this (shipped: 1)")
    p.add_argument("--dr", action="store_true", help="the doubly robust estimator (shipped: stratified)")
    args = p.parse_args(argv)
    if args.dr:
        dr_studies()
    if args.floor_scale != 1.0:
        scaled_floor(args.floor_scale)
    t0, res = time.time(), []
    for seed in range(args.seeds):
        res.append(one_seed(seed, args))
        if (seed + 1) % 10 == 0:
            print(f"  {seed + 1}/{args.seeds} seeds, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    names = " / ".join(o.name for o in OUTCOMES)
    print(
        f"{args.seeds} seeds, {args.layout}, ε = {args.epsilon:g}, SecAgg+, floor ×{args.floor_scale:g},"
        f" {'DR' if args.dr else 'stratified'} ({names})"
    )
    for key, label in (
        ("shipped", "shipped bound (last step's noise)"),
        ("step", "one more noisy floored step's share"),
        ("realised", "the form at the realised 1 − ρ²"),
    ):
        v = np.median([r[key] for r in res], axis=0)
        m = np.nanmean([np.where(np.isfinite(r[key]), r[key], np.nan) for r in res], axis=0)  # finite only
        print(
            f"  {label:40s} median "
            + " / ".join(f"{x:.2f}" for x in v)
            + " SE, mean "
            + " / ".join(f"{x:.2f}" for x in m)
        )
    s = np.array([r["s"] for r in res])
    print(
        f"  share s: step median {np.median(s[:, 0]):.3f}, realised 1 − ρ² median {np.median(s[:, 1]):.3f}; "
        f"corr {np.corrcoef(s[:, 0], s[:, 1])[0, 1]:.2f}"
    )
    fl = np.array([r["floored"] for r in res])
    print(
        f"  eigenvalues the floor raises (of {len(NAMES) + 1}): median {np.median(fl):.0f},"
        f" range {fl.min()}–{fl.max()}"
    )
    cal = np.array([r["calib"] for r in res])
    print(f"  DP score on exact score: slope {cal[:, 0].mean():.2f}, correlation {cal[:, 1].mean():.3f}")
    print("  coverage, shipped CI: " + _cov([r["hit"] for r in res]))
    print("  coverage, + the step's bound: " + _cov([r["hit_step"] for r in res]))
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
