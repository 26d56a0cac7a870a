"""Where the DP strata's residual confounding at about 1k treated comes from (issue #19).

Per seed of one layout (default ``k5_1k``, baseline process, SecAgg+, ε = 1, no cap round) it
runs the shipped DP study, then measures the *noise-free* pooled stratified ATT (the plug-in
of ``bench_cap_coverage.py``) at a given β and given edges against the truth, in units of the
DP study's SE, for candidate stratum rules. Edges are made from a score histogram at that β on
the public grid with the plan's ``score_hist`` noise added (what the study releases), so every
rule reads only what a coordinator could read. Cells enter when both arms' counts reach the
study's ``dp_min_cell``. Beside the stratum rules it runs the DP fit's rounds without noise at
the noise's Hessian floor (is the floor what turns the score?), compares the fit's share of the
bias with the fit-bias bound the CIs carry, and prints the shipped study's coverage::

    .venv/bin/python bench/bench_dp_strata.py --seeds 50
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

from shared.dp import strata as dps  # noqa: E402
from shared.dp.fitnoise import bias_aware_halfwidth  # noqa: E402
from shared.dp.forms import CENTER  # noqa: E402
from shared.dp.mechanisms import project_psd  # noqa: E402
from shared.dp.study_sim import run_dp_study  # noqa: E402
from shared.dp.workflow import dp_grid  # noqa: E402
from shared.psm.reference import estimate_att_federated  # noqa: E402
from shared.psm.table import psm_table  # noqa: E402
from shared.study import Privacy  # noqa: E402
from shared.synth.outcomes import OUTCOMES  # noqa: E402

logging.getLogger("rehealth.coordinator").setLevel(logging.ERROR)


def plug_in(pool, beta, edges, outcomes, min_cell: float) -> np.ndarray:
    """The stratified ATT of the noise-free pooled table at ``beta`` and ``edges`` (outcome units)."""
    z, t, y = pool
    tab = psm_table(z=z, t=t, y=y, beta=beta, edges=edges)
    c = tab.count
    ok = (c[:, 0] >= min_cell) & (c[:, 1] >= min_cell)
    m = tab.sum_y[ok] / c[ok][:, :, None]
    w = c[ok, 1] / c[ok, 1].sum()
    span = np.array([o.cap - o.lo for o in outcomes])
    return span * (w[:, None] * (m[:, 1] - m[:, 0])).sum(0)


def support_edges(*, grid, treated_counts, noise_sd: float, n_strata: int) -> np.ndarray:
    """The shipped equal-width edges with the outer strata ended where the treated's noisy
    (3σ-thresholded) histogram ends: two more strata beyond, holding controls outside the
    treated's support, which the min-cell rule then drops (the hypothesis under test)."""
    e = dps.dp_width_edges(grid=grid, treated_counts=treated_counts, noise_sd=noise_sd, n_strata=n_strata)
    kept = np.flatnonzero(np.asarray(treated_counts) - dps._HIST_THRESHOLD_SD * noise_sd > 0)
    if kept.size == 0:
        return e
    a, b = grid[kept[0]], grid[kept[-1] + 1]
    inner = e[1:-1]
    lo = [a] if np.isfinite(a) and (inner.size == 0 or a < inner[0]) else []
    hi = [b] if np.isfinite(b) and (inner.size == 0 or b > inner[-1]) else []
    return np.concatenate(([-np.inf], lo, inner, hi, [np.inf]))


def calibration(pool, beta, beta_ref) -> tuple[float, float]:
    """Slope and correlation of the score at ``beta`` regressed on the score at ``beta_ref``
    over the pooled rows (slope < 1: the DP score is attenuated)."""
    z = pool[0]
    s, r = beta[0] + z @ beta[1:], beta_ref[0] + z @ beta_ref[1:]
    c = np.cov(s, r)
    return float(c[0, 1] / c[1, 1]), float(c[0, 1] / np.sqrt(c[0, 0] * c[1, 1]))


def stated_bound(est, name: str) -> float:
    """The fit-bias bound the study put into this outcome's CI, in its SEs: the t with
    ``bias_aware_halfwidth(se, t·se)`` equal to the CI's half-width (bisection)."""
    o = est.outcome(name)
    half = (o.ci[1] - o.ci[0]) / 2
    lo, hi = 0.0, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if bias_aware_halfwidth(se=o.se, bias=mid * o.se) < half else (lo, mid)
    return lo


