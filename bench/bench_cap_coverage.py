"""Why a DP study with the large-loss cap round covers less at small sizes (issue #19).

Per seed of one layout (default ``k5_1k``, baseline process, SecAgg+, ε = 1) it runs the DP
study with its cap round (``privacy.large_loss_cap``) and, on the same data, separates the
candidate causes of undercoverage of the ATT *at the released caps*:

* **the cap's noise** — the same study at a fixed public cap (``--fixed-claims-cap``, default
  50,000, near the DP caps' median at 1k treated) instead of the DP one;
* **the table's noise and its SE** — the DP estimate minus the noise-free table at the DP
  study's own β and strata ("plug-in"), in DP SEs (mean ≈ 0 and SD ≈ 1 if the privacy SE is right);
* **the strata** — the plug-in's own error against the truth, and the exact study's converged
  β with ``--quantile-strata`` equal-treated strata (the DP study's kind of strata) against
  its caliper strata.

It prints coverage (Wilson 95 %), mean and SD of the error in SEs per variant and outcome, and
the mean error by released claims cap::

    .venv/bin/python bench/bench_cap_coverage.py --seeds 200        # ≈ 15 min on 2 loaded cores
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _coverage import wilson_interval  # noqa: E402
from _layouts import LAYOUTS, NAMES, build_nodes  # noqa: E402

from shared.dp.capround import outcomes_at_caps  # noqa: E402
from shared.dp.study_sim import run_dp_study  # noqa: E402
from shared.psm.reference import estimate_att_federated  # noqa: E402
from shared.psm.table import psm_table  # noqa: E402
from shared.study import Privacy  # noqa: E402
from shared.synth.outcomes import OUTCOMES  # noqa: E402

logging.getLogger("rehealth.coordinator").setLevel(logging.ERROR)


def plug_in(nodes, beta, edges, outcomes) -> np.ndarray:
    """The stratified ATT of the noise-free pooled table at ``beta`` and ``edges`` (outcome units)."""
    z = np.vstack([n.arrays.z for n in nodes])
    t = np.concatenate([n.arrays.t for n in nodes])
    y = np.vstack([n.arrays.y for n in nodes])
    tab = psm_table(z=z, t=t, y=y, beta=beta, edges=edges)
    c = tab.count
    ok = (c[:, 0] > 0) & (c[:, 1] > 0)
    m = tab.sum_y[ok] / c[ok][:, :, None]
    w = c[ok, 1] / c[ok, 1].sum()
    span = np.array([o.cap - o.lo for o in outcomes])
    return span * (w[:, None] * (m[:, 1] - m[:, 0])).sum(0)


def one_seed(seed: int, args) -> dict:
    layout = LAYOUTS[args.layout]
    base = tuple(OUTCOMES)
    nodes, _ = build_nodes(layout=layout, dgp="baseline", seed=seed, outcomes=base)
    rngs = [np.random.default_rng([seed, 19, i]) for i in range(len(nodes))]
    out: dict = {}
    dp = run_dp_study(
        sites=[n.arrays for n in nodes],
        outcomes=base,
        covariates=NAMES,
        privacy=Privacy(
            epsilon=args.epsilon, secure_aggregation=True, large_loss_cap=True, unresolved_fit="warn"
        ),
        rngs=rngs,
    )
    fixed = tuple(
        o.model_copy(update={"cap": args.fixed_claims_cap}) if o.name == "claims_cost" else o for o in base
    )
    for name, outs in (("dp cap", outcomes_at_caps(base, dp.caps)), ("fixed cap", fixed)):
        nd, truth = build_nodes(layout=layout, dgp="baseline", seed=seed, outcomes=outs)
        study = dp
        if name == "fixed cap":
            study = run_dp_study(
                sites=[n.arrays for n in nd],
                outcomes=outs,
                covariates=NAMES,
                privacy=Privacy(epsilon=args.epsilon, secure_aggregation=True, unresolved_fit="warn"),
                rngs=[np.random.default_rng([seed, 19, i]) for i in range(len(nd))],
            )
        plug = plug_in(nd, study.beta, study.edges, outs)
        raw = [(n.arrays.z, n.arrays.t, n.y_raw) for n in nd]
        caliper = estimate_att_federated(nodes=raw, outcomes=outs, covariates=NAMES).estimate
        quant = estimate_att_federated(
            nodes=raw, outcomes=outs, covariates=NAMES, strata="quantile", n_strata=args.quantile_strata
        ).estimate
        out[name] = {
            o.name: {
                "truth": truth[o.name],
                "cap": o.cap,
                "att": study.estimate.outcome(o.name).att,
                "se": study.estimate.outcome(o.name).se,
                "lo": study.estimate.outcome(o.name).ci[0],
                "hi": study.estimate.outcome(o.name).ci[1],
                "plug": float(plug[j]),
                "caliper": caliper.outcome(o.name).att,
                "caliper_se": caliper.outcome(o.name).se,
                "quantile": quant.outcome(o.name).att,
            }
            for j, o in enumerate(outs)
        }
    return out


def summarise(results: list[dict]) -> None:
    for variant in ("dp cap", "fixed cap"):
        print(f"\n== {variant}")
        for o in OUTCOMES:
            d = [r[variant][o.name] for r in results]
            g = {k: np.array([x[k] for x in d]) for k in d[0]}
            covered = int(((g["lo"] <= g["truth"]) & (g["truth"] <= g["hi"])).sum())
            lo, hi = wilson_interval(covered, len(d))
            se = g["se"].mean()
            err = (g["att"] - g["truth"]) / g["se"]
            noise = (g["att"] - g["plug"]) / g["se"]
            print(
                f"  {o.name:13s} coverage {100 * covered / len(d):5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
                f" | error/SE mean {err.mean():+.2f} SD {err.std():.2f}"
                f" | (DP − plug-in)/SE mean {noise.mean():+.2f} SD {noise.std():.2f}"
                f" | plug-in bias/SE {np.mean(g['plug'] - g['truth']) / se:+.2f}"
                f" | exact β, quantile strata bias/SE {np.mean(g['quantile'] - g['truth']) / se:+.2f}"
                f" | caliper bias/exact SE {np.mean(g['caliper'] - g['truth']) / g['caliper_se'].mean():+.2f}"
            )
    d = [r["dp cap"]["claims_cost"] for r in results]
    caps = np.array([x["cap"] for x in d])
    err = np.array([(x["att"] - x["truth"]) / x["se"] for x in d])
    print("\nclaims, DP cap: mean error/SE by released cap")
    for c in sorted(set(caps)):
        m = caps == c
        print(f"  cap {c:9.0f}: {m.sum():3d} seeds, mean {err[m].mean():+.2f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=200)
    p.add_argument("--layout", default="k5_1k", choices=sorted(LAYOUTS))
    p.add_argument("--epsilon", type=float, default=1.0)
    p.add_argument("--fixed-claims-cap", type=float, default=50_000.0)
    p.add_argument("--quantile-strata", type=int, default=7)
    p.add_argument("--json", type=Path, help="keep every seed's figures here (written as it goes)")
    p.add_argument("--from-json", type=Path, help="only summarise the seeds a --json run kept")
    args = p.parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        summarise(results)
        print(f"\n{len(results)} seeds from {args.from_json}")
        return
    t0, results = time.time(), []
    for seed in range(args.seeds):
        results.append(one_seed(seed, args))
        if (seed + 1) % 10 == 0:
            print(f"  {seed + 1}/{args.seeds} seeds, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
            if args.json:
                args.json.write_text(json.dumps(results))
    summarise(results)
    print(f"\n{args.seeds} seeds, {args.layout}, ε = {args.epsilon:g}, SecAgg+; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
