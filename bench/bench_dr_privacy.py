"""Which estimator should a DP study default to? DR vs stratified on issue #19's cells (#21 item 1).

Per setting (a node layout of :mod:`_layouts` at its ε, with and without the large-loss cap
round ``privacy.large_loss_cap``) and seed, one federation (baseline process) runs the exact
study and each DP noise mode twice, ``estimator = "stratified"`` and ``"dr"``
(:func:`_grid.run_seed` with ``Cell.estimators``: the shipped study driver and node code,
seeded noise). Both DP studies of a seed draw their noise from the same generators, and their
plans give describe, the fit and the cap round the same σ, so they share the noisy fit, strata
and caps: the comparison is paired.

Printed (and with ``--write`` written to docs/benchmarks/dr_privacy.md and the README's
``dr_privacy`` block), per setting, noise mode, estimator and outcome: coverage of the true
(capped, sample) ATT with its Wilson 95 % interval, bias (outcome units and over the mean SE),
CI width ÷ the exact study's on the same data and ÷ the limit (shared/dp/limit.py), medians
over seeds; then per DP row the paired comparison the default is chosen by: DR's CI width ÷
stratified's (median of the per-seed ratio), |DR bias| − |strat bias| with the paired Monte-Carlo
SE, and whether DR is at least as good there (bias not larger by more than 2 paired MC SEs,
coverage in 93–97 % or no further from it than stratified's, width at most
:data:`WIDTH_TOLERANCE` × stratified's).

    .venv/bin/python bench/bench_dr_privacy.py --seeds 10 --jobs 1         # a quick look
    nice .venv/bin/python bench/bench_dr_privacy.py --seeds 400 --jobs 2 --write
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _coverage import map_seeds  # noqa: E402
from _grid import Cell, run_seed, summarise_cell  # noqa: E402
from _grid_cli import _init_worker  # noqa: E402
from _table import Table, write_readme_block, write_tables  # noqa: E402

from shared.dp.capquantile import CAP_QUANTILE  # noqa: E402
from shared.synth.outcomes import OUTCOMES  # noqa: E402

#: (layout, ε, DP noise modes): issue #19's cells — 10k treated over five nodes with and
#: without secure aggregation at ε = 1, 1k over five with it at ε = 1 (where the stratified
#: CV event under-covers), 900 over 20 companies with it at ε = 2
SETTINGS: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    ("k5_10k", 1.0, ("local", "secagg")),
    ("k5_1k", 1.0, ("secagg",)),
    ("k20_900", 2.0, ("secagg",)),
)
ESTIMATORS = ("stratified", "dr")
COVERAGE_BAND = (0.93, 0.97)
#: "not materially wider": DR's median CI width at most this many times stratified's
WIDTH_TOLERANCE = 1.10
_ORDER = tuple(o.name for o in OUTCOMES)


def run_setting(layout: str, epsilon: float, modes: tuple[str, ...], cap: bool, seeds, jobs: int):
    cell = Cell(
        dgp="baseline",
        layout=layout,
        epsilon=epsilon,
        modes=("exact", *modes),
        outcomes=tuple(OUTCOMES),
        cap_quantile=CAP_QUANTILE if cap else None,
        estimators=ESTIMATORS,
    )
    t0 = time.time()
    results = map_seeds(partial(run_seed, cell), list(seeds), workers=jobs, chunksize=4)
    rows = summarise_cell(cell, results)
    for r in rows:
        r["cap_round"] = cap
    return cell, results, rows, time.time() - t0


def paired(cell: Cell, results, mode: str, outcome: str, rows) -> dict:
    """DR against stratified on the seeds where both gave an estimate."""
    a, b = f"{mode} stratified", f"{mode} dr"
    both = [r for r in results if "outcomes" in r["modes"][a] and "outcomes" in r["modes"][b]]

    def err(label):
        return np.array(
            [
                m["outcomes"][outcome]["att"] - m.get("truth", r["truth"])[outcome]
                for r in both
                for m in [r["modes"][label]]
            ]
        )

    def width(label):
        return np.array([m["hi"] - m["lo"] for r in both for m in [r["modes"][label]["outcomes"][outcome]]])

    e_s, e_d = err(a), err(b)
    diff = e_d - e_s
    paired_se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
    bias_gap = float(abs(e_d.mean()) - abs(e_s.mean()))
    row = {r["mode"]: r for r in rows if r["outcome"] == outcome}
    cov_s, cov_d = row[a]["coverage"], row[b]["coverage"]
    width_ratio = float(np.median(width(b) / width(a)))
    lo, hi = COVERAGE_BAND

    def miss(c):  # how far a coverage lies outside the band
        return max(lo - c, c - hi, 0.0)

    verdict = {
        "bias": bias_gap <= 2 * paired_se,
        "coverage": miss(cov_d) <= miss(cov_s) or lo <= cov_d <= hi,
        "width": width_ratio <= WIDTH_TOLERANCE,
    }
    return {
        "layout": cell.layout,
        "epsilon": cell.epsilon,
        "mode": mode,
        "outcome": outcome,
        "seeds": len(both),
        "cov_strat": cov_s,
        "cov_dr": cov_d,
        "width_ratio": width_ratio,
        "bias_gap": bias_gap,
        "paired_se": paired_se,
        "verdict": verdict,
        "dr_as_good": all(verdict.values()),
    }


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x, fmt=".2f") -> str:
    return "—" if x is None else format(x, fmt)


ROW_COLUMNS = (
    "layout",
    "ε",
    "cap round",
    "noise",
    "outcome",
    "seeds",
    "coverage",
    "Wilson 95 %",
    "bias",
    "bias/SE",
    "width ÷ exact",
    "width ÷ limit",
)


def row_cells(r: dict) -> tuple:
    lo, hi = r["wilson"]
    exact = r["mode"] == "exact"
    return (
        r["layout"],
        "—" if r["epsilon"] is None else f"{r['epsilon']:g}",
        "on" if r["cap_round"] else "off",
        r["mode"],
        r["outcome"],
        r["n"],
        _pct(r["coverage"]),
        f"[{100 * lo:.1f}, {100 * hi:.1f}]",
        _num(r["bias"], ".4g"),
        _num(r["bias_in_se"]),
        "1.00 (ref)" if exact else _num(r["width_by_exact"]),
        "—" if exact else _num(r["width_by_limit"]),
    )


PAIR_COLUMNS = (
    "layout",
    "ε",
    "cap round",
    "noise",
    "outcome",
    "coverage strat → DR",
    "DR width ÷ strat width",
    "|DR bias| − |strat bias| (± paired MC SE)",
    "DR at least as good",
)


def pair_cells(p: dict) -> tuple:
    failed = [k for k, ok in p["verdict"].items() if not ok]
    return (
        p["layout"],
        f"{p['epsilon']:g}",
        "on" if p["cap_round"] else "off",
        p["mode"],
        p["outcome"],
        f"{_pct(p['cov_strat'])} → {_pct(p['cov_dr'])}",
        f"{p['width_ratio']:.2f}",
        f"{p['bias_gap']:.3g} (± {p['paired_se']:.2g})",
        "yes" if p["dr_as_good"] else "no (" + ", ".join(failed) + ")",
    )


def verdict(pairs: list[dict]) -> str:
    good = [p for p in pairs if p["dr_as_good"]]
    ratios = np.array([p["width_ratio"] for p in pairs])
    lo, hi = COVERAGE_BAND
    in_band = sum(lo <= p["cov_dr"] <= hi for p in pairs)
    biased = sum(not p["verdict"]["bias"] for p in pairs)
    how = (
        "A DP DR study releases its ATT by weighted sums as the stratified one does (psm_wsum), "
        "the imbalance as the covariates' weighted sums (dr_dsum) and the slope (dr_slope), each "
        "of the four (counts too) at 22.5 % of psm_stats where stratification gives the counts and "
        "psm_wsum 45 % each (shared/dp/plan.py)."
    )
    said = (
        f"DR's coverage is in {lo:.0%}–{hi:.0%} on {in_band} of {len(pairs)} DP rows; its bias is "
        f"larger than stratification's by more than 2 paired MC SEs on {biased}; DR ÷ stratified "
        f"CI width, median per seed: {ratios.min():.2f}–{ratios.max():.2f}. {how}"
    )
    if len(good) == len(pairs):
        return (
            f"DR is at least as good as stratification on all {len(pairs)} DP rows: "
            f"DP studies can default to the doubly robust estimator. {said}"
        )
    wider = sum(not p["verdict"]["width"] for p in pairs)
    return (
        f"**DR is at least as good on {len(good)} of {len(pairs)} DP rows.** Its CI is wider than "
        f"stratification's by more than {WIDTH_TOLERANCE:g}× on {wider} rows. {said} The DP "
        'default stays `estimator = "stratified"` unless the lead decides otherwise; DR remains a '
        "choice a spec states."
    )


def _readme(rows: list[dict], said: str) -> str:
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["mode"] == "exact":
            continue
        groups.setdefault((r["layout"], r["epsilon"], r["cap_round"], r["mode"]), {})[r["outcome"]] = r

    def three(g, key, fmt):
        return " / ".join(fmt(g[o].get(key)) if o in g else "—" for o in _ORDER)

    lines = [
        "δ = 1e-6; claims / CV event / absence days; both estimators on the same seeds and noisy "
        "fit. Written by `bench/bench_dr_privacy.py --write` (full table, paired comparison, "
        "command and commit: [docs/benchmarks/dr_privacy.md](docs/benchmarks/dr_privacy.md)).",
        "",
        "| federation | ε | cap round | noise | seeds | CI width ÷ exact | ÷ limit | coverage % | bias/SE |",
        "|:--|:--|:--|:--|:--|:--|:--|:--|:--|",
    ]
    for (layout, eps, cap, mode), g in groups.items():
        lines.append(
            f"| {layout} | {eps:g} | {'on' if cap else 'off'} | {mode} | {next(iter(g.values()))['n']} "
            f"| {three(g, 'width_by_exact', _num)} | {three(g, 'width_by_limit', _num)} "
            f"| {three(g, 'coverage', lambda x: '—' if x is None else f'{100 * x:.1f}')} "
            f"| {three(g, 'bias_in_se', _num)} |"
        )
    return "\n".join(lines + ["", said])


def write(rows: list[dict], pairs: list[dict], walls: list[dict]) -> None:
    """docs/benchmarks/dr_privacy.md and the README's ``dr_privacy`` block, from what ran."""
    setting = (
        "baseline process, seeds from 0; δ = 1e-6, the study's default split and rounds; cap round "
        f"at the DP {CAP_QUANTILE:g} quantile when on; per setting: "
        + "; ".join(
            f"{w['layout']} ε = {w['epsilon']:g} cap {'on' if w['cap_round'] else 'off'}: "
            f"{w['seeds']} seeds, {w['wall']:.0f} s ({w['jobs']} worker(s))"
            for w in walls
        )
    )
    if min(w["seeds"] for w in walls) < 200:
        setting += ". **Fewer than 200 seeds somewhere: that shows the shape, not calibration.**"
    said = verdict(pairs)
    write_tables(
        "dr_privacy",
        title="DP studies: doubly robust vs stratified on issue #19's cells",
        tables=[
            Table(
                title="Coverage, bias and CI width per estimator",
                columns=ROW_COLUMNS,
                rows=[row_cells(r) for r in rows],
                align="llllllrrrrrr",
                note='noise `secagg dr` = SecAgg+ with estimator = "dr", and so on. Coverage of '
                "the true (capped, sample) ATT; Wilson 95 %: the coverage's binomial interval. "
                "bias/SE: mean error over mean SE. Width ratios: medians over seeds of the CI width "
                "÷ the exact (stratified, caliper) study's on the same data, and ÷ the limit (one "
                "Gaussian release of the ATT at the same (ε, δ) for the study's weights).",
            ),
            Table(
                title="Paired: is DR at least as good as stratification?",
                columns=PAIR_COLUMNS,
                rows=[pair_cells(p) for p in pairs],
                align="lllllllll",
                note=f"At least as good: |DR bias| not above |strat bias| by more than 2 paired MC "
                f"SEs (bias), DR coverage in {COVERAGE_BAND[0]:.0%}–{COVERAGE_BAND[1]:.0%} or no "
                f"further outside than stratified's (coverage), median per-seed DR ÷ stratified CI "
                f"width ≤ {WIDTH_TOLERANCE:g} (width).",
            ),
        ],
        setting=setting,
        notes=said,
    )
    write_readme_block("dr_privacy", _readme(rows, said))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=400)
    p.add_argument("--jobs", type=int, default=1, help="worker processes over seeds (at most 2)")
    p.add_argument(
        "--layouts", default=",".join(s[0] for s in SETTINGS), help="comma list of the settings' layouts"
    )
    p.add_argument("--cap", choices=("both", "off", "on"), default="both", help="the large-loss cap round")
    p.add_argument("--json", type=Path, help="keep the rows and paired comparisons here (after each setting)")
    p.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="run nothing: merge the settings these --json files kept (in order) and print/write them",
    )
    p.add_argument(
        "--write", action="store_true", help="write docs/benchmarks/dr_privacy.md and the README block"
    )
    args = p.parse_args(argv)
    rows: list[dict] = []
    pairs: list[dict] = []
    walls: list[dict] = []
    if args.from_json:
        for f in args.from_json:
            kept = json.loads(f.read_text())
            rows += kept["rows"]
            pairs += kept["pairs"]
            walls += kept["walls"]
        print(verdict(pairs))
        if args.write:
            write(rows, pairs, walls)
        return
    _init_worker()
    jobs = max(1, min(args.jobs, 2))
    picked = [s for s in SETTINGS if s[0] in args.layouts.split(",")]
    caps = {"both": (False, True), "off": (False,), "on": (True,)}[args.cap]
    t_all = time.time()
    for layout, eps, modes in picked:
        for cap in caps:
            cell, results, cell_rows, wall = run_setting(layout, eps, modes, cap, range(args.seeds), jobs)
            rows += cell_rows
            walls.append(
                {
                    "layout": layout,
                    "epsilon": eps,
                    "cap_round": cap,
                    "seeds": args.seeds,
                    "wall": wall,
                    "jobs": jobs,
                }
            )
            head = f"{layout}, ε = {eps:g}, cap round {'on' if cap else 'off'}"
            print(f"\n== {head}: {args.seeds} seeds, {wall:.0f} s")
            for r in cell_rows:
                print("  " + " | ".join(str(c) for c in row_cells(r)[3:]), flush=True)
            for mode in modes:
                for o in _ORDER:
                    pr = {**paired(cell, results, mode, o, cell_rows), "cap_round": cap}
                    pairs.append(pr)
                    print("  paired: " + " | ".join(str(c) for c in pair_cells(pr)[3:]), flush=True)
            if args.json:
                args.json.write_text(json.dumps({"rows": rows, "pairs": pairs, "walls": walls}, default=str))
    print(f"\n{verdict(pairs)}\n\ntotal {time.time() - t_all:.0f} s with {jobs} worker(s)")
    if args.write:
        write(rows, pairs, walls)


if __name__ == "__main__":
    main()
