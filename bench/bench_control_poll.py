"""What watching a run costs: a status poll in process vs a ``flwr ls`` process, and how late
the ServerApp's events reach the operator through the run's log stream.

Starts a TLS SuperLink on 127.0.0.1 (no SuperNodes: nothing here needs one) and

* polls a run's status ``--polls`` times through the in-process Control API client
  (:mod:`coordinator.federation.control`) and 3 times through ``flwr ls`` subprocesses (what the
  runner did before), printing CPU and wall time per poll (the child's CPU from ``RUSAGE_CHILDREN``);
* runs a probe ServerApp that emits ``--events`` events (:mod:`coordinator.federation.run_events`)
  ``--spacing`` seconds apart and follows them with the runner's :func:`follow_run`, printing the
  delay from ``emit`` to arrival (Flower uploads the log every 0.2 s and streams it every 0.5 s).

    PYTHONPATH=. .venv/bin/python bench/bench_control_poll.py
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

APP = textwrap.dedent("""
    import time
    from flwr.serverapp import ServerApp
    from coordinator.federation import run_events

    server = ServerApp()

    @server.main()
    def main(grid, context):
        run_events.install_output_guard()
        n, spacing = int(context.run_config["events"]), float(context.run_config["spacing"])
        for i in range(n):
            run_events.emit("tick", {"i": i})
            time.sleep(spacing)
        run_events.emit("done", {"result": {}})
""")

PYPROJECT = textwrap.dedent("""
    [build-system]
    requires = ["hatchling"]
    build-backend = "hatchling.build"
    [project]
    name = "pollprobe"
    version = "0.1.0"
    dependencies = []
    [tool.flwr.app]
    publisher = "bench"
    [tool.flwr.app.components]
    serverapp = "pollprobe_app:server"
    clientapp = "pollprobe_app:server"
    [tool.flwr.app.config]
    events = 20
    spacing = 0.3
""")


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--polls", type=int, default=200)
    ap.add_argument("--events", type=int, default=20)
    ap.add_argument("--spacing", type=float, default=0.3)
    args = ap.parse_args()

    from coordinator.federation.flwr_cli import CONNECTION
    from coordinator.federation.launcher import LocalFederation
    from coordinator.study.runner import follow_run
    from shared.errors import FederationError

    with tempfile.TemporaryDirectory() as tmp, LocalFederation(Path(tmp) / "fed", []) as fed:
        app = Path(tmp) / "app"
        app.mkdir()
        (app / "pyproject.toml").write_text(PYPROJECT)
        (app / "pollprobe_app.py").write_text(APP)
        control = fed.control
        t0 = time.perf_counter()
        run_id = control.start_run(app, {"events": args.events, "spacing": args.spacing})
        started_s = time.perf_counter() - t0
        outcome = follow_run(control, run_id, timeout_s=300)
        delays = [d for ev, d in zip(outcome.events, outcome.delays_s) if ev["event"] == "tick"]

        control.status(run_id)  # connection up
        cpu, wall = _cpu(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(args.polls):
            control.status(run_id)
        cpu_in = (_cpu(resource.RUSAGE_SELF) - cpu) / args.polls
        wall_in = (time.perf_counter() - wall) / args.polls

        client = fed.client
        cpu, wall = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
        for _ in range(3):  # the SuperLink refuses `flwr ls` (no control token): the process costs the same
            try:
                client.json("list", CONNECTION, "--run-id", str(run_id))
            except FederationError:
                pass
        cpu_proc = (_cpu(resource.RUSAGE_CHILDREN) - cpu) / 3
        wall_proc = (time.perf_counter() - wall) / 3

    print(f"start_run (in process, FAB built and sent): {started_s * 1000:.0f} ms")
    print(f"status poll in process ({args.polls}×): CPU {cpu_in * 1000:.2f} ms, wall {wall_in * 1000:.1f} ms")
    print(f"status poll as a `flwr ls` process (3×): CPU {cpu_proc * 1e3:.0f} ms")
    print(f"  wall {wall_proc * 1e3:.0f} ms")
    print(f"run {run_id}: {outcome.status}; {len(delays)} events emitted {args.spacing:g} s apart")
    if delays:
        q = statistics.quantiles(delays, n=10)
        print(
            f"event delay emit→operator: median {statistics.median(delays):.2f} s, "
            f"p10 {q[0]:.2f} s, p90 {q[-1]:.2f} s, max {max(delays):.2f} s"
        )


if __name__ == "__main__":
    main()
