"""Switches for measuring issue #19's levers one at a time (``bench_privacy.py --weight-bound
off --centres half``): each turns one shipped default back to what it was before, so the
benchmark can show how far that lever moved the CI width (÷ exact, ÷ limit) and coverage.

They set module attributes of the shipped code before any study runs (the grid's worker
processes are forked after, so they inherit them); the defaults are the shipped behaviour.
"""

from __future__ import annotations

import argparse

from shared.dp import weightbound, workflow
from shared.dp.capquantile import CAP_QUANTILE

__all__ = ["add_lever_arguments", "apply_levers", "lever_label"]


def add_lever_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("levers (issue #19; defaults = shipped)")
    g.add_argument(
        "--weight-bound",
        default="off",
        help="largest control weight relative to a treated person before strata are merged "
        "(shared/dp/weightbound.py; 'off', the shipped default: no such rule)",
    )
    g.add_argument(
        "--min-controls",
        default="10",
        help="merge strata until each holds this many SDs of count noise in noisy controls "
        "(shipped 10; 'off' = the behaviour before)",
    )
    g.add_argument(
        "--centres",
        choices=("grid", "half"),
        default="grid",
        help="psm_wsum centres: reach chosen on the grid by predicted variance (shipped) or "
        "fixed at half the largest weight (before)",
    )
    g.add_argument(
        "--levers",
        action="store_true",
        help="run the lever comparison (CONFIGS) on the first --dgps × --layouts cell instead "
        "(with --write: docs/benchmarks/privacy_levers.md)",
    )
    g.add_argument(
        "--lever-configs",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=(),
        help="--levers: which configurations, by index into CONFIGS (default all)",
    )
    g.add_argument(
        "--cap-quantile",
        type=_quantile,
        default=None,
        help="--grid: lower each continuous outcome's cap to a DP quantile at this level first "
        f"(shared/dp/capquantile.py, fixed level {CAP_QUANTILE}; its share of ρ comes out of "
        "the study's ε); 'off' or absent keeps the spec's caps",
    )


def _quantile(text: str) -> float | None:
    if text == "off":
        return None
    q = float(text)
    if not 0.5 < q < 1.0:
        raise argparse.ArgumentTypeError(f"a cap quantile lies in (0.5, 1), got {q!r}")
    return q


def apply_levers(args: argparse.Namespace) -> None:
    weightbound.MAX_CONTROL_WEIGHT = None if args.weight_bound == "off" else float(args.weight_bound)
    weightbound.MIN_CONTROL_SIGMAS = None if args.min_controls == "off" else float(args.min_controls)
    workflow.REACH_GRID = (0.5,) if args.centres == "half" else workflow.REACH_GRID


def lever_label(args: argparse.Namespace) -> str:
    """The levers' settings as the written table's setting line states them."""
    cap = "spec caps" if args.cap_quantile is None else f"caps from a DP {args.cap_quantile:g} quantile"
    return (
        f"weight bound {args.weight_bound}, min controls {args.min_controls}σ, centres {args.centres}, {cap}"
    )


#: The lever settings ``--levers`` compares, in order: what main shipped before, each lever
#: alone, the shipped default, and the default with a DP-quantile cap.
CONFIGS: tuple[tuple[str, str, str, str, float | None], ...] = (
    ("before (no merging, centres at ½ v_max)", "off", "off", "half", None),
    ("centres by predicted variance", "off", "off", "grid", None),
    ("merge to ≥ 10σ controls", "off", "10", "half", None),
    ("merge to weight ≤ 1 (rejected)", "1", "off", "half", None),
    ("shipped: ≥ 10σ controls + centres", "off", "10", "grid", None),
    (f"shipped + DP {CAP_QUANTILE} cap", "off", "10", "grid", CAP_QUANTILE),
)


