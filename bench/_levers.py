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
        default="1",
        help="largest control weight relative to a treated person before strata are merged "
        "(shared/dp/weightbound.py; 'off' = no merging, the behaviour before)",
    )
    g.add_argument(
        "--centres",
        choices=("grid", "half"),
        default="grid",
        help="psm_wsum centres: reach chosen on the grid by predicted variance (shipped) or "
        "fixed at half the largest weight (before)",
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
    workflow.REACH_GRID = (0.5,) if args.centres == "half" else workflow.REACH_GRID


def lever_label(args: argparse.Namespace) -> str:
    """The levers' settings as the written table's setting line states them."""
    cap = "spec caps" if args.cap_quantile is None else f"caps from a DP {args.cap_quantile:g} quantile"
    return f"weight bound {args.weight_bound}, centres {args.centres}, {cap}"