def floored_beta(pool, *, n_rounds: int, sigma_fit: float, average: bool = False) -> np.ndarray:
    """The DP fit's rounds without their noise but with the Hessian floor that noise sets
    (``sqrt(2(d + 1))·σ`` on the centred Hessian's eigenvalues, :func:`shared.dp.workflow.dp_ps_stats`),
    from the same start (intercept log(n1/n0), slopes 0): is the floor alone what turns the score?
    ``average``: the floor at round r divided by √r, what a running mean of the r released
    Hessians would need (a sensitivity, not the shipped fit)."""
    z, t, _ = pool
    x = np.hstack([np.ones((len(t), 1)), z - CENTER])
    b = np.zeros(x.shape[1])
    b[0] = np.log(t.sum() / (len(t) - t.sum()))
    floor = np.sqrt(2.0 * x.shape[1]) * sigma_fit
    for r in range(1, n_rounds + 1):
        p = 1.0 / (1.0 + np.exp(-(x @ b)))
        g = x.T @ (t - p)
        H = project_psd((x * (p * (1 - p))[:, None]).T @ x, floor=floor / (np.sqrt(r) if average else 1.0))
        b = b + np.linalg.solve(H, g)
    return np.concatenate(([b[0] - CENTER * b[1:].sum()], b[1:]))


def noisy_hist(pool, beta, sd: float, rng) -> np.ndarray:
    """``(G, 2)`` score histogram on the public grid at ``beta``, with the release's noise."""
    z, t, _ = pool
    s = beta[0] + z @ beta[1:]
    grid = dp_grid(beta=beta)
    h = np.stack([np.histogram(s[t == a], bins=grid)[0] for a in (0, 1)], axis=1).astype(float)
    return h + rng.normal(0.0, sd, size=h.shape)


