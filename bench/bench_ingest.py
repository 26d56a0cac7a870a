"""Benchmark: ingest N synthetic persons (CSV and Parquet) into a fresh SQLite node store.

Prints rows/s (wall clock, and per CPU second: on a shared machine the wall clock also counts
the time other processes held the CPU) and peak resident memory per format. Each ingest runs
in its own process so its peak RSS (``ru_maxrss``) is its own, not the generator's.

    .venv/bin/python bench/bench_ingest.py            # 1,000,000 persons, 1% bad rows
    .venv/bin/python bench/bench_ingest.py --rows 200000 --chunk-rows 50000 --write
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _table import Table, add_write_argument, write_tables  # noqa: E402

from shared.features import FEATURES  # noqa: E402


def synthetic_persons(n: int, *, bad_fraction: float, seed: int = 0) -> pd.DataFrame:
    """``n`` persons within public bounds (raw ids ``B-0000001``…); ``bad_fraction`` of the
    rows get one out-of-bounds age so the quarantine path is exercised too."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "person_id": [f"B-{i:07d}" for i in range(n)],
            "site": "bench",
            "department": rng.choice(["ops", "sales", "it"], n),
            "job_type": rng.choice(["office", "field"], n),
        }
    )
    df["index_date"] = (
        np.datetime64("2024-01-01") + rng.integers(0, 180, n).astype("timedelta64[D]")
    ).astype(str)
    for f in FEATURES:
        df[f.name] = rng.integers(0, 2, n) if f.kind == "binary" else np.round(rng.uniform(f.lo, f.hi, n), 2)
    bad = rng.random(n) < bad_fraction
    df.loc[bad, "age"] = 150.0
    return df


def run_one(path: Path, db: Path, chunk_rows: int) -> dict:
    """Ingest ``path`` into a new store at ``db``; runs in the child process."""
    from node.ingest import ingest_file
    from node.pseudonym import Pseudonymizer
    from node.store import open_store

    store = open_store(f"sqlite:///{db}")
    pseudo = Pseudonymizer.from_key_file(db.with_suffix(".key"), site_id="bench")
    t0, c0 = time.perf_counter(), time.process_time()
    s = ingest_file(
        store, path, kind="persons", pseudonymize=pseudo.many, site_id="bench", chunk_rows=chunk_rows
    )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    again = ingest_file(store, path, kind="persons", pseudonymize=pseudo.many, site_id="bench")
    return {
        "format": path.suffix[1:],
        "rows": s.rows,
        "loaded": s.loaded,
        "quarantined": s.quarantined,
        "by_reason": s.by_reason,
        "seconds": round(seconds, 2),
        "rows_per_s": round(s.rows / seconds),
        "cpu_s": round(cpu, 2),
        "rows_per_cpu_s": round(s.rows / cpu),
        "reingest_s": round(time.perf_counter() - t1, 2),
        "reingest_noop": again.already_ingested,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "db_mib": round(db.stat().st_size / 2**20, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--chunk-rows", type=int, default=50_000)
    ap.add_argument("--bad-fraction", type=float, default=0.01)
    ap.add_argument("--child", nargs=2, metavar=("FILE", "DB"), help=argparse.SUPPRESS)
    add_write_argument(ap, "ingest")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_one(Path(args.child[0]), Path(args.child[1]), args.chunk_rows)))
        return

    with tempfile.TemporaryDirectory(prefix="rehealth-bench-") as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        df = synthetic_persons(args.rows, bad_fraction=args.bad_fraction)
        csv, parquet = tmp / "persons.csv", tmp / "persons.parquet"
        df.to_csv(csv, index=False)
        df.to_parquet(parquet, index=False, row_group_size=args.chunk_rows)
        del df
        print(
            f"generated {args.rows:,} persons in {time.perf_counter() - t0:.1f} s "
            f"(CSV {csv.stat().st_size / 2**20:.0f} MiB, Parquet "
            f"{parquet.stat().st_size / 2**20:.0f} MiB); chunk {args.chunk_rows:,} rows"
        )
        rows = []
        for path in (csv, parquet):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--chunk-rows",
                    str(args.chunk_rows),
                    "--child",
                    str(path),
                    str(tmp / f"{path.suffix[1:]}.db"),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            assert r["rows"] == r["loaded"] + r["quarantined"]
            print(
                f"{r['format']:>8}: {r['rows']:,} rows in {r['seconds']} s = "
                f"{r['rows_per_s']:,} rows/s (CPU {r['cpu_s']} s = {r['rows_per_cpu_s']:,} rows/CPU-s); "
                f"peak RSS {r['peak_rss_mib']} MiB; loaded "
                f"{r['loaded']:,}, quarantined {r['quarantined']:,} {r['by_reason']}; "
                f"store {r['db_mib']} MiB; re-ingest no-op in {r['reingest_s']} s"
            )
            rows.append(
                (
                    r["format"],
                    f"{r['rows']:,}",
                    f"{r['seconds']:.1f}",
                    f"{r['rows_per_s']:,}",
                    f"{r['rows_per_cpu_s']:,}",
                    f"{r['peak_rss_mib']:.0f}",
                    f"{r['loaded']:,}",
                    f"{r['quarantined']:,}",
                    f"{r['db_mib']:.0f}",
                    f"{r['reingest_s']:.2f}",
                )
            )
    if args.write:
        write_tables(
            "ingest",
            title="Node ingestion: persons into a fresh SQLite store",
            setting=f"{args.rows:,} synthetic persons, {args.bad_fraction:.0%} with an "
            f"out-of-bounds age (quarantined), chunks of {args.chunk_rows:,} rows; "
            "SQLite in WAL mode, synchronous=NORMAL; each format ingested in its own process",
            tables=[
                Table(
                    columns=(
                        "format",
                        "rows",
                        "seconds",
                        "rows/s",
                        "rows/CPU-s",
                        "peak RSS MiB",
                        "loaded",
                        "quarantined",
                        "store MiB",
                        "re-ingest s (no-op)",
                    ),
                    rows=rows,
                    align="lrrrrrrrrr",
                )
            ],
            notes="rows/s is wall clock; rows/CPU-s counts only this process's CPU time (on a "
            "shared machine the wall clock also counts time other processes held the CPU). "
            "Re-ingesting the same file is a no-op (same SHA-256).",
        )


if __name__ == "__main__":
    main()
