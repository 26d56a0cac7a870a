"""Where the stratified SE falls short: empirical SD of the error across seeds vs the mean SE.

Exact studies (no DP) on pooled rows of a layout (default ``k5_1k``) under a process (default
``strong_confounding``; federated = pooled, tests/unit/test_psm_federated.py). Per seed the
generator's potential outcomes are kept (as in bench_misspec_decompose.py), so the error of the
shipped estimator (:func:`shared.psm.estimate_att`, caliper strata 0.2 SD) splits into parts
each candidate explanation of the under-coverage predicts:

* ``err``: estimate − the sample ATT of *all* treated (what the benchmarks score against);
* ``err_supp``: estimate − the sample ATT of the *supported* treated (the estimator's target;
  the difference is the dropped treated's share, a variance the SE does not claim);
* ``oracle``: :math:`\\sum_b w_b(\\bar y_{bT}(0) - \\bar y_{bC})`, the error within the strata
  (equals ``err_supp``; printed as a check);

and the SE in several forms, each judged by SD(err_supp)/mean(SE) and coverage of the target:

* ``shipped``: the estimator's SE (controls' variance, borrowed in small cells);
* ``own``: each cell's own :math:`s^2_{bC}` (n − 1; 0 for one control), no borrowing;
* ``pop``: :math:`\\sum w_b^2 (s^2_{bT}/n_{bT} + s^2_{bC}/n_{bC})` (the population-ATT form);
* ``t_ref``: shipped SE, t quantile at Satterthwaite's degrees of freedom;
* ``skew_t``: the shipped CI itself (Hall's skewness-corrected t interval, shared/psm/skew.py);
* ``true_ps``: the same estimator on strata of the TRUE propensity (fixed edges: 0.2 SD of the
  true logit over seed 0), i.e. no estimated score and no data-dependent edges.

    PYTHONPATH=$PWD nice /work/main/.venv/bin/python bench/bench_se_gap.py --seeds 100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats as sst

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from _coverage import Z95, wilson_interval  # noqa: E402
from _layouts import LAYOUTS, NAMES, node_sizes  # noqa: E402

from shared.features import FEATURES, scale  # noqa: E402
from shared.psm import caliper_edges, cov_moments, estimate_att, fit_propensity, logit_sd, scale_outcomes  # noqa: E402
from shared.psm.cells import MIN_DOF, cell_means, cell_variances, clamped_counts  # noqa: E402
from shared.psm.table import psm_table  # noqa: E402
from shared.synth.dgp import dgp as get_dgp  # noqa: E402
from shared.synth.federation import _simulate, _site_rng  # noqa: E402
from shared.synth.outcomes import OUTCOMES  # noqa: E402
from shared.synth.sites import PROFILES_BY_NAME  # noqa: E402

LO = np.array([o.lo for o in OUTCOMES])
CAP = np.array([o.cap for o in OUTCOMES])


def data(layout, dgp_name, seed):
    """Pooled ``z, t, y, y0, logit π`` of a layout's nodes (the generator's own seeding)."""
    lay, proc = LAYOUTS[layout], get_dgp(dgp_name)
    sims = []
    for i, (p, n) in enumerate(zip(lay.profiles, node_sizes(lay, dgp_name))):
        prof = PROFILES_BY_NAME[p]
        s = seed * 1000 + i
        sims.append(_simulate(_site_rng(s, prof), prof, n, proc, _site_rng(s, prof, (1,))))
    X = np.column_stack([np.concatenate([s.population.features[k] for s in sims]) for k in NAMES]).astype(
        float
    )
    t = np.concatenate([s.treated for s in sims]).astype(float)
    y = np.column_stack(
        [np.concatenate([s.potential.observed(s.treated)[o.name] for s in sims]) for o in OUTCOMES]
    ).astype(float)
    y0 = np.column_stack([np.concatenate([s.potential.y0[o.name] for s in sims]) for o in OUTCOMES]).astype(
        float
    )
    pi = np.concatenate([s.propensity for s in sims])
    return scale(X, FEATURES), t, y, y0, np.log(pi / (1 - pi))


def _scaled(y):
    return scale_outcomes(y=y, lo=list(LO), cap=list(CAP))[0]


def analyse(z, t, y01, y001, beta, edges, names):
    """Per outcome: err_supp (on the [0,1] scale), SEs by form, Satterthwaite dof; plus
    the supported-treated mask."""
    table = psm_table(z=z, t=t, y=y01, beta=beta, edges=edges)
    est = estimate_att(table=table, outcomes=OUTCOMES, covariates=names)
    n = clamped_counts(table.count)
    used = (n[:, 1] >= 1) & (n[:, 0] >= 1)
    w = np.where(used, n[:, 1], 0.0) / n[used, 1].sum()
    var = cell_variances(table.sum_y, table.sumsq_y, n, np.repeat(used[:, None], 2, axis=1))
    mean = cell_means(table.sum_y, n, clamp=False)
    nn = n[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        own = np.where(nn >= 2, (table.sumsq_y - nn * mean**2) / (nn - 1.0), 0.0)
    # the treated's own y0 (scaled), summed per stratum: the oracle error within the strata
    s_idx = np.searchsorted(edges, beta[0] + z @ beta[1:], side="right") - 1
    tr = t == 1
    y0t = np.zeros((edges.size - 1, y01.shape[1]))
    np.add.at(y0t, s_idx[tr], y001[tr])
    wu, nt, nc = w[used], n[used, 1], n[used, 0]
    oracle = wu @ (y0t[used] / nt[:, None] - mean[used, 0])
    supp = tr & used[s_idx]
    se_sh = np.array([o.se for o in est.outcomes]) / (CAP - LO)
    se_own = np.sqrt(np.sum((wu**2 * (1 / nt + 1 / nc))[:, None] * own[used, 0], axis=0))
    y0sq = np.zeros_like(y0t)
    np.add.at(y0sq, s_idx[tr], y001[tr] ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        s2t0 = np.where(
            nt[:, None] >= 2, (y0sq[used] - y0t[used] ** 2 / nt[:, None]) / (nt[:, None] - 1), 0.0
        )
    # diagnostic only (the treated's Y(0) are unobserved): their own within-stratum spread
    se_orc = np.sqrt(np.sum((wu**2 / nt)[:, None] * s2t0 + (wu**2 / nc)[:, None] * var[used, 0], axis=0))
    se_pop = np.sqrt(
        np.sum((wu**2 / nt)[:, None] * var[used, 1] + (wu**2 / nc)[:, None] * var[used, 0], axis=0)
    )
    # Satterthwaite dof of Σ c_b s²_b with c_b = w_b²(1/nT + 1/nC), dof_b = nC − 1
    terms = (wu**2 * (1 / nt + 1 / nc))[:, None] * var[used, 0]
    dof = np.sum(terms, axis=0) ** 2 / np.sum(terms**2 / np.maximum(nc - 1, 1)[:, None], axis=0)
    # the same with a borrowed cell's dof the least its pool holds (MIN_DOF)
    dof10 = np.sum(terms, axis=0) ** 2 / np.sum(terms**2 / np.maximum(nc - 1, MIN_DOF)[:, None], axis=0)
    att01 = np.array([o.att for o in est.outcomes]) / (CAP - LO)
    # the shipped CI's ends in SE units about the estimate (Hall's skewness-corrected t
    # interval, shared/psm/skew.py): (att − upper·SE, att − lower·SE)
    ends = np.array([((o.att - o.ci[0]) / o.se, (o.att - o.ci[1]) / o.se) for o in est.outcomes])
    ses = {"shipped": se_sh, "own": se_own, "pop": se_pop, "y0_treated": se_orc}
    return att01, oracle, supp, ses, (dof, dof10, ends), int(tr.sum() - supp.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--layout", default="k5_1k")
    ap.add_argument("--dgp", default="strong_confounding")
    args = ap.parse_args()
    rec: dict = {}
    t0 = time.time()
    fixed_edges = None
    for seed in range(args.seeds):
        z, t, y, y0, lg = data(args.layout, args.dgp, seed)
        y01, y001 = _scaled(y), _scaled(y0)
        tr = t == 1
        truth_all = (y01[tr] - y001[tr]).mean(axis=0)
        beta = fit_propensity(z=z, t=t).beta
        edges = caliper_edges(beta=beta, sd=logit_sd(moments=cov_moments(z=z, t=t), beta=beta))
        att, oracle, supp, ses, dof, dropped = analyse(z, t, y01, y001, beta, edges, NAMES)
        truth_supp = (y01[supp] - y001[supp]).mean(axis=0)
        rec.setdefault("dropped", []).append(dropped)
        for k, o in enumerate(OUTCOMES):
            r = rec.setdefault(o.name, {"err": [], "err_supp": [], "oracle": [], "dof": [], "true_ps": []})
            r["err"].append(att[k] - truth_all[k])
            r["err_supp"].append(att[k] - truth_supp[k])
            r["oracle"].append(oracle[k])
            r["dof"].append(dof[0][k])
            r.setdefault("dof10", []).append(dof[1][k])
            r.setdefault("ends", []).append(dof[2][k])
            for name, se in ses.items():
                r.setdefault(name, []).append(se[k])
        # the true propensity as a one-column score, fixed edges (seed 0's 0.2 SD grid)
        zl = ((lg + 30) / 60)[:, None]
        b_true = np.array([-30.0, 60.0])
        if fixed_edges is None:
            w = 0.2 * lg.std(ddof=1)
            fixed_edges = np.concatenate(([-np.inf], np.arange(lg.min() + w, lg.max(), w), [np.inf]))
        att_t, _, supp_t, ses_t, _, _ = analyse(zl, t, y01, y001, b_true, fixed_edges, ["logit"])
        truth_t = (y01[supp_t] - y001[supp_t]).mean(axis=0)
        for k, o in enumerate(OUTCOMES):
            rec[o.name]["true_ps"].append((att_t[k] - truth_t[k], ses_t["shipped"][k]))
    print(
        f"{args.dgp} {args.layout} {args.seeds} seeds, {time.time() - t0:.0f} s; treated dropped per seed: "
        f"mean {np.mean(rec['dropped']):.1f}, max {max(rec['dropped'])}"
    )
    for o in OUTCOMES:
        r = {k: np.array(v) for k, v in rec[o.name].items()}
        e_all, e = r["err"], r["err_supp"]
        print(
            f"\n{o.name}: SD(err vs all treated) {e_all.std(ddof=1):.4g}, "
            f"SD(err vs supported) {e.std(ddof=1):.4g}, "
            f"mean bias {e.mean():.3g} ± {e.std(ddof=1) / np.sqrt(e.size):.2g}; "
            f"max|oracle − err_supp| {np.abs(r['oracle'] - e).max():.1e}"
        )
        for name in ("shipped", "own", "pop", "y0_treated"):
            se = r[name]
            for label, err in (("all", e_all), ("supp", e)):
                cov = int(np.sum(np.abs(err) <= Z95 * se))
                lo, hi = wilson_interval(cov, e.size)
                print(
                    f"  {name:8s} vs {label:4s}: SD/meanSE {err.std(ddof=1) / se.mean():.3f}  "
                    f"SD/rmsSE {err.std(ddof=1) / np.sqrt(np.mean(se**2)):.3f}  "
                    f"RMS(z) {np.sqrt(np.mean((err / se) ** 2)):.3f}  "
                    f"cover {cov / e.size:.1%} [{lo:.1%}, {hi:.1%}]"
                )
        rng = np.random.default_rng(0)
        boot = [
            e_all[i].std(ddof=1) / np.sqrt(np.mean(r["shipped"][i] ** 2))
            for i in (rng.integers(0, e.size, e.size) for _ in range(400))
        ]
        print(
            "  shipped SD/rmsSE bootstrap 95 % interval "
            f"[{np.quantile(boot, 0.025):.3f}, {np.quantile(boot, 0.975):.3f}]"
        )
        print(
            f"  corr(|err|, shipped SE) {np.corrcoef(np.abs(e_all), r['shipped'])[0, 1]:.2f}, "
            f"corr(err, SE) {np.corrcoef(e_all, r['shipped'])[0, 1]:.2f}, "
            f"skewness of err/SE {sst.skew(e_all / r['shipped']):.2f}, "
            f"CV of shipped SE {r['shipped'].std() / r['shipped'].mean():.2f}"
        )
        se = r["shipped"]
        print(
            f"  misses above the CI (estimate too high) {int(np.sum(e_all > Z95 * se))}, "
            f"below {int(np.sum(e_all < -Z95 * se))}"
        )
        q = sst.t.ppf(0.975, r["dof"])
        cov = int(np.sum(np.abs(e_all) <= q * r["shipped"]))
        lo, hi = wilson_interval(cov, e.size)
        print(
            f"  t_ref    vs all : dof median {np.median(r['dof']):.0f} (min {r['dof'].min():.0f})  "
            f"cover {cov / e.size:.1%} [{lo:.1%}, {hi:.1%}]"
        )
        up, low = r["ends"][:, 0], r["ends"][:, 1]
        covered = (e_all <= up * r["shipped"]) & (e_all >= low * r["shipped"])
        cov = int(np.sum(covered))
        lo, hi = wilson_interval(cov, e.size)
        print(
            f"  skew_t   vs all : the shipped CI (shared/psm/skew.py) cover {cov / e.size:.1%} "
            f"[{lo:.1%}, {hi:.1%}], misses above {int(np.sum(e_all > up * r['shipped']))}, "
            f"below {int(np.sum(e_all < low * r['shipped']))}, width ×{np.mean(up - low) / (2 * Z95):.3f}"
        )
        q = sst.t.ppf(0.975, r["dof10"])
        cov = int(np.sum(np.abs(e_all) <= q * r["shipped"]))
        lo, hi = wilson_interval(cov, e.size)
        print(
            f"  t_dof10  vs all : dof median {np.median(r['dof10']):.0f} (min {r['dof10'].min():.0f})  "
            f"cover {cov / e.size:.1%} [{lo:.1%}, {hi:.1%}]"
        )
        et, st = r["true_ps"][:, 0], r["true_ps"][:, 1]
        cov = int(np.sum(np.abs(et) <= Z95 * st))
        lo, hi = wilson_interval(cov, e.size)
        print(
            f"  true_ps  vs supp: SD/meanSE {et.std(ddof=1) / st.mean():.3f}  "
            f"RMS(z) {np.sqrt(np.mean((et / st) ** 2)):.3f}  "
            f"cover {cov / e.size:.1%} [{lo:.1%}, {hi:.1%}]"
        )


if __name__ == "__main__":
    main()