def run_levers(args: argparse.Namespace) -> list[dict]:
    """Every lever setting of :data:`CONFIGS` (``--lever-configs`` picks some) on one grid cell
    (``--dgps``/``--layouts``: the first of each), exact + local + SecAgg+ at ``--epsilon``;
    prints and with ``--write`` writes ``docs/benchmarks/privacy_levers.md``."""
    import json
    import time
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from _grid import Cell, run_seed, summarise_cell
    from _grid_cli import _init_worker, _Inline
    from _table import Table, write_readme_block, write_tables

    picked = [CONFIGS[i] for i in args.lever_configs] if args.lever_configs else list(CONFIGS)
    dgp, layouts = args.dgps[0], list(args.layouts)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    rows: list[dict] = []
    t_all = time.time()
    _init_worker()
    for layout, (label, bound, minc, centres, cap_q) in [(lay, c) for lay in layouts for c in picked]:
        weightbound.MAX_CONTROL_WEIGHT = None if bound == "off" else float(bound)
        weightbound.MIN_CONTROL_SIGMAS = None if minc == "off" else float(minc)
        workflow.REACH_GRID = (0.5,) if centres == "half" else _REACH_GRID
        cell = Cell(
            dgp=dgp,
            layout=layout,
            epsilon=args.epsilon,
            modes=tuple(args.modes),
            outcomes=tuple(args.outcomes),
            cap_quantile=cap_q,
        )
        t0 = time.time()
        jobs = max(1, min(args.jobs, 2))
        pool = ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker) if jobs > 1 else _Inline()
        with pool:  # forked after the settings above, so the workers run them
            results = list(
                pool.map(partial(run_seed, cell), seeds, chunksize=max(1, len(seeds) // (4 * jobs)))
            )
        first = not any(r["layout"] == layout for r in rows)
        for r in summarise_cell(cell, results):
            if r["mode"] != "exact" or first:  # the exact study is the same in every setting
                rows.append({"lever": label if r["mode"] != "exact" else "exact study (spec caps)", **r})
        print(f"\n== {layout}, {label}: {len(seeds)} seeds, {time.time() - t0:.0f} s", flush=True)
        for r in rows:
            if r["lever"] == label and r["layout"] == layout:
                print("  " + " | ".join(str(c) for c in _cells(r)), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    if args.write:
        write_tables(
            "privacy_levers",
            title="Differential privacy: what each lever of issue #19 moves",
            tables=[
                Table(
                    title=f"CI width ÷ exact and ÷ limit, coverage and bias per lever ({dgp} × "
                    + ", ".join(layouts)
                    + ")",
                    columns=COLUMNS,
                    rows=[_cells(r) for r in rows],
                    align="lllllrrrrrrrrrr",
                    note=NOTE,
                )
            ],
            setting=(
                f"{args.seeds} seeds (from seed {args.first_seed}); DP at ε = {args.epsilon:g}, δ = 1e-6, "
                f"the study's default split and rounds; spec caps "
                + ", ".join(f"{o.name} {o.cap:g}" for o in args.outcomes)
                + f"; {time.time() - t_all:.0f} s in all"
            ),
        )
        write_readme_block("privacy_levers", readme_summary(rows, seeds=args.seeds, epsilon=args.epsilon))
    return rows


_ORDER = ("claims_cost", "cv_event", "absence_days")


def readme_summary(rows: list[dict], *, seeds: int, epsilon: float) -> str:
    """The README's table: per layout, setting and mode, CI width ÷ exact and ÷ limit and
    coverage per outcome (claims / CV event / absence days), from the rows just measured."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault((r["layout"], r["lever"], r["mode"]), {})[r["outcome"]] = r

    def three(g: dict[str, dict], key: str, fmt) -> str:
        return " / ".join(fmt(g[o].get(key)) if o in g else "—" for o in _ORDER)

    def num(x) -> str:
        return "—" if x is None else f"{x:.2f}"

    def pct(x) -> str:
        return "—" if x is None else f"{100 * x:.1f}"

    lines = [
        f"ε = {epsilon:g}, δ = 1e-6, {seeds} seeds per row; claims / CV event / absence days. "
        "Written by `bench/bench_privacy.py --levers --write` (full table, command and commit: "
        "[docs/benchmarks/privacy_levers.md](docs/benchmarks/privacy_levers.md)).",
        "",
        "| federation | setting | noise | CI width ÷ exact | ÷ limit | coverage % |",
        "|:--|:--|:--|:--|:--|:--|",
    ]
    for (layout, lever, mode), g in groups.items():
        exact = mode == "exact"
        lines.append(
            f"| {layout} | {lever} | {mode} | {'1 (ref)' if exact else three(g, 'width_by_exact', num)} "
            f"| {'—' if exact else three(g, 'width_by_limit', num)} | {three(g, 'coverage', pct)} |"
        )
    return "\n".join(lines)


_REACH_GRID = workflow.REACH_GRID

COLUMNS = (
    "layout",
    "lever",
    "mode",
    "outcome",
    "seeds",
    "coverage",
    "Wilson 95 %",
    "bias/SE",
    "bias/SE vs uncapped",
    "width ÷ exact",
    "width ÷ limit",
    "cap (median)",
    "rows clipped",
    "clipped (DP)",
    "stopped",
)

NOTE = (
    "Every row is the same seeded federations; the exact study (spec caps) is the reference of "
    "'width ÷ exact' (median over seeds of DP CI width ÷ the exact CI width on the same data). "
    "'width ÷ limit': median of the CI width ÷ the width of one Gaussian release of the ATT at "
    "the same (ε, δ) for the weights and caps the study used (shared/dp/limit.py). Coverage is of "
    "the study's own estimand: the ATT on the outcome capped at the caps in force (the spec's, or "
    "the DP quantile's, which differ per seed and mode); 'bias/SE vs uncapped' is the mean error "
    "against the uncapped true ATT over the mean SE: what the capped estimand gives up. 'rows "
    "clipped': share of all rows above the cap in force; 'clipped (DP)': the share the study "
    "itself states, from its noisy cap histogram (mean). Wilson 95 %: the coverage's binomial "
    "interval. The DP cap is the study's own cap round (privacy.large_loss_cap: a fixed 5 % of ρ, "
    "shared/dp/capround.py)."
)


def _cells(r: dict) -> tuple:
    def num(x, fmt=".2f"):
        return "—" if x is None else format(x, fmt)

    lo, hi = r["wilson"]
    return (
        r["layout"],
        r["lever"],
        r["mode"],
        r["outcome"],
        r["n"],
        "—" if r["coverage"] is None else f"{100 * r['coverage']:.1f}%",
        f"[{100 * lo:.1f}, {100 * hi:.1f}]",
        num(r["bias_in_se"]),
        num(r.get("bias_raw_in_se")),
        "1.00 (ref)" if r["mode"] == "exact" else num(r["width_by_exact"]),
        num(r["width_by_limit"]),
        num(r.get("cap"), ".4g"),
        "—" if r.get("clipped") is None else f"{100 * r['clipped']:.2f}%",
        "—" if r.get("clipped_dp") is None else f"{100 * r['clipped_dp']:.2f}%",
        r["stopped"],
    )
