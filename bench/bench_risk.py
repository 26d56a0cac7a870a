"""Benchmark of the risk model: federated DP vs centralized, batch throughput, HTTP latency.

    .venv/bin/python bench/bench_risk.py            # all three parts (≈ a few minutes on 2 cores)
    .venv/bin/python bench/bench_risk.py --part scoring
    .venv/bin/python bench/bench_risk.py --write    # also docs/benchmarks/risk.md

(a) Federated DP-SGD (FedAvg over the synthetic sites, Opacus on each, in process) vs a
    centralized non-private logistic regression on the same pooled rows; AUC (and Brier) on a
    held-out synthetic federation, at ε ∈ {1, 3, 8}; the gap is the mean (and range) over a few
    DP training seeds, since one run's noise moves it by ~0.01. The federated model's metrics come from the
    sites' additive aggregates (shared.risk.metrics), cross-checked against sklearn.
(b) Batch scoring throughput on one core (process pinned to one CPU, BLAS limited to 1 thread):
    bounds check + folded forward pass + tiers, logistic and MLP.
(c) Real-time latency over HTTP on loopback: `rehealth node serve` in a subprocess, sequential
    single-person requests with keep-alive; p50 / p99.
Figures are printed, not asserted (targets: ≥ 500k people/s; p99 < 10 ms).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import Table, add_write_argument, write_tables  # noqa: E402

from node.api.ready import wait_until_healthy  # noqa: E402
from node.risk.model_store import ModelStore, StoredModel, TrainingRecord  # noqa: E402
from node.risk.scoring import Scorer, feature_matrix, score_book  # noqa: E402
from shared.features import FEATURE_NAMES, FEATURES, scale  # noqa: E402
from shared.risk.arch import RiskArch, model_input, predict_proba  # noqa: E402
from shared.risk.metrics import eval_aggregate, evaluate, merge_aggregates  # noqa: E402
from shared.synth import generate_federation  # noqa: E402

DELTA = 1e-5


def _site_xy(cohort: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return cohort[list(FEATURE_NAMES)].to_numpy(float), cohort["cv_event"].to_numpy(float)


def bench_federated(*, scale_: float, rounds: int, seed: int, seeds: list[int]) -> Table:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import brier_score_loss, roc_auc_score

    from node.risk.simulate import train_federated

    train = generate_federation(seed=seed, sites=4, scale=scale_)
    test = generate_federation(seed=seed + 1, sites=4, scale=scale_ / 2)
    nodes = [_site_xy(s.cohort) for s in train.sites]
    tests = [_site_xy(s.cohort) for s in test.sites]
    X_all = np.vstack([x for x, _ in nodes])
    y_all = np.concatenate([y for _, y in nodes])
    X_te = np.vstack([x for x, _ in tests])
    y_te = np.concatenate([y for _, y in tests])
    print("(a) federated DP-SGD vs centralized logistic regression")
    print(
        f"    train sites: {[len(y) for _, y in nodes]} rows, events {y_all.mean():.3%}; "
        f"held-out {len(y_te)} rows, events {y_te.mean():.3%}"
    )
    t0 = time.perf_counter()
    central = LogisticRegression(C=1e6, max_iter=5000).fit(model_input(scale(X_all, FEATURES)), y_all)
    p_c = central.predict_proba(model_input(scale(X_te, FEATURES)))[:, 1]
    auc_c, brier_c = roc_auc_score(y_te, p_c), brier_score_loss(y_te, p_c)
    print(
        f"    centralized (non-private): AUC {auc_c:.4f}  Brier {brier_c:.5f}  "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    print(
        f"    {'ε':>4} {'ε spent':>8} {'AUC':>7} {'gap':>8} {'gap range':>17} {'AUC(agg)':>9} "
        f"{'Brier':>8} {'time':>7}   [{rounds} rounds, {len(nodes)} nodes, Opacus RDP, "
        f"δ={DELTA:g}, {len(seeds)} training seeds]"
    )
    arch = RiskArch()
    rows = [("centralized (non-private)", "—", f"{auc_c:.4f}", "—", "—", "—", f"{brier_c:.5f}", "—")]
    for eps in (1.0, 3.0, 8.0):
        gaps = []
        for s in seeds:
            t0 = time.perf_counter()
            fit = train_federated(nodes=nodes, target_epsilon=eps, rounds=rounds, delta=DELTA, seed=s)
            secs = time.perf_counter() - t0
            p = predict_proba(arch=arch, arrays=fit.arrays, z=scale(X_te, FEATURES))
            gaps.append(auc_c - roc_auc_score(y_te, p))
            if s == seeds[0]:  # full figures for the first seed
                aggs = [
                    eval_aggregate(
                        prob=predict_proba(arch=arch, arrays=fit.arrays, z=scale(x, FEATURES)), y=y
                    )
                    for x, y in tests
                ]
                first = (fit.epsilon(delta=DELTA), auc_c - gaps[0], evaluate(merge_aggregates(aggs)), secs)
        spent, auc, rep, secs = first
        print(
            f"    {eps:>4g} {spent:>8.3f} {auc:>7.4f} {np.mean(gaps):>+8.4f} "
            f"[{min(gaps):+.4f},{max(gaps):+.4f}] {rep.auc:>9.4f} {rep.brier:>8.5f} {secs:>6.1f}s"
        )
        rows.append(
            (
                f"federated DP-SGD, ε = {eps:g}",
                f"{spent:.3f}",
                f"{auc:.4f}",
                f"{np.mean(gaps):+.4f}",
                f"[{min(gaps):+.4f}, {max(gaps):+.4f}]",
                f"{rep.auc:.4f}",
                f"{rep.brier:.5f}",
                f"{secs:.1f}",
            )
        )
    cal = rep.calibration  # the last ε, 8
    print(
        "    calibration by decile at ε=8 (pooled from site aggregates): "
        + " ".join(f"{c.mean_predicted:.3f}/{c.observed_rate:.3f}" for c in cal)
    )
    return Table(
        title="(a) federated DP-SGD vs centralized logistic regression",
        rows=rows,
        columns=(
            "model",
            "ε spent",
            "AUC",
            "AUC gap (mean)",
            "gap range",
            "AUC from site aggregates",
            "Brier",
            "train s",
        ),
        align="lrrrrrrr",
        note=f"Train sites {[len(y) for _, y in nodes]} rows ({y_all.mean():.2%} events), held-out "
        f"{len(y_te):,} rows; {rounds} FedAvg rounds over {len(nodes)} nodes, Opacus RDP, "
        f"δ = {DELTA:g}; the gap is centralized minus federated AUC over {len(seeds)} training "
        "seed(s), the other columns are the first seed's. Calibration by decile at ε = 8 "
        "(mean predicted / observed): "
        + " ".join(f"{c.mean_predicted:.3f}/{c.observed_rate:.3f}" for c in cal)
        + ".",
    )


def _tiled_book(n: int, seed: int) -> pd.DataFrame:
    fed = generate_federation(seed=seed, sites=2, scale=0.5)
    base = pd.concat([s.cohort for s in fed.sites], ignore_index=True)
    reps = int(np.ceil(n / len(base)))
    return pd.concat([base] * reps, ignore_index=True).iloc[:n].reset_index(drop=True)


def _best_of(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_scoring(*, n: int, seed: int) -> Table:
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        pinned = "pinned to 1 CPU"
    except (AttributeError, OSError):
        pinned = "not pinned"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    book = _tiled_book(n, seed)
    x = feature_matrix(book)
    rng = np.random.default_rng(seed)
    print(f"(b) batch scoring, {n:,} people, one core ({pinned}, BLAS 1 thread)")
    rows = []
    for arch in (RiskArch(), RiskArch(kind="mlp", hidden=16)):
        arrays = [rng.normal(scale=0.3, size=s) for s in arch.shapes()]
        model = StoredModel(
            version="bench",
            arrays=arrays,
            record=TrainingRecord(kind=arch.kind, hidden=arch.hidden, rounds=0),
        )
        scorer = Scorer.from_model(model)
        t_mat = _best_of(lambda: scorer.score(x).tiers)
        t_book = _best_of(lambda: score_book(book, scorer), repeats=3)
        print(
            f"    {arch.kind:<8} matrix→prob+tier: {n / t_mat:>12,.0f} people/s "
            f"({t_mat * 1e3:.0f} ms)   DataFrame→scored frame: {n / t_book:>11,.0f} people/s"
        )
        rows.append((arch.kind, f"{n / t_mat:,.0f}", f"{t_mat * 1e3:.0f}", f"{n / t_book:,.0f}"))
    return Table(
        title=f"(b) batch scoring, {n:,} people, one core ({pinned}, BLAS 1 thread)",
        columns=("model", "matrix → prob + tier, people/s", "ms", "DataFrame → scored frame, people/s"),
        rows=rows,
        align="lrrr",
        note="Target: ≥ 500k people/s. Best of 5 (frame: 3).",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_http(*, requests: int, seed: int) -> Table:
    from node.api.auth import add_key

    rehealth = str(Path(sys.executable).parent / "rehealth")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ModelStore(root / "models").save(
            arrays=[np.linspace(-0.5, 0.8, 16).reshape(1, 16), np.array([-3.0])],
            record=TrainingRecord(rounds=0, source="imported"),
        )
        _, key = add_key(root / "keys.toml", role="underwriter")
        book = _tiled_book(1000, seed)
        port = _free_port()
        proc = subprocess.Popen(
            [
                rehealth,
                "node",
                "serve",
                "--model-dir",
                str(root / "models"),
                "--keys-file",
                str(root / "keys.toml"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stderr=subprocess.PIPE,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_healthy(base, proc, timeout_s=60)
            persons = [
                {
                    n: (int(v) if f.kind == "binary" else float(v))
                    for n, f, v in zip(FEATURE_NAMES, FEATURES, row)
                }
                for row in book[list(FEATURE_NAMES)].to_numpy(float)
            ]
            lat, server = [], []
            # A lean keep-alive client (http.client), so the figure is the node's, not httpx's.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            headers = {"X-API-Key": key, "Content-Type": "application/json"}
            bodies = [json.dumps(p).encode() for p in persons]

            def post(path: str, body: bytes) -> tuple[int, str, bytes]:
                conn.request("POST", path, body=body, headers=headers)
                r = conn.getresponse()
                return r.status, r.getheader("server-timing", ""), r.read()

            for i in range(200):  # warm-up
                post("/v1/score", bodies[i % len(bodies)])
            for i in range(requests):
                t0 = time.perf_counter()
                status, timing, data = post("/v1/score", bodies[i % len(bodies)])
                lat.append(time.perf_counter() - t0)
                if status != 200:
                    raise RuntimeError(data.decode())
                server.append(float(timing.split("dur=")[1]))
            batch = json.dumps({"persons": persons}).encode()
            batches = 20
            t0 = time.perf_counter()
            for _ in range(batches):
                status, _, data = post("/v1/score/batch", batch)
                assert status == 200, data.decode()
            t_batch = time.perf_counter() - t0
            conn.close()
            ms = np.array(lat) * 1e3
            load = os.getloadavg()[0]
            print(
                f"(c) real-time over HTTP on loopback, {requests} sequential requests "
                f"(keep-alive; client and server share this machine, load avg {load:.1f})"
            )
            print(
                f"    p50 {np.percentile(ms, 50):.2f} ms   p90 {np.percentile(ms, 90):.2f} ms   "
                f"p99 {np.percentile(ms, 99):.2f} ms   max {ms.max():.2f} ms   (client-observed)"
            )
            sv = np.array(server)
            print(
                f"    p50 {np.percentile(sv, 50):.2f} ms   p90 {np.percentile(sv, 90):.2f} ms   "
                f"p99 {np.percentile(sv, 99):.2f} ms   max {sv.max():.2f} ms   "
                f"(inside the node: Server-Timing)"
            )
            print(
                f"    batch endpoint: {batches} × {len(persons)} persons → "
                f"{batches * len(persons) / t_batch:,.0f} people/s (JSON round trip)"
            )
            pct = lambda a: [f"{np.percentile(a, q):.2f}" for q in (50, 90, 99)] + [f"{a.max():.2f}"]  # noqa: E731
            return Table(
                title=f"(c) real-time scoring over HTTP on loopback, {requests} sequential requests",
                columns=("measured", "p50 ms", "p90 ms", "p99 ms", "max ms"),
                align="lrrrr",
                rows=[
                    ("client-observed (keep-alive)", *pct(ms)),
                    ("inside the node (Server-Timing)", *pct(sv)),
                ],
                note=f"Client and server share the machine (load average {load:.1f} during the "
                f"run). Target: p99 < 10 ms. Batch endpoint: {batches} × {len(persons)} "
                f"persons → {batches * len(persons) / t_batch:,.0f} people/s (JSON round trip).",
            )
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "federated", "scoring", "http"], default="all")
    ap.add_argument("--scale", type=float, default=0.5, help="synthetic federation scale")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--train-seeds", type=int, default=3, help="DP training repeats per ε")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows for batch scoring")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=11)
    add_write_argument(ap, "risk")
    args = ap.parse_args()
    print(
        json.dumps(
            {
                "bench": "risk",
                **vars(args),
                "cpus": os.cpu_count(),
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )
    tables = []
    if args.part in ("all", "federated"):
        tables.append(
            bench_federated(
                scale_=args.scale, rounds=args.rounds, seed=args.seed, seeds=list(range(args.train_seeds))
            )
        )
    if args.part in ("all", "http"):
        tables.append(bench_http(requests=args.requests, seed=args.seed))
    if args.part in ("all", "scoring"):  # last: it pins this process to one CPU
        tables.append(bench_scoring(n=args.rows, seed=args.seed))
    if args.write:
        write_tables(
            "risk" if args.part == "all" else f"risk-{args.part}",
            title="Risk model: federated DP training, batch scoring, HTTP latency",
            tables=tables,
            setting=f"part {args.part}; synthetic federation scale {args.scale:g}, "
            f"{args.rounds} rounds, {args.train_seeds} training seed(s) per ε, "
            f"{args.rows:,} rows for batch scoring, {args.requests} HTTP requests, "
            f"seed {args.seed}",
        )


if __name__ == "__main__":
    main()
