"""Where the DP DR estimate's privacy SE is off: its parts against the noise they describe.

For a few data sets (seeds of one benchmark cell, :mod:`bench_dr`), the exact DR statistics on
the DP design's strata are released many times with the study plan's noise
(:func:`bench_dr.dp_plan_sigmas`), and for each release the DR estimate and its privacy-SE
bootstrap (:func:`shared.psm.dr.redraw_dr_se`) are computed. Printed per outcome, each as a
ratio to the empirical SD of the estimates over the releases (1 = right):

* ``cells``: the SD when only the cells' noise (counts, Σy, Σy², Σz) is drawn, vs the
  bootstrap's :math:`\\sqrt{V_c}`;
* ``slope``: the same for the slope release, vs :math:`\\sqrt{V_s}`;
* ``both``: both noises, vs the privacy SE the estimate reports.

    .venv/bin/python bench/bench_dr_noise.py --seeds 3 --releases 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests" / "unit")]

from bench_dr import _cell_setup, _design, _dp_edges, dp_plan_sigmas  # noqa: E402

from shared.dp.strata import dp_min_cell  # noqa: E402
from shared.psm import scale_outcomes  # noqa: E402
from shared.psm.dr import _estimate_release, _noisy, _release_from_centred, _split, dr_stats  # noqa: E402


def one_dataset(layout, dgp, seed, epsilon, n_releases, n_draws):
    make, outcomes, _ = _cell_setup(layout, dgp)
    z, t, y_raw, _truth = make(seed)
    y01, _ = scale_outcomes(y=y_raw, lo=[o.lo for o in outcomes], cap=[o.cap for o in outcomes])
    beta, _ = _design(z, t)
    sig_cells, sig_slope = dp_plan_sigmas(epsilon, z.shape[1], len(outcomes))
    stats = dr_stats(z=z, t=t, y=y01, beta=beta, edges=_dp_edges(z, t, beta, sig_cells["count"]))
    cells, slope = _split(stats)
    edges = stats.table.edges
    mc = dp_min_cell(count_sigma=sig_cells["count"])
    rng = np.random.default_rng(seed + 7)

    def att(c, s):
        r = _release_from_centred(c, s, edges, sig_cells, sig_slope)
        return np.array([e.att for e in _estimate_release(r, outcomes, mc)])

    from shared.psm.dr import redraw_dr_se

    f_c, f_s, f_cs, se_c, se_s, se_cs = [], [], [], [], [], []
    for _ in range(n_releases):
        nc, ns = _noisy(cells, sig_cells, rng), _noisy(slope, sig_slope, rng)
        f_c.append(att(nc, slope))
        f_s.append(att(cells, ns))
        f_cs.append(att(nc, ns))
        rel = _release_from_centred(nc, ns, edges, sig_cells, sig_slope)
        parts = redraw_dr_se(rel, outcomes=outcomes, min_cell=mc, n_draws=n_draws, rng=rng, parts=True)
        se_c.append(parts[0])
        se_s.append(parts[1])
        se_cs.append(parts[3])
    sd = [np.std(np.stack(f), axis=0, ddof=1) for f in (f_c, f_s, f_cs)]
    rms = [np.sqrt(np.mean(np.stack(v) ** 2, axis=0)) for v in (se_c, se_s, se_cs)]
    return outcomes, sd, rms


def across_seeds(layout, dgp, seeds, epsilon, n_draws):
    """Per outcome, over data sets (one release each): the DP estimate's sampling SE against
    the SD of the exact DR estimate's error, its privacy SE against the SD of (DP − exact), and
    its SE against the SD of the DP estimate's error (RMS of the SEs ÷ the SD)."""
    from shared.psm.dr import estimate_dr, estimate_dr_release, release_dr

    make, outcomes, _ = _cell_setup(layout, dgp)
    rows = []
    for seed in seeds:
        z, t, y_raw, truth = make(seed)
        y01, _ = scale_outcomes(y=y_raw, lo=[o.lo for o in outcomes], cap=[o.cap for o in outcomes])
        beta, _ = _design(z, t)
        sig_cells, sig_slope = dp_plan_sigmas(epsilon, z.shape[1], len(outcomes))
        stats = dr_stats(z=z, t=t, y=y01, beta=beta, edges=_dp_edges(z, t, beta, sig_cells["count"]))
        exact = estimate_dr(
            stats=stats, outcomes=outcomes, min_cell=dp_min_cell(count_sigma=sig_cells["count"])
        )
        rng = np.random.default_rng(10_000_000 + seed)
        rel = release_dr(stats, sigma_cells=sig_cells, sigma_slope=sig_slope, rng=rng)
        dp = estimate_dr_release(
            rel,
            outcomes=outcomes,
            min_cell=dp_min_cell(count_sigma=sig_cells["count"]),
            n_draws=n_draws,
            rng=rng,
        )
        from shared.psm.dr import redraw_dr_se

        vc, vs, vcs, _ = redraw_dr_se(
            rel,
            outcomes=outcomes,
            min_cell=dp_min_cell(count_sigma=sig_cells["count"]),
            n_draws=n_draws,
            rng=rng,
            parts=True,
        )
        rows.append(
            [
                (
                    e.att - truth[o.name],
                    d.att - e.att,
                    d.att - truth[o.name],
                    d.se_sampling,
                    d.se_privacy,
                    d.se,
                    e.se,
                    vc[k],
                    vs[k],
                    vcs[k],
                )
                for k, (o, e, d) in enumerate(zip(outcomes, exact, dp))
            ]
        )
    a = np.array(rows)  # (seeds, outcomes, 7)
    for k, o in enumerate(outcomes):
        sd = a[:, k, :3].std(axis=0, ddof=1)
        rms = np.sqrt(np.mean(a[:, k, 3:] ** 2, axis=0))
        print(
            f"  {o.name:>13}: sampling {rms[0] / sd[0]:.2f} (exact SE {rms[3] / sd[0]:.2f}, SD {sd[0]:.4g})  "
            f"privacy {rms[1] / sd[1]:.2f} (SD {sd[1]:.4g})  total {rms[2] / sd[2]:.2f} (SD {sd[2]:.4g})",
            flush=True,
        )
        vc, vs, vcs = a[:, k, 7] ** 2, a[:, k, 8] ** 2, a[:, k, 9] ** 2
        cands = {
            "V_c": vc,
            "V_s": vs,
            "V_cs": vcs,
            "V_c+V_s": vc + vs,
            "2V_c+2V_s-V_cs": 2 * vc + 2 * vs - vcs,
            "floor max(V_c,V_s)": np.maximum(2 * vc + 2 * vs - vcs, np.maximum(vc, vs)),
            "floor min(V_c,V_s)": np.maximum(2 * vc + 2 * vs - vcs, np.minimum(vc, vs)),
            "floor mean": np.maximum(2 * vc + 2 * vs - vcs, (vc + vs) / 2),
        }
        print(
            "      privacy SE candidates ÷ SD: "
            + "  ".join(f"{n} {np.sqrt(np.mean(np.clip(v, 0, None))) / sd[1]:.2f}" for n, v in cands.items()),
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layout", default="k5_1k")
    ap.add_argument("--dgp", default="misspecified")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--releases", type=int, default=100)
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--across", action="store_true", help="one release per data set, over --seeds")
    args = ap.parse_args()
    if args.across:
        print(f"{args.layout}/{args.dgp}, ε = {args.epsilon:g}, {args.seeds} data sets: RMS SE ÷ SD")
        across_seeds(args.layout, args.dgp, range(args.seeds), args.epsilon, args.draws)
        return
    print(f"{args.layout}/{args.dgp}, ε = {args.epsilon:g}: bootstrap SE ÷ empirical SD over releases")
    for seed in range(args.seeds):
        outcomes, sd, rms = one_dataset(args.layout, args.dgp, seed, args.epsilon, args.releases, args.draws)
        for k, o in enumerate(outcomes):
            said = "  ".join(
                f"{name} {r[k] / s[k]:.2f} (SD {s[k]:.4g})"
                for name, s, r in zip(("cells", "slope", "both"), sd, rms)
            )
            print(f"  seed {seed} {o.name:>13}: {said}", flush=True)


if __name__ == "__main__":
    main()
