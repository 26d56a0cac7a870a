"""Where the misspecified process's absence-days bias comes from: oracle decompositions on pooled rows.

For each seed of layout k5_1k under a process (default ``misspecified``) the pooled rows are
stratified on different scores, and the DR outcome model given different columns, each run
through the study's own estimators (caliper strata 0.2 SD, :func:`shared.psm.estimate_att`,
:func:`shared.psm.dr.estimate_dr`):

* ``lin``: the study's linear score, linear outcome model (what the benchmark measured);
* ``ps_true``: strata on the TRUE propensity (the generator's, site and department included);
* ``ps+trueterms``: the linear score plus the generating terms (age², BMI·smoker, SBP·age);
* ``ps+squares``: plus the squares of every non-binary covariate (``[terms] squares``);
* ``lin|out+retired`` / ``lin|out+m0``: the linear score, the outcome model given a retired
  indicator (not a covariate) or the true ``E[Y(0) | x]`` of absence days.

It also prints the share of retired people among treated and controls. Findings in
docs/STATISTICS.md ("Derived covariate terms"). Uses the generator's internals (the true
propensity and job type are not columns of a cohort)::

    PYTHONPATH=$PWD nice .venv/bin/python bench/bench_misspec_decompose.py misspecified 40
"""

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from _layouts import LAYOUTS, NAMES, node_sizes

from shared.features import FEATURES, scale
from shared.psm import caliper_edges, cov_moments, estimate_att, fit_propensity, logit_sd, scale_outcomes
from shared.psm.dr import dr_stats, estimate_dr
from shared.synth.dgp import dgp as get_dgp
from shared.synth.federation import _simulate, _site_rng, _truth
from shared.synth.outcomes import OUTCOMES
from shared.synth.sites import PROFILES_BY_NAME, RETIRED

DGP = sys.argv[1] if len(sys.argv) > 1 else "misspecified"
NS = int(sys.argv[2]) if len(sys.argv) > 2 else 30
lay = LAYOUTS["k5_1k"]
proc = get_dgp(DGP)
sizes = node_sizes(lay, DGP)
AI = NAMES.index("age")
BI = NAMES.index("bmi")
SI = NAMES.index("smoker")
PI = NAMES.index("sbp")


def data(seed):
    sims = []
    for i, (p, n) in enumerate(zip(lay.profiles, sizes)):
        prof = PROFILES_BY_NAME[p]
        s = seed * 1000 + i
        sims.append(_simulate(_site_rng(s, prof), prof, n, proc, _site_rng(s, prof, (1,))))
    truth = _truth(sims)["att_capped"]
    F = {k: np.concatenate([s.population.features[k] for s in sims]) for k in NAMES}
    X = np.column_stack([F[k] for k in NAMES]).astype(float)
    z = scale(X, FEATURES)
    t = np.concatenate([s.treated for s in sims]).astype(float)
    pi = np.concatenate([s.propensity for s in sims])
    retired = np.concatenate([s.population.job_type == RETIRED for s in sims]).astype(float)
    y = np.column_stack(
        [np.concatenate([s.potential.observed(s.treated)[o.name] for s in sims]) for o in OUTCOMES]
    ).astype(float)
    y0 = np.column_stack([np.concatenate([s.potential.y0[o.name] for s in sims]) for o in OUTCOMES]).astype(
        float
    )
    p0 = np.concatenate([s.p0 for s in sims])
    return z, t, y, y0, pi, retired, p0, truth


def run(z, t, y01, zo=None):
    """strat + DR; strata from a PS on z, DR slope on zo (default z)"""
    beta = fit_propensity(z=z, t=t).beta
    edges = caliper_edges(beta=beta, sd=logit_sd(moments=cov_moments(z=z, t=t), beta=beta))
    if zo is None:
        zo = z
    # DR on zo: strata come from beta on z; build stats with zo by mapping via scores
    from shared.psm.strata import logit_scores

    s = logit_scores(z=z, beta=beta)
    # encode score into zo-stats: psm_table uses beta on z -> emulate with first column trick
    lo, hi = s.min() - 1e-9, s.max() + 1e-9
    sc = (s - lo) / (hi - lo)
    zz = np.column_stack([sc, zo])
    b2 = np.zeros(zz.shape[1] + 1)
    b2[0] = lo
    b2[1] = hi - lo
    stats = dr_stats(z=zz, t=t, y=y01, beta=b2, edges=edges)
    names = ["score"] + [f"c{i}" for i in range(zo.shape[1])]
    st = estimate_att(table=stats.table, outcomes=OUTCOMES, covariates=names).outcomes
    dr = estimate_dr(stats=stats, outcomes=OUTCOMES)
    return st, dr


def sq(v):
    return v * v


res: dict = {}
t0 = time.time()
for seed in range(NS):
    z, t, y, y0, pi, retired, p0, truth = data(seed)
    y01, _ = scale_outcomes(y=y, lo=[o.lo for o in OUTCOMES], cap=[o.cap for o in OUTCOMES])
    a, b, sm, sb = z[:, AI], z[:, BI], z[:, SI], z[:, PI]
    true_terms = np.column_stack([sq(a - a.mean()), b * sm, sb * a])
    squares = np.column_stack([sq(z[:, j]) for j in range(z.shape[1]) if len(np.unique(z[:, j])) > 2])
    lg = np.log(pi / (1 - pi))
    lgs = ((lg - lg.min()) / (lg.max() - lg.min()))[:, None]
    ret = retired[:, None]
    m0 = (1 - retired) * (9 * (p0 / 0.03) ** 0.35 + 28 * p0)
    m0s = (m0 / m0.max())[:, None]

    def norm(x):
        x = x - x.min(0)
        return x / np.maximum(x.max(0), 1e-12)

    cases = {
        "lin": (z, None),
        "ps_true": (lgs, z),
        "ps+trueterms": (np.column_stack([z, norm(true_terms)]), None),
        "ps+squares": (np.column_stack([z, norm(squares)]), None),
        "lin|out+retired": (z, np.column_stack([z, ret])),
        "lin|out+m0": (z, np.column_stack([z, m0s])),
    }
    for k, (zp, zo) in cases.items():
        st, dr = run(zp, t, y01, zo)
        for oi, o in enumerate(OUTCOMES):
            for nm, e in (("strat", st[oi]), ("dr", dr[oi])):
                err = e.att - truth[o.name]
                res.setdefault((k, nm, o.name), []).append((err, e.ci[0] <= truth[o.name] <= e.ci[1]))
    # imbalance of retired share: treated vs control
    res.setdefault(("retired", "T", "share"), []).append((retired[t == 1].mean(), 0))
    res.setdefault(("retired", "C", "share"), []).append((retired[t == 0].mean(), 0))
print(DGP, NS, "seeds", f"{time.time() - t0:.0f}s")
for k, v in res.items():
    e = np.array([x[0] for x in v])
    c = np.mean([x[1] for x in v])
    mc = e.std(ddof=1) / np.sqrt(len(e))
    print(f"{k[0]:24s} {k[1]:6s} {k[2]:13s} bias {e.mean():10.4g} ± {mc:.2g}  cov {c:.1%}")
