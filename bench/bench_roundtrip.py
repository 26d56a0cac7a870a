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
    link→server    until the ServerApp pulled it: the SuperNode's upload of the reply's content
                   (sent after the reply's row) and the ServerApp's next 0.2 s poll
    tail           the round's wall time minus the mean path (the slowest node, the ServerApp)

``app`` is split once more with a measured cold start (``--starts`` times: a fresh interpreter
importing Flower's ClientApp runtime and the node app): the rest is node compute.

    PYTHONPATH=. .venv/bin/python bench/bench_roundtrip.py [--sites 8 --scale 1]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _table import Table, add_write_argument, write_tables  # noqa: E402

STAGES = ("push→pull", "pull→spawn", "app", "reply→link", "link→server")


class Sampler(threading.Thread):
    """Records first-seen message rows and ClientApp process starts until stopped."""

    def __init__(self, root: Path, every_s: float):
        super().__init__(daemon=True)
        self.root, self.every_s = root, every_s
        self.ins: dict[str, dict] = {}  # message id -> {group, created, delivered}
        self.res: dict[str, dict] = {}  # reply_to id -> {created, seen, gone}
        self.spawns: dict[int, float] = {}  # pid -> create time
        self._done = threading.Event()

    def stop(self) -> None:
        self._done.set()
        self.join()

    def run(self) -> None:
        me = psutil.Process()
        db: sqlite3.Connection | None = None
        while not self._done.is_set():
            now = time.time()
            for p in me.children(recursive=True):
                try:
                    if p.pid not in self.spawns and (
                        p.name() == "flwr-clientapp" or "flwr-clientapp" in " ".join(p.cmdline())
                    ):  # a cold process, or a child of the node's zygote (named so)
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
            self._done.wait(self.every_s)

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
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--sample", type=float, default=0.05, help="sampling period, s")
    ap.add_argument("--starts", type=int, default=3, help="cold starts timed for the app split")
    ap.add_argument("--json", type=Path, help="also write the figures here (for a later --baseline)")
    ap.add_argument("--baseline", type=Path, help="a --json of an earlier run, shown beside this one")
    ap.add_argument("--baseline-label", default="before", help="what the baseline ran")
    ap.add_argument("--notes", type=Path, help="a Markdown file put below the tables (e.g. the demo's times)")
    ap.add_argument("--replay", type=Path, help="print (and --write) a saved --json instead of running")
    add_write_argument(ap, "roundtrip")
    args = ap.parse_args()

    if args.replay:
        figures = json.loads(args.replay.read_text())
    else:
        figures = measure(args)
    show(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if args.write:
        write_tables(
            "roundtrip",
            title="Round trips over Flower: where a round's time goes",
            setting=f"{args.sites} synthetic sites (seed 7, scale {args.scale}), ε {args.epsilon}, "
            "TLS, node authentication, signed study, guarded ClientApp, all on 127.0.0.1 (what "
            "`rehealth demo` runs); stages are means over a round's messages, in seconds",
            tables=_tables(figures, args),
            notes=args.notes.read_text() if args.notes else "",
        )


def measure(args) -> dict:
    """Run the study once with the sampler watching; the figures :func:`show` prints."""
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
        t = time.perf_counter()
        try:
            result = run_local(spec, root / "run", timeout_s=900)
        finally:
            sampler.stop()
        total = time.perf_counter() - t
    return {
        "setting": {"sites": args.sites, "scale": args.scale, "epsilon": args.epsilon},
        "total_s": total,
        "timings": result.timings,
        "study_rounds": len(result.rounds),
        "cold_start_s": cold_start_s(args.starts),
        "rounds": rounds(sampler),
    }


def show(figures: dict) -> None:
    rows, cold = figures["rounds"], figures["cold_start_s"]
    print(f"{figures.get('setting', '')}: study {figures['total_s']:.1f} s end to end")
    print("result timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in figures.get("timings", {}).items()))
    head = ["round", "nodes", "wall", *STAGES, "tail"]
    print("  ".join(f"{h:>12}" for h in head))
    for r in rows:
        print("  ".join(f"{r[h]:>12.2f}" if isinstance(r[h], float) else f"{r[h]:>12}" for h in head))
    if rows:
        n = len(rows)
        mean = {h: sum(r[h] for r in rows) / n for h in ("wall", *STAGES, "tail")}
        print("  ".join([f"{'mean':>12}", f"{'':>12}", *(f"{mean[h]:>12.2f}" for h in head[2:])]))
        compute = node_compute(figures)
        print(
            f"rounds seen whole: {n}, sum of their walls {sum(r['wall'] for r in rows):.1f} s; "
            f"of the mean app stage {mean['app']:.2f} s, node compute (the slowest node's own, "
            f"per round) {compute:.2f} s, the rest process start and Flower's app loading; "
            f"one ClientApp cold start alone (interpreter + imports) {cold:.2f} s"
        )


def node_compute(figures: dict) -> float:
    """The slowest node's own compute per round, as the study result reports it."""
    return figures.get("timings", {}).get("node_compute_s", 0.0) / max(figures.get("study_rounds", 9), 1)


def _summary(figures: dict) -> list:
    rows = figures["rounds"]
    n = max(len(rows), 1)
    return [
        f"{figures['total_s']:.1f}",
        len(rows),
        *(f"{sum(r[h] for r in rows) / n:.2f}" for h in ("wall", *STAGES, "tail")),
        f"{node_compute(figures):.2f}",
        f"{figures['cold_start_s']:.2f}",
    ]


def _tables(figures: dict, args) -> list[Table]:
    cols = ("run", "study s", "rounds", "round wall", *STAGES, "tail", "node compute", "cold start")
    summary = [("this commit", *_summary(figures))]
    if args.baseline:
        summary.insert(0, (args.baseline_label, *_summary(json.loads(args.baseline.read_text()))))
    head = ("round", "nodes", "wall", *STAGES, "tail")
    per_round = [[r["round"], r["nodes"], *(f"{r[h]:.2f}" for h in head[2:])] for r in figures["rounds"]]
    return [
        Table(columns=cols, rows=summary, align="l" + "r" * (len(cols) - 1), title="Mean round"),
        Table(
            columns=head, rows=per_round, align="l" + "r" * (len(head) - 1), title="Each round (this commit)"
        ),
    ]


if __name__ == "__main__":
    main()
