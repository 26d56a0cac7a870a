"""``bench_privacy.py --grid``: arguments, the process pool over seeds, printing and writing.

The cells' statistics are :mod:`_grid`'s; this module only schedules seeds (at most two worker
processes: the machine has two cores, and each worker is held to one BLAS thread, since a
multi-threaded BLAS in two processes on two cores loses more to contention than it gains),
prints one block per cell as soon as it is done (with its wall time and the CPU seconds per
seed of each mode, so a full run's time can be projected from a small one), and writes
``docs/benchmarks/privacy_grid.md`` (``--write``) and every seed's raw results (``--json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from functools import partial
from typing import Any, Sequence

import numpy as np
from _grid import MODES, Cell, run_seed, summarise_cell
from _layouts import LAYOUTS
from _table import Table, write_tables

from shared.synth.dgp import DGPS

__all__ = ["add_grid_arguments", "run_grid"]

#: The machine has two cores: more workers only queue.
MAX_JOBS = 2


def _names(known: Sequence[str]):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(x.strip() for x in text.split(",") if x.strip())
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or 'empty list'}; known: {', '.join(known)}"
            )
        return names

    return parse


def add_grid_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("coverage grid (--grid)")
    g.add_argument(
        "--grid", action="store_true", help="run the DGP × layout × mode grid instead of the ε frontier"
    )
    g.add_argument("--seeds", type=int, default=500, help="seeds per cell (default 500)")
    g.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...")
    g.add_argument("--dgps", type=_names(tuple(DGPS)), default=tuple(DGPS), help="comma list (default: all)")
    g.add_argument(
        "--layouts", type=_names(tuple(LAYOUTS)), default=tuple(LAYOUTS), help="comma list (default: all)"
    )
    g.add_argument("--modes", type=_names(MODES), default=MODES, help="comma list of exact, local, secagg")
    g.add_argument("--epsilon", type=float, default=1.0, help="the DP studies' ε (δ = 1e-6)")
    g.add_argument(
        "--estimators",
        type=_estimators,
        default=(None,),
        help="comma list of stratified, dr: each DP mode once per estimator on the same seeds "
        "(default: the spec's default estimator only)",
    )
    g.add_argument(
        "--jobs", type=int, default=MAX_JOBS, help=f"worker processes over seeds (at most {MAX_JOBS})"
    )


def _estimators(text: str) -> tuple[str, ...]:
    return _names(("stratified", "dr"))(text)


def _init_worker() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    # the driver warns once per flagged study; the grid counts them ("stopped") instead
    logging.getLogger("rehealth.coordinator").setLevel(logging.ERROR)


class _Inline(Executor):
    """``--jobs 1``: the seeds in this process, through the same interface as the pool."""

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        return map(fn, *iterables)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def _row_cells(r: dict[str, Any]) -> tuple:
    lo, hi = r["wilson"]
    return (
        r["dgp"],
        r["layout"],
        r["mode"],
        "—" if r["epsilon"] is None else f"{r['epsilon']:g}",
        r["outcome"],
        r["n"],
        _pct(r["coverage"]),
        f"[{100 * lo:.1f}, {100 * hi:.1f}]",
        _num(r["bias_in_se"]),
        "1.00 (ref)" if r["mode"] == "exact" else _num(r["width_by_exact"]),
        _num(r["width_by_limit"]),
        _num(r.get("cap"), "g"),
        _pct(r.get("clipped")) if r.get("clipped") is not None else "—",
        _num(r.get("bias_raw_in_se")),
        r["stopped"],
        r["errors"],
    )


COLUMNS = (
    "DGP",
    "layout",
    "mode",
    "ε",
    "outcome",
    "seeds",
    "coverage",
    "Wilson 95 %",
    "bias/SE",
    "width ÷ exact",
    "width ÷ limit",
    "cap",
    "clipped",
    "bias/SE vs uncapped",
    "stopped",
    "errors",
)


def _timing(cell: Cell, results: Sequence[dict[str, Any]], wall: float) -> dict[str, Any]:
    return {
        "dgp": cell.dgp,
        "layout": cell.layout,
        "seeds": len(results),
        "treated": float(np.mean([r["n_treated"] for r in results])),
        "people": float(np.mean([r["n_people"] for r in results])),
        "wall_s": wall,
        "cpu_s_per_seed": {
            k: float(np.mean([r["time"][k] for r in results])) for k in ("data", *cell.labels)
        },
    }


def _print_cell(rows: list[dict[str, Any]], timing: dict[str, Any]) -> None:
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in timing["cpu_s_per_seed"].items())
    print(
        f"\n== {timing['dgp']} × {timing['layout']} ({LAYOUTS[timing['layout']].about}): "
        f"{timing['seeds']} seeds, {timing['treated']:.0f} treated and {timing['people']:.0f} people "
        f"(mean); {timing['wall_s']:.1f} s wall; CPU s/seed: {cpu}",
        flush=True,
    )
    print("| " + " | ".join(COLUMNS[2:]) + " |")
    print("|" + "|".join("---" for _ in COLUMNS[2:]) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in _row_cells(r)[2:]) + " |", flush=True)


def _tables(rows: list[dict[str, Any]], timings: list[dict[str, Any]], modes: Sequence[str]) -> list[Table]:
    used_dgps = dict.fromkeys(t["dgp"] for t in timings)
    used_layouts = dict.fromkeys(t["layout"] for t in timings)
    return [
        Table(
            title="Data-generating processes (shared/synth/dgp.py)",
            columns=("DGP", "what changes against the baseline"),
            rows=[(d, DGPS[d].about) for d in used_dgps],
            align="ll",
        ),
        Table(
            title="Node layouts (bench/_layouts.py)",
            columns=("layout", "K", "target treated", "nodes"),
            rows=[(n, LAYOUTS[n].k, LAYOUTS[n].treated, LAYOUTS[n].about) for n in used_layouts],
            align="lrrl",
        ),
        Table(
            title="Coverage of the true (capped, sample) ATT, bias and CI width",
            columns=COLUMNS,
            rows=[_row_cells(r) for r in rows],
            align="lllllrrrrrrrrrrr",
            note="Coverage over the seeds with an estimate (every DP study runs through; "
            '"stopped" counts those the default rule would end after describe, "errors" those '
            "with no estimate). Wilson 95 %: the binomial interval of the coverage itself: a "
            "calibrated CI gives 95 %, and at 500 seeds a cell lands in about 93–97 %. bias/SE: "
            "mean error over mean SE. Width ratios are medians over seeds of the DP CI width ÷ "
            "the exact study's on the same data, and ÷ the limit (one Gaussian release of the "
            'ATT at the same (ε, δ), issue #19); "—" where not computed.',
        ),
        Table(
            title="Time per cell",
            columns=("DGP", "layout", "seeds", "treated (mean)", "people (mean)", "wall s", "CPU s/seed")
            + tuple(f"{m} s/seed" for m in modes),
            rows=[
                (
                    t["dgp"],
                    t["layout"],
                    t["seeds"],
                    f"{t['treated']:.0f}",
                    f"{t['people']:.0f}",
                    f"{t['wall_s']:.1f}",
                    f"{sum(t['cpu_s_per_seed'].values()):.2f}",
                    *(f"{t['cpu_s_per_seed'][m]:.2f}" for m in modes),
                )
                for t in timings
            ],
            align="llrrrrr" + "r" * len(modes),
        ),
    ]


def run_grid(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every cell, print it when done, then ``--json`` and ``--write``; return the rows."""
    jobs = max(1, min(args.jobs, MAX_JOBS))
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    outcomes = tuple(args.outcomes)
    rows: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    t_all = time.time()
    _init_worker()  # the inline case, and the pilot cohorts the parent draws
    pool: Executor = (
        ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker) if jobs > 1 else _Inline()
    )
    with pool:
        for dgp in args.dgps:
            for layout in args.layouts:
                cell = Cell(
                    dgp=dgp,
                    layout=layout,
                    epsilon=args.epsilon,
                    modes=tuple(args.modes),
                    outcomes=outcomes,
                    cap_quantile=getattr(args, "cap_quantile", None),
                    estimators=tuple(args.estimators),
                )
                t0 = time.time()
                results = list(
                    pool.map(partial(run_seed, cell), seeds, chunksize=max(1, len(seeds) // (4 * jobs)))
                )
                timing = _timing(cell, results, time.time() - t0)
                cell_rows = summarise_cell(cell, results)
                _print_cell(cell_rows, timing)
                rows += cell_rows
                timings.append(timing)
                raw.append({"dgp": dgp, "layout": layout, "epsilon": args.epsilon, "results": results})
    total = time.time() - t_all
    print(f"\ntotal {total:.0f} s with {jobs} worker(s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "timings": timings, "cells": raw}, indent=1))
    if args.write:
        setting = (
            f"{args.seeds} seeds per cell (from seed {args.first_seed}); DP at ε = {args.epsilon:g}, "
            f"δ = 1e-6, the study's default split and rounds; caps "
            + ", ".join(f"{o.name} {o.cap:g}" for o in outcomes)
            + f"; {jobs} worker process(es), {total:.0f} s in all"
        )
        if hasattr(args, "weight_bound"):
            from _levers import lever_label

            setting += f"; levers: {lever_label(args)}"
        if args.seeds < 500:
            setting += (
                ". **Fewer than 500 seeds per cell: a coverage cell's Wilson interval is wider "
                "than 93–97 %, so this shows the grid's shape, not calibration.**"
            )
        write_tables(
            "privacy_grid",
            title="Differential privacy: coverage on data the tuning never saw",
            tables=_tables(rows, timings, [k for k in timings[0]["cpu_s_per_seed"] if k != "data"]),
            setting=setting,
        )
    return rows
