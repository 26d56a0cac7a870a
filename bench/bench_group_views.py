"""What an HR group view shows of a 480-person company, and what drawing it costs.

For each view (single and crossed dimensions) and noise σ, a few seeded releases of the synthetic
``company_logistics`` profile (480 staff: warehouse, transport, office) scored by a fixed model:
cells in the view, cells withheld (small / complementary, median over seeds), ε of one release at
δ = 1e-6, and the wall time of one release (noise, suppression and its audit).

    .venv/bin/python bench/bench_group_views.py [--write]   # ≈ 20 s on 2 cores
    .venv/bin/python bench/bench_group_views.py --seeds 1   # quick look
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _table import Table, add_write_argument, write_tables  # noqa: E402

from node.api.groups import GroupPolicy, group_frame, release_view  # noqa: E402
from node.risk.scoring import Scorer, score_book  # noqa: E402
from tests.security.hr_company import company, risk_model  # noqa: E402

VIEWS = (
    "department",
    "age_band",
    "job_type",
    "department,age_band",
    "department,job_type",
    "age_band,job_type",
    "department,age_band,job_type",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sigma", type=float, nargs="+", default=[2.0, 5.0])
    ap.add_argument("--k", type=int, default=11)
    add_write_argument(ap, "group_views")
    args = ap.parse_args()
    book = company()
    scored = score_book(book, Scorer.from_model(risk_model(Path(tempfile.mkdtemp()) / "models")))
    groups = group_frame(book.assign(tier=scored["tier"], probability=scored["probability"]))
    rows = []
    for sigma in args.sigma:
        policy = GroupPolicy(k=args.k, sigma=sigma)
        for by in VIEWS:
            small, comp, shown, secs = [], [], [], []
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                v = release_view(groups, tuple(by.split(",")), policy=policy, rng=np.random.default_rng(seed))
                secs.append(time.perf_counter() - t0)
                small.append(v["suppressed_cells"] - v["complementary_cells"])
                comp.append(v["complementary_cells"])
                shown.append(sum(g["people"] is not None for g in v["groups"]))
            rows.append(
                (
                    by,
                    f"{sigma:g}",
                    f"{policy.epsilon:.2f}",
                    len(v["cells"]),
                    f"{np.median(small):.0f} + {np.median(comp):.0f}",
                    f"{np.median(shown):.0f} of {len(v['groups'])}",
                    f"{np.median(secs):.2f}",
                )
            )
    table = Table(
        columns=(
            "view",
            "σ",
            "ε (δ=1e-6)",
            "cells",
            "withheld: small + compl.",
            "groups shown",
            "s / release",
        ),
        rows=rows,
        align="lrrrrrr",
    )
    print(table.markdown())
    if args.write:
        write_tables(
            "group_views",
            title="HR group views of a 480-person company: what is shown, what it costs",
            setting=f"company_logistics (480 staff, 3 departments, 5 job types, 6 age bands) scored by "
            f"tests/security/hr_company.py's model; k = {args.k}; medians over {args.seeds} seeds",
            tables=[table],
        )


if __name__ == "__main__":
    main()