def one_seed(seed: int, args) -> dict:
    layout = LAYOUTS[args.layout]
    outs = tuple(OUTCOMES)
    nodes, truth = build_nodes(layout=layout, dgp="baseline", seed=seed, outcomes=outs)
    dp = run_dp_study(
        sites=[n.arrays for n in nodes],
        outcomes=outs,
        covariates=NAMES,
        privacy=Privacy(
            epsilon=args.epsilon, secure_aggregation=True, unresolved_fit="warn", ps_rounds=args.ps_rounds
        ),
        rngs=[np.random.default_rng([seed, 19, i]) for i in range(len(nodes))],
    )
    k = len(nodes)
    hist_sd = dp.plan.release("score_hist").total_sigma(k, secure_aggregation=True)
    count_sd = dp.plan.release("psm_main").total_sigma(k, secure_aggregation=True)
    min_cell = dps.dp_min_cell(count_sigma=count_sd)
    pool = (
        np.vstack([n.arrays.z for n in nodes]),
        np.concatenate([n.arrays.t for n in nodes]),
        np.vstack([n.arrays.y for n in nodes]),
    )
    raw = [(n.arrays.z, n.arrays.t, n.y_raw) for n in nodes]
    exact = estimate_att_federated(nodes=raw, outcomes=outs, covariates=NAMES)
    rng = np.random.default_rng([seed, 77])
    n_t = float(pool[1].sum())
    s_rule = dps.dp_n_strata(n_treated=n_t, count_sigma=count_sd)
    rows: dict[str, np.ndarray] = {"shipped (merged)": plug_in(pool, dp.beta, dp.edges, outs, min_cell)}
    fit_sd = dp.plan.release("ps_fit").total_sigma(k, secure_aggregation=True)
    floored = floored_beta(pool, n_rounds=dp.plan.n_ps_rounds, sigma_fit=fit_sd)
    h = noisy_hist(pool, floored, hist_sd, rng)
    e = dps.dp_width_edges(
        grid=dp_grid(beta=floored), treated_counts=h[:, 1], noise_sd=hist_sd, n_strata=s_rule
    )
    rows["floored noise-free β, width ±inf, S=rule"] = plug_in(pool, floored, e, outs, min_cell)
    avg = floored_beta(pool, n_rounds=dp.plan.n_ps_rounds, sigma_fit=fit_sd, average=True)
    h = noisy_hist(pool, avg, hist_sd, rng)
    e = dps.dp_width_edges(grid=dp_grid(beta=avg), treated_counts=h[:, 1], noise_sd=hist_sd, n_strata=s_rule)
    rows["floor/√r noise-free β, width ±inf, S=rule"] = plug_in(pool, avg, e, outs, min_cell)
    for label, beta in (("DP β", dp.beta), ("exact β", exact.fitter.beta)):
        h = noisy_hist(pool, beta, hist_sd, rng)
        grid = dp_grid(beta=beta)
        for name, fn in args.rules.items():
            for tag, s in (("rule", s_rule), ("2×rule", 2 * s_rule), ("20", 20)):
                e = fn(grid=grid, treated_counts=h[:, 1], noise_sd=hist_sd, n_strata=s)
                rows[f"{label}, {name}, S={tag}"] = plug_in(pool, beta, e, outs, min_cell)
    rows["exact β, caliper (exact study)"] = np.array([exact.estimate.outcome(o.name).att for o in outs])
    y, t = pool[2], pool[1]
    span = np.array([o.cap - o.lo for o in outs])
    crude = span * (y[t == 1].mean(0) - y[t == 0].mean(0))
    att = np.array([dp.estimate.outcome(o.name).att for o in outs])
    rho2 = calibration(pool, dp.beta, exact.fitter.beta)[1] ** 2
    return {
        "reliability": np.abs(crude - att) * (1 - rho2) / rho2,
        "ci": np.array([dp.estimate.outcome(o.name).ci for o in outs]),
        "bound": np.array([stated_bound(dp.estimate, o.name) for o in outs]),
        "calib": calibration(pool, dp.beta, exact.fitter.beta),
        "calib_floor": calibration(pool, floored, exact.fitter.beta),
        "se": np.array([dp.estimate.outcome(o.name).se for o in outs]),
        "truth": np.array([truth[o.name] for o in outs]),
        "rows": rows,
        "s_rule": s_rule,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--layout", default="k5_1k", choices=sorted(LAYOUTS))
    p.add_argument("--epsilon", type=float, default=1.0)
    p.add_argument("--ps-rounds", type=int, default=4, help="the fit's noisy Newton rounds (shipped: 4)")
    args = p.parse_args(argv)
    args.rules = {"width ±inf": dps.dp_width_edges, "support-bounded": support_edges}
    t0, res = time.time(), []
    for seed in range(args.seeds):
        res.append(one_seed(seed, args))
        if (seed + 1) % 10 == 0:
            print(f"  {seed + 1}/{args.seeds} seeds, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    se = np.mean([r["se"] for r in res], axis=0)
    names = " / ".join(o.name for o in OUTCOMES)
    head = f"{args.seeds} seeds, {args.layout}, ε = {args.epsilon:g}, {args.ps_rounds} fit rounds"
    print(f"noise-free bias ÷ mean DP SE ({names}); {head}")
    print(f"strata by the rule: {sorted(set(r['s_rule'] for r in res))}")
    for key in res[0]["rows"]:
        b = np.mean([r["rows"][key] - r["truth"] for r in res], axis=0) / se
        print(f"  {key:44s} " + " / ".join(f"{x:+.2f}" for x in b))
    d = np.mean(
        [r["rows"]["DP β, width ±inf, S=rule"] - r["rows"]["exact β, width ±inf, S=rule"] for r in res],
        axis=0,
    )
    bound = np.mean([r["bound"] for r in res], axis=0)
    print(
        "the fit's share (DP β minus exact β, same rule): "
        + " / ".join(f"{x:+.2f}" for x in d / se)
        + " SE; the fit-bias bound the CIs carry (mean): "
        + " / ".join(f"{x:.2f}" for x in bound)
        + " SE"
    )
    hit = np.array([(r["ci"][:, 0] <= r["truth"]) & (r["truth"] <= r["ci"][:, 1]) for r in res]).sum(0)
    cover = []
    for h in hit:
        lo, hi = wilson_interval(int(h), len(res))
        cover.append(f"{100 * h / len(res):.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]")
    print("the shipped study's coverage: " + " / ".join(cover))
    rel = np.mean([r["reliability"] for r in res], axis=0) / se
    print(
        "the bound's form |crude − adjusted|·s/(1 − s) at the realised s = 1 − ρ² (ρ: DP score vs exact"
        " score over the rows): " + " / ".join(f"{x:.2f}" for x in rel) + " SE"
    )
    cal = np.array([r["calib"] for r in res])
    print(
        f"DP score on exact score over the rows: slope {cal[:, 0].mean():.2f} (SD {cal[:, 0].std():.2f}),"
        f" correlation {cal[:, 1].mean():.3f} (SD {cal[:, 1].std():.3f})"
    )
    cal = np.array([r["calib_floor"] for r in res])
    print(
        f"floored noise-free score on exact score: slope {cal[:, 0].mean():.2f} (SD {cal[:, 0].std():.2f}),"
        f" correlation {cal[:, 1].mean():.3f} (SD {cal[:, 1].std():.3f})"
    )
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
