"""Benchmark: what a mapping file costs. The same N persons ingested as our own CSV, and as a
German extract (semicolons, decimal commas, dd.mm.yyyy, m/w, mg/dL, Windows-1252) through
``deploy/examples/mapping-de.toml``, plus a ``--dry-run`` of the extract.

Prints rows/s (wall clock and per CPU second) for each run; every run uses a fresh SQLite store.

    .venv/bin/python bench/bench_ingest_extract.py --rows 100000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_ingest import synthetic_persons  # noqa: E402

from node.ingest import ingest_file  # noqa: E402
from node.ingest.mapping import UNIT_FACTORS, load_mapping  # noqa: E402
from node.pseudonym import Pseudonymizer  # noqa: E402
from node.store import open_store  # noqa: E402

MAPPING = ROOT / "deploy" / "examples" / "mapping-de.toml"


def german(df: pd.DataFrame, mapping) -> pd.DataFrame:
    """Our persons frame written the way the mapping file reads it."""
    ours_to_theirs = {v: k for k, v in mapping.columns.items()}
    out = df.copy()
    out["index_date"] = pd.to_datetime(out["index_date"]).dt.strftime("%d.%m.%Y")
    for name, unit in mapping.units.items():
        out[name] = out[name] / UNIT_FACTORS[(name, unit)]
    for name, codes in mapping.codes.items():
        back = {float(v): k for k, v in codes.items()}
        out[name] = out[name].astype(float).map(back)
    for f in out.columns:  # mg/dL with 6 decimals: the round trip stays inside the bounds
        if pd.api.types.is_float_dtype(out[f]):
            digits = 6 if f in mapping.units else 2
            out[f] = out[f].round(digits).astype(str).str.replace(".", ",", regex=False)
    out["department"] = np.where(out["department"] == "ops", "Qualitätssicherung", out["department"])
    out["Name"] = "x"
    return out.rename(columns=ours_to_theirs)


def timed(label: str, store_path: Path, path: Path, rows: int, **kw) -> None:
    store = open_store(f"sqlite:///{store_path}")
    pseudo = Pseudonymizer(key=bytes(range(32)), site_id="bench")
    t0, c0 = time.perf_counter(), time.process_time()
    s = ingest_file(store, path, kind="persons", pseudonymize=pseudo.many, site_id="bench", **kw)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    store.engine.dispose()
    print(
        f"{label:<28} {rows:>9,} rows  {wall:7.2f} s  {rows / wall:>9,.0f} rows/s  "
        f"{rows / cpu:>9,.0f} rows/CPU-s  loaded {s.loaded:,}  quarantined {s.quarantined:,}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--chunk-rows", type=int, default=50_000)
    args = ap.parse_args()
    mapping = load_mapping(MAPPING)
    df = synthetic_persons(args.rows, bad_fraction=0.01)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        plain = d / "persons.csv"
        df.to_csv(plain, index=False)
        extract = d / "Mitarbeiter.csv"
        german(df, mapping).to_csv(extract, index=False, sep=";", encoding="cp1252")
        timed("our CSV", d / "a.db", plain, args.rows, chunk_rows=args.chunk_rows)
        timed(
            "German extract, mapping",
            d / "b.db",
            extract,
            args.rows,
            chunk_rows=args.chunk_rows,
            extract=mapping,
        )
        timed(
            "German extract, --dry-run",
            d / "c.db",
            extract,
            args.rows,
            chunk_rows=args.chunk_rows,
            extract=mapping,
            dry_run=True,
        )


if __name__ == "__main__":
    main()
