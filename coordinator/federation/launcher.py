"""Start a Flower SuperLink and N SuperNodes on 127.0.0.1, and stop them all cleanly.

Each process gets its own ``FLWR_HOME``, a free port and a log file under the work folder. They
run in their own process groups; :meth:`LocalFederation.stop` terminates every group (then kills
what remains), and is called on exit, on SIGINT/SIGTERM and when the ``with`` block fails, so no
process outlives the launcher.

>>> with LocalFederation(workdir, [NodeSpec("a", {"data-path": "/d/a.csv"})]) as fed:  # doctest: +SKIP
...     run_id = fed.client.submit(app_dir, {"spec-path": "/d/study.toml", "out-dir": "/d/out"})
...     fed.client.wait(run_id)
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from coordinator.federation.flwr_cli import FlwrClient, flwr_bin, flwr_env, toml_value
from shared.errors import FederationError

log = logging.getLogger("rehealth.launcher")
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def node_config_arg(cfg: dict) -> str:
    """``--node-config`` string: space-separated TOML key=value pairs."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in cfg.items())


@dataclass(frozen=True)
class NodeSpec:
    site: str
    config: dict  # node config besides the site, e.g. {"data-path": ..., "state-dir": ...}


@dataclass(eq=False)
class LocalFederation:
    workdir: Path
    nodes: list[NodeSpec]
    env_extra: dict = field(default_factory=dict)
    guarded: bool = True  # SuperNodes run app bundles only through node.flower.guard
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    port: int = 0
    startup_s: float = 0.0

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "LocalFederation":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _env(self, name: str, guarded: bool = False) -> dict:
        home = self.workdir / "flwr-home" / name
        home.mkdir(parents=True, exist_ok=True)
        env = flwr_env(home, PYTHONUNBUFFERED="1", **self.env_extra)
        if guarded:
            env["PATH"] = f"{self._guard_bin()}{os.pathsep}{env['PATH']}"
        return env

    def _guard_bin(self) -> Path:
        """A folder whose ``flwr-clientapp`` is the node's guarded runtime
        (:mod:`node.flower.guard`), put first on SuperNodes' PATH."""
        folder = self.workdir / "guard-bin"
        link = folder / "flwr-clientapp"
        if not link.exists():
            folder.mkdir(parents=True, exist_ok=True)
            link.symlink_to(flwr_bin("rehealth-clientapp"))
        return folder

    def _spawn(self, name: str, cmd: list[str], *, guarded: bool = False) -> subprocess.Popen:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, env=self._env(name, guarded), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        self.procs[name] = proc
        return proc

    def start(self, *, timeout_s: float = 30.0) -> None:
        started = time.perf_counter()
        self.workdir.mkdir(parents=True, exist_ok=True)
        _register_cleanup(self)
        self.port = free_port()
        self._spawn("superlink", [
            flwr_bin("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
            "--host", HOST, "--port", str(self.port),
            "--database", str(self.workdir / "superlink.db"),
        ])
        self._wait_port(self.port, "superlink", timeout_s)
        for node in self.nodes:
            self.start_node(node)
        self.startup_s = time.perf_counter() - started
        log.info("federation up on %s:%d with %d nodes in %.1f s", HOST, self.port,
                 len(self.nodes), self.startup_s)

    def start_node(self, node: NodeSpec) -> subprocess.Popen:
        cfg = {"site": node.site, **node.config}
        return self._spawn(f"supernode-{node.site}", [
            flwr_bin("flower-supernode"), "--insecure", "--superlink", f"{HOST}:{self.port}",
            "--host", HOST, "--port", str(free_port()),
            "--node-config", node_config_arg(cfg),
        ], guarded=self.guarded)

    def kill_node(self, site: str) -> None:
        """Kill one SuperNode and its ClientApp processes at once (fault tests)."""
        proc = self.procs.pop(f"supernode-{site}")
        tree = _tree(proc.pid)
        for p in tree:
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(tree, timeout=10)
        proc.wait(timeout=5)

    def stop(self) -> None:
        """Terminate every launched process and all their descendants (Flower detaches its
        SuperExec and app processes into sessions of their own, so process groups are not
        enough); kill what is still alive after 10 s."""
        tree = [p for proc in self.procs.values() for p in _tree(proc.pid)]
        for p in tree:
            _signal(p, signal.SIGTERM)
        _gone, alive = psutil.wait_procs(tree, timeout=10)
        for p in alive:
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
        for proc in self.procs.values():
            proc.wait(timeout=5)
        self.procs.clear()
        _CLEANUP.discard(self)

    def _wait_port(self, port: int, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise FederationError(f"{name} exited with code {proc.returncode}; see "
                                      f"{self.workdir / 'logs' / (name + '.log')}")
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise FederationError(f"{name} did not listen on {HOST}:{port} within {timeout_s:.0f} s")

    @property
    def client(self) -> FlwrClient:
        """The ``flwr`` CLI pointed at this federation's SuperLink."""
        return FlwrClient(home=self.workdir / "flwr-home" / "cli", address=f"{HOST}:{self.port}")


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


_CLEANUP: set[LocalFederation] = set()


def _stop_all(*_):
    for fed in list(_CLEANUP):
        fed.stop()


def _register_cleanup(fed: LocalFederation) -> None:
    """Stop every launched process at interpreter exit and on SIGTERM (SIGINT raises
    KeyboardInterrupt, which unwinds through ``__exit__``)."""
    if not _CLEANUP:
        atexit.register(_stop_all)
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, lambda *a: (_stop_all(), sys.exit(143)))
    _CLEANUP.add(fed)


def main(argv: list[str] | None = None) -> int:
    """``python -m coordinator.federation.launcher --spec study.toml [--workdir D]``: start a
    SuperLink and one SuperNode per site of the spec on 127.0.0.1, print the address to submit
    studies to, and keep them up until Ctrl-C (then stop them all)."""
    import argparse

    from shared.study import StudySpec

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--spec", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, default=Path("local-federation"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from coordinator.study.runner import site_nodes

    spec = StudySpec.from_toml(args.spec)
    workdir = args.workdir.resolve()
    with LocalFederation(workdir, site_nodes(spec, workdir)) as fed:
        print(f"SuperLink on {HOST}:{fed.port} with {len(fed.nodes)} SuperNodes "
              f"({', '.join(n.site for n in fed.nodes)}); logs in {workdir / 'logs'}", flush=True)
        print(f"run a study:  rehealth study run --spec {args.spec} --superlink {HOST}:{fed.port}",
              flush=True)
        try:
            while all(p.poll() is None for p in fed.procs.values()):
                time.sleep(1)
            print("a federation process exited; stopping", flush=True)
            return 1
        except KeyboardInterrupt:
            print("stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
