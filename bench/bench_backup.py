"""Benchmark: `rehealth node backup` and `restore` of a node with N persons (SQLite, PostgreSQL).

Builds a node (N synthetic persons ingested, a ledger with a few releases), then times a backup
(store copy, compression, AES-256-GCM) and a restore (authenticate, unpack, ledger merge, store
replaced, schema checked) and prints seconds and sizes. PostgreSQL runs on a throwaway cluster
(as the tests do) when the server binaries are installed, with both methods: ``pg_dump`` and
the logical copy.

    .venv/bin/python bench/bench_backup.py                 # 100,000 persons
    .venv/bin/python bench/bench_backup.py --rows 20000 --no-postgres --write
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tests' throwaway PostgreSQL cluster helpers

from _table import Table, add_write_argument, write_tables  # noqa: E402
from bench_ingest import synthetic_persons  # noqa: E402

from node.backup import backup_node, restore_node  # noqa: E402
from node.config import NodeConfig  # noqa: E402
from node.ingest import ingest_file  # noqa: E402
from node.ledger import PrivacyLedger  # noqa: E402
from node.pseudonym import open_pseudonymizer  # noqa: E402
from node.store import open_store  # noqa: E402

SITE = "bench"


@contextlib.contextmanager
def postgres() -> Iterator[str | None]:
    """Base URL of a throwaway cluster on 127.0.0.1, or None without the server binaries."""
    from conftest import PG_USER, _free_port, _pg_bindir, _run

    bindir = _pg_bindir()
    if bindir is None:
        yield None
        return
    tmp = Path(tempfile.mkdtemp(prefix="rehealth-pg-"))
    if os.geteuid() == 0:
        shutil.chown(tmp, user=PG_USER)
    data, port = tmp / "data", _free_port()
    _run([str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync"])
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {tmp}"
    _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "log"), "-w", "-o", opts, "start"])
    try:
        yield f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{port}/postgres"
    finally:
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])
        shutil.rmtree(tmp, ignore_errors=True)


def build_node(d: Path, csv: Path, store_url: str, ledger_url: str) -> NodeConfig:
    d.mkdir()
    (d / "node.toml").write_text(
        f'site_id = "{SITE}"\nstore_url = "{store_url}"\nledger_url = "{ledger_url}"\nkey_path = "node.key"\n'
    )
    cfg = NodeConfig.from_toml(d / "node.toml")
    store = open_store(cfg.store_url)
    pseudo = open_pseudonymizer(store, cfg.key_path, site_id=SITE)
    ingest_file(store, csv, kind="persons", pseudonymize=pseudo.many, site_id=SITE)
    store.engine.dispose()
    led = PrivacyLedger(cfg.ledger_url)
    led.ensure_budget(epsilon=3.0, delta=1e-6)
    for i in range(5):
        led.charge(study_id="bench", query=f"q{i}", sigma=20.0, sensitivity=1.0)
    led.engine.dispose()
    return cfg


def store_mib(cfg: NodeConfig) -> float:
    """The store's size: SQLite file (after a checkpoint), or the tables' on PostgreSQL."""
    store = open_store(cfg.store_url)
    try:
        with store.engine.connect() as conn:
            if store.dialect == "sqlite":
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                db = store.engine.url.database
                assert db
                return Path(db).stat().st_size / 2**20
            size = conn.exec_driver_sql(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            ).scalar_one()
            return float(size) / 2**20
    finally:
        store.engine.dispose()


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (pg_dump, pg_restore): on a shared
    machine the wall clock also counts the time other processes held the CPU."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(cfg: NodeConfig, archive: Path, method: str | None) -> tuple:
    size = store_mib(cfg)
    t0, c0 = time.perf_counter(), cpu_s()
    info = backup_node(cfg, archive, method=method)
    t_backup, c_backup = time.perf_counter() - t0, cpu_s() - c0
    t1, c1 = time.perf_counter(), cpu_s()
    out = restore_node(cfg, archive)
    t_restore, c_restore = time.perf_counter() - t1, cpu_s() - c1
    persons = out["rows"]["persons"]
    assert persons == info["store"]["rows"]["persons"]
    backend = "SQLite" if info["store"]["dialect"] == "sqlite" else "PostgreSQL"
    row = (
        backend,
        info["store"]["method"],
        f"{persons:,}",
        f"{size:.1f}",
        f"{info['archive_bytes'] / 2**20:.1f}",
        f"{t_backup:.2f}",
        f"{c_backup:.2f}",
        f"{t_restore:.2f}",
        f"{c_restore:.2f}",
    )
    print(
        f"{backend:>10} {row[1]:>8}: {row[2]} persons, store {row[3]} MiB -> archive {row[4]} MiB; "
        f"backup {row[5]} s (CPU {row[6]} s), restore {row[7]} s (CPU {row[8]} s)"
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--no-postgres", action="store_true", help="SQLite only.")
    add_write_argument(ap, "backup")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rehealth-bench-") as tmp_name:
        tmp = Path(tmp_name)
        csv = tmp / "persons.csv"
        synthetic_persons(args.rows, bad_fraction=0.0).to_csv(csv, index=False)
        cfg = build_node(tmp / "sqlite", csv, "sqlite:///node.db", "sqlite:///ledger.db")
        rows.append(measure(cfg, tmp / "sqlite.rhb", None))
        pg = contextlib.nullcontext(None) if args.no_postgres else postgres()
        with pg as base:
            if base is None:
                print("PostgreSQL: not measured (no server binaries; bash deploy/postgres.sh installs them)")
            else:
                cfg = build_node(tmp / "pg", csv, base, base)
                for method in ("pg_dump", "logical"):
                    rows.append(measure(cfg, tmp / f"pg-{method}.rhb", method))
    if args.write:
        write_tables(
            "backup",
            title="Node backup and restore",
            setting=f"{args.rows:,} synthetic persons ingested, a ledger with 5 releases; archive "
            "zlib level 1 + AES-256-GCM in 1 MiB chunks; restore = authenticate and unpack, merge "
            "the ledger, replace the store, open it (quick_check, schema)",
            tables=[
                Table(
                    columns=(
                        "store",
                        "method",
                        "persons",
                        "store MiB",
                        "archive MiB",
                        "backup s",
                        "backup CPU s",
                        "restore s",
                        "restore CPU s",
                    ),
                    rows=rows,
                    align="llrrrrrrr",
                )
            ],
            notes="CPU s: this process and its children (pg_dump, pg_restore), not the PostgreSQL "
            "server's work; on a shared machine the wall clock also counts other processes' time "
            "(see the load average above).",
        )


if __name__ == "__main__":
    main()
