"""Time to generate (and write) the default ~100k-person synthetic federation.

    .venv/bin/python bench/bench_synth.py [--repeats 3] [--scale 1.0] [--write]

Prints wall-clock seconds (best of ``repeats``) for generation in memory, for writing CSV and
Parquet, and for ``generate_cohort`` at statistics-benchmark size. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, TypeVar

from _table import Table, add_write_argument, write_tables

from coordinator.synth import write_federation
from shared.synth import generate_cohort, generate_federation

T = TypeVar("T")


def _best(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Best wall-clock time of ``repeats`` calls (at least one), and the last call's result."""
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=7)
    add_write_argument(ap, "synth")
    args = ap.parse_args()
    rows: list[tuple] = []

    gen_s, fed = _best(lambda: generate_federation(seed=args.seed, scale=args.scale), args.repeats)
    people = fed.truth["pooled"]["n"]
    rows_total = sum(
        len(getattr(s, t)) for s in fed.sites for t in ("persons", "interventions", "outcomes", "cohort")
    )
    print(f"federation: {len(fed.sites)} sites, {people:,} people, {rows_total:,} table rows")
    print(f"generate (in memory)      : {gen_s:6.2f} s  ({people / gen_s:,.0f} people/s)")
    rows.append(("generate (in memory)", f"{gen_s:.2f} s", f"{people / gen_s:,.0f} people/s"))
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("csv", "parquet"):
            out = Path(tmp) / fmt
            write_s, _ = _best(lambda: write_federation(fed, out, fmt), args.repeats)
            size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            print(f"write {fmt:<8}            : {write_s:6.2f} s  ({size / 1e6:,.1f} MB)")
            print(f"generate + write {fmt:<8} : {gen_s + write_s:6.2f} s")
            rows.append((f"write {fmt}", f"{write_s:.2f} s", f"{size / 1e6:,.1f} MB"))
            rows.append((f"generate + write {fmt}", f"{gen_s + write_s:.2f} s", ""))
    n = 5_000
    cohort_s, _ = _best(lambda: generate_cohort(n=n, seed=args.seed), max(args.repeats, 10))
    print(f"generate_cohort(n={n:,})  : {cohort_s * 1e3:6.1f} ms  (per seed, statistics benches)")
    rows.append((f"generate_cohort(n={n:,})", f"{cohort_s * 1e3:.1f} ms", "per seed, statistics benches"))
    if args.write:
        write_tables(
            "synth",
            title="Synthetic federation: generation and writing time",
            setting=f"scale {args.scale:g}, seed {args.seed}, best of {args.repeats} "
            f"repeats (generate_cohort: best of {max(args.repeats, 10)})",
            tables=[
                Table(
                    title=f"{len(fed.sites)} sites, {people:,} people, {rows_total:,} table rows",
                    columns=("step", "time", "rate / size"),
                    rows=rows,
                    align="lrr",
                )
            ],
        )


if __name__ == "__main__":
    main()
