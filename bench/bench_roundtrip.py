"""Where a round trip's time goes: a signed DP study over real Flower on loopback (TLS, node
authentication, the guarded ClientApp — exactly what ``rehealth demo`` runs), each round's wall
time split into its stages.

While the study runs, a sampler (every ``--sample`` s) reads the SuperLink's own message tables
(read-only SQLite: ``message_ins.created_at`` when the ServerApp pushed, ``delivered_at`` when a
SuperNode pulled; ``message_res.created_at`` when a ClientApp built its reply; a reply row first
seen = it reached the SuperLink; the row gone = the ServerApp pulled it and Flower deleted it) and
the process tree (each ``flwr-clientapp`` process's start time). Per round, the means over the
round's messages give:

    push→pull      ServerApp push until the SuperNode pulled the message (its idle poll)
    pull→spawn     SuperNode → SuperExec (its task poll) → a fresh ``flwr-clientapp`` process
    app            that process: interpreter + imports + Flower's app loading + the node's compute
    reply→link     reply built until it reached the SuperLink (the SuperNode's reply poll, push)
    link→server    until the ServerApp pulled it (its poll)
    tail           the round's wall time minus the mean path (the slowest node, the ServerApp)

``app`` is split once more with a measured cold start (``--starts`` times: a fresh interpreter
importing Flower's ClientApp runtime and the node app): the rest is node compute.

    PYTHONPATH=. .venv/bin/python bench/bench_roundtrip.py [--sites 8 --scale 0.05]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

STAGES = ("push→pull", "pull→spawn", "app", "reply→link", "link→server")


class Sampler(threading.Thread):
    """Records first-seen message rows and ClientApp process starts until stopped."""

    def __init__(self, root: Path, every_s: float):
        super().__init__(daemon=True)
        self.root, self.every_s = root, every_s
        self.ins: dict[str, dict] = {}  # message id -> {group, created, delivered}
        self.res: dict[str, dict] = {}  # reply_to id -> {created, seen, gone}
        self.spawns: dict[int, float] = {}  # pid -> create time
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()
        self.join()

    def run(self) -> None:
        me = psutil.Process()
        db: sqlite3.Connection | None = None
        while not self._stop.is_set():
            now = time.time()
            for p in me.children(recursive=True):
                try:
                    if p.pid not in self.spawns and "clientappio-api-address" in " ".join(p.cmdline()):
                        self.spawns[p.pid] = p.create_time()
                except psutil.Error:
                    pass
            if db is None:
                found = sorted(self.root.rglob("superlink.db"))
                if found:
                    db = sqlite3.connect(f"file:{found[0]}?mode=ro", uri=True, timeout=1)
            if db is not None:
                try:
                    self._read(db, now)
                except sqlite3.Error:
                    pass
            self._stop.wait(self.every_s)

    def _read(self, db: sqlite3.Connection, now: float) -> None:
        for mid, group, created, delivered in db.execute(
            "select message_id, group_id, created_at, delivered_at from message_ins"
        ):
            row = self.ins.setdefault(mid, {"group": group, "created": created, "delivered": None})
            if delivered and row["delivered"] is None:
                row["delivered"] = dt.datetime.fromisoformat(delivered).timestamp()
        present = set()
        for reply_to, created in db.execute("select reply_to_message_id, created_at from message_res"):
            present.add(reply_to)
            self.res.setdefault(reply_to, {"created": created, "seen": now, "gone": None})
        for reply_to, row in self.res.items():
            if reply_to not in present and row["gone"] is None:
                row["gone"] = now


def cold_start_s(times: int) -> float:
    """Median wall time of a fresh interpreter importing what a ``flwr-clientapp`` process
    imports before it runs the node's code."""
    code = "import flwr.supernode.runtime.run_clientapp, node.flower.guard, node.flower.client_app"
    runs = []
    for _ in range(times):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def rounds(s: Sampler) -> list[dict]:
    """Per round (the ServerApp's group id): wall time and mean stage durations."""
    by_group: dict[str, list[str]] = defaultdict(list)
    for mid, row in s.ins.items():
        by_group[row["group"]].append(mid)
    spawns = sorted(s.spawns.values())
    out = []
    for group, mids in sorted(by_group.items(), key=lambda g: min(s.ins[m]["created"] for m in g[1])):
        ins = [s.ins[m] for m in mids]
        res = [s.res[m] for m in mids if m in s.res and s.res[m]["gone"]]
        if len(res) < len(ins) or any(r["delivered"] is None for r in ins):
            continue  # a round the sampler did not see whole
        t0 = min(r["created"] for r in ins)
        end = max(r["gone"] for r in res)
        delivered = statistics.mean(r["delivered"] for r in ins)
        created = statistics.mean(r["created"] for r in res)
        started = [t for t in spawns if t0 <= t <= end][: len(ins)]
        spawn = statistics.mean(started) if started else delivered
        stages = {
            "push→pull": delivered - statistics.mean(r["created"] for r in ins),
            "pull→spawn": spawn - delivered,
            "app": created - spawn,
            "reply→link": statistics.mean(r["seen"] for r in res) - created,
            "link→server": statistics.mean(r["gone"] - r["seen"] for r in res),
        }
        wall = end - t0
        out.append(
            {"round": group, "nodes": len(ins), "wall": wall, **stages, "tail": wall - sum(stages.values())}
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=8)
    ap.add_argument("--scale", type=float, default=0.05)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--sample", type=float, default=0.05, help="sampling period, s")
    ap.add_argument("--starts", type=int, default=3, help="cold starts timed for the app split")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    from coordinator.study.runner import run_local
    from coordinator.synth import write_federation
    from shared.synth import generate_federation

    with tempfile.TemporaryDirectory(prefix="bench-roundtrip-") as tmp:
        root = Path(tmp)
        spec = write_federation(
            generate_federation(seed=7, sites=args.sites, scale=args.scale),
            root / "data",
            epsilon=args.epsilon,
        )
        sampler = Sampler(root / "run", args.sample)
        sampler.start()
        events: list[dict] = []
        t = time.perf_counter()
        try:
            result = run_local(spec, root / "run", on_event=events.append, timeout_s=900)
        finally:
            sampler.stop()
        total = time.perf_counter() - t
    cold = cold_start_s(args.starts)
    rows = rounds(sampler)
    print(f"{args.sites} sites, scale {args.scale}, ε {args.epsilon}: study {total:.1f} s end to end")
    print("result timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    head = ["round", "nodes", "wall", *STAGES, "tail"]
    print("  ".join(f"{h:>12}" for h in head))
    for r in rows:
        print("  ".join(f"{r[h]:>12.2f}" if isinstance(r[h], float) else f"{r[h]:>12}" for h in head))
    if rows:
        n = len(rows)
        mean = {h: sum(r[h] for r in rows) / n for h in ("wall", *STAGES, "tail")}
        print(
            "  ".join(
                [f"{'mean':>12}", f"{'':>12}", *(f"{mean[h]:>12.2f}" for h in ("wall", *STAGES, "tail"))]
            )
        )
        print(
            f"rounds: {n}, sum of round walls {sum(r['wall'] for r in rows):.1f} s; "
            f"ClientApp cold start (interpreter + imports) {cold:.2f} s of the mean app "
            f"{mean['app']:.2f} s; node compute ≈ {max(mean['app'] - cold, 0):.2f} s per round"
        )
    if args.json:
        args.json.write_text(json.dumps({"total_s": total, "cold_start_s": cold, "rounds": rows}, indent=1))


if __name__ == "__main__":
    main()
