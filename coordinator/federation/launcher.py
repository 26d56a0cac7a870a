"""Start a Flower SuperLink and N SuperNodes on 127.0.0.1, and stop them all cleanly.

Each process gets its own ``FLWR_HOME``, a free port and a log file under the work folder. They
run in their own process groups; :meth:`LocalFederation.stop` terminates every group (then kills
what remains), and is called on exit, on SIGINT/SIGTERM/SIGHUP and when the ``with`` block
fails. A launcher that dies without running any of that (SIGKILL, a crash) still leaves nothing:
every process it starts carries a parent-death signal (:mod:`.lifetime`), and so does every app
process our SuperExec starts (:mod:`.superexec`), so the kernel takes the whole federation down
with it. Each start uses a fresh SuperLink database (a previous run's nodes, still "online" in
the old one for up to a minute, would be addressed and fail as "Node Unavailable"), and
SuperNodes heartbeat every ~4 s so a dead one is noticed within
:data:`~coordinator.federation.supernode.DETECTION_BOUND_S` (:mod:`.supernode`).

>>> with LocalFederation(workdir, [NodeSpec("a", {"data-path": "/d/a.csv"})]) as fed:  # doctest: +SKIP
...     run_id = fed.control.start_run(app_dir, {"spec": spec_json, "grant": grant})
...     fed.control.status(run_id)

The control plane is authenticated by default (``deploy/TRUST.md``, "Control plane"): at start
the launcher generates a CA, a server certificate and one key per node (:mod:`.pki`); the
SuperLink serves TLS only, accepts only SuperNodes whose keys it registered, and runs in
``process`` isolation next to a SuperExec the launcher starts with the federation's auth secret
(Flower ignores the secret in its default ``subprocess`` isolation). Each SuperNode does the same
for its own Runtime API. App processes get their run tokens through a file descriptor
(:mod:`.superexec`), never on a command line. Every file the federation writes is 0600 in 0700
folders (the processes run under umask 077). ``insecure=True`` restores Flower's plaintext,
unauthenticated setup for debugging only; nothing in the product passes it.
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

from coordinator.federation.control import ControlClient
from coordinator.federation.control_auth import CoordinatorCredential, guarded_superlink
from coordinator.federation.flwr_cli import FlwrClient, flwr_bin, flwr_env
from coordinator.federation.lifetime import spawn
from coordinator.federation.pki import FederationPKI, private_dir, write_private
from coordinator.federation.supernode import PULL_IDLE_ENV, PULL_IDLE_S
from shared.errors import FederationError
from shared.flower_commands import (
    FLOWER_PACE_ENV,
    TASK_POLL_ENV,
    RuntimeTLS,
    superexec_command,
    superlink_command,
    supernode_command,
    supernode_script_text,
)

log = logging.getLogger("rehealth.launcher")
HOST = "127.0.0.1"
UMASK = 0o077  # Flower's state, logs and installed bundles: owner only


#: Nodes one machine runs at our base pace (``FLOWER_PACE_ENV``, the SuperNode's idle pull): with
#: eight idle nodes their polls took 40 % of a core (docs/benchmarks/roundtrip.md).
PACE_NODES = 8


def pace_env(nodes: int) -> dict[str, str]:
    """The poll intervals for a federation of ``nodes`` SuperNodes on this one machine.

    Every SuperExec asks its Runtime API for a task every 0.1 s and every idle SuperNode asks
    the SuperLink for a message every 0.25 s; both cost CPU per node, all on this machine. Twenty
    nodes at that pace kept a whole core busy while idle (SuperNodes 66 %, SuperExecs 24 %,
    SuperLink 15 %, measured with 20 firms), which every round's work then queued behind. Up to
    :data:`PACE_NODES` nodes keep the base pace; beyond, both intervals grow in proportion, so
    the polls' total cost stays that of eight nodes, at ≈ 0.3 s more latency per message hop for
    twenty."""
    factor = max(1.0, nodes / PACE_NODES)
    base_poll = float(FLOWER_PACE_ENV[TASK_POLL_ENV])
    return {TASK_POLL_ENV: f"{base_poll * factor:.3g}", PULL_IDLE_ENV: f"{PULL_IDLE_S * factor:.3g}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


__all__ = ["HOST", "LocalFederation", "NodeSpec", "free_port", "pace_env"]


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
    insecure: bool = False  # opt-out for debugging: plaintext, no node auth, no auth secret
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    port: int = 0
    startup_s: float = 0.0
    pki: FederationPKI | None = None
    _control: ControlClient | None = field(default=None, repr=False)

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "LocalFederation":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _env(self, home_name: str, guarded: bool = False) -> dict:
        home = private_dir(self.workdir / "flwr-home" / home_name)
        env = flwr_env(home, PYTHONUNBUFFERED="1", **{**pace_env(len(self.nodes)), **self.env_extra})
        if guarded:
            env["PATH"] = f"{self._guard_bin()}{os.pathsep}{env['PATH']}"
        return env

    def _guard_bin(self) -> Path:
        """A folder whose ``flwr-clientapp`` is the node's guarded runtime
        (:mod:`node.flower.guard`), put first on SuperNodes' PATH."""
        folder = private_dir(self.workdir / "guard-bin")
        link = folder / "flwr-clientapp"
        if not link.exists():
            link.symlink_to(flwr_bin("rehealth-clientapp"))
        return folder

    def _spawn(
        self,
        name: str,
        cmd: list[str],
        *,
        guarded: bool = False,
        home: str | None = None,
        log_name: str | None = None,
    ) -> subprocess.Popen:
        logs = private_dir(self.workdir / "logs")
        fd = os.open(logs / f"{log_name or name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as out:
            proc = spawn(  # dies with this process, however it dies
                cmd,
                env=self._env(home or name, guarded),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                umask=UMASK,
            )
        self.procs[name] = proc
        return proc

    def start(self, *, timeout_s: float = 30.0) -> None:
        started = time.perf_counter()
        private_dir(self.workdir)
        _register_cleanup(self)
        self.port = free_port()
        database = self.workdir / "superlink.db"
        for suffix in ("", "-wal", "-shm", "-journal"):  # fresh Flower state: no previous run's nodes
            database.with_name(database.name + suffix).unlink(missing_ok=True)
        if not self.insecure:
            self.pki = FederationPKI.create(self.workdir / "pki", [n.site for n in self.nodes])
        self._spawn(
            "superlink",
            guarded_superlink(
                superlink_command(
                    flwr_bin("flower-superlink"),
                    host=HOST,
                    port=self.port,
                    database=database,
                    tls=None if self.insecure else self._runtime_tls,
                ),
                operator_key=self.operator_key,
            ),
        )
        self._wait_port(self.port, "superlink", timeout_s)
        if not self.insecure:
            self._spawn_superexec(
                "superexec-superlink", self.port, parent="superlink", home="superexec-superlink"
            )
            for node in self.nodes:  # in-process Control API calls: milliseconds each
                self.register_node(node.site)
        ports = {node.site: self._start_supernode(node) for node in self.nodes}
        if not self.insecure:
            for node in self.nodes:
                self._start_node_superexec(node.site, ports[node.site], timeout_s)
        self.startup_s = time.perf_counter() - started
        log.info(
            "federation up on %s:%d with %d nodes in %.1f s (%s)",
            HOST,
            self.port,
            len(self.nodes),
            self.startup_s,
            "INSECURE" if self.insecure else "TLS",
        )

    @property
    def _pki(self) -> FederationPKI:
        """The PKI, which only a started TLS federation has (``start`` creates it)."""
        if self.pki is None:
            raise FederationError("no PKI: the federation is insecure or not started")
        return self.pki

    @property
    def _runtime_tls(self) -> RuntimeTLS:
        """The federation's certificate and auth secret, for every Runtime API it runs."""
        pki = self._pki
        return RuntimeTLS(pki.ca_cert, pki.server_cert, pki.server_key, pki.superexec_secret)

    def _spawn_superexec(
        self,
        name: str,
        runtime_port: int,
        *,
        parent: str,
        home: str,
        guarded: bool = False,
        log_name: str | None = None,
    ) -> subprocess.Popen:
        """The SuperExec for one Runtime API (the SuperLink's or a SuperNode's), holding the
        auth secret, handing tokens to app processes through a descriptor; it exits with its
        parent."""
        return self._spawn(
            name,
            superexec_command(
                sys.executable,
                runtime_api=f"{HOST}:{runtime_port}",
                runtime=self._runtime_tls,
                parent_pid=self.procs[parent].pid,
            ),
            guarded=guarded,
            home=home,
            log_name=log_name,
        )

    def register_node(self, site: str) -> None:
        """Register ``site``'s public key with the SuperLink under the site's name (a node whose
        key is not registered cannot join; the name lets a missing site be named)."""
        key = self._pki.add_node(site)
        self.control.register_node(key.public_key, site)

    def start_node(self, node: NodeSpec, *, timeout_s: float = 30.0) -> subprocess.Popen:
        """Start one SuperNode (with its SuperExec) against the running SuperLink; its key must
        be registered (:meth:`register_node`)."""
        port = self._start_supernode(node)
        if not self.insecure:
            self._start_node_superexec(node.site, port, timeout_s)
        return self.procs[f"supernode-{node.site}"]

    def _start_supernode(self, node: NodeSpec) -> int:
        """Spawn the SuperNode process; returns the port of its Runtime API."""
        port = free_port()
        key = None if self.insecure else self._pki.add_node(node.site).private_key
        self._spawn(
            f"supernode-{node.site}",
            supernode_command(
                sys.executable,
                self._supernode_script(),
                superlink=f"{HOST}:{self.port}",
                host=HOST,
                port=port,
                node_config={"site": node.site, **node.config},
                root_certificates=None if self.insecure else self._pki.ca_cert,
                private_key=key,
                runtime=None if self.insecure else self._runtime_tls,
            ),
            guarded=self.guarded,
        )
        return port

    def _supernode_script(self) -> Path:
        """A script named ``flower-supernode`` that runs :mod:`.supernode` (Flower's SuperNode
        with a 10 s heartbeat); run by this Python, so it needs no exec bit (0600 like every
        file of the federation), and ``ps`` shows a ``flower-supernode`` as before."""
        path = private_dir(self.workdir / "supernode-bin") / "flower-supernode"
        if not path.exists():
            write_private(path, supernode_script_text())
        return path

    def _start_node_superexec(self, site: str, port: int, timeout_s: float) -> None:
        """The node's SuperExec: its ClientApp processes are the SuperExec's children, so it
        gets the SuperNode's PATH (the guard first), FLWR_HOME and log."""
        name = f"supernode-{site}"
        self._wait_port(port, name, timeout_s)
        self._spawn_superexec(
            f"superexec-{site}", port, parent=name, home=name, guarded=self.guarded, log_name=name
        )

    def kill_node(self, site: str) -> None:
        """Kill one SuperNode and its ClientApp processes at once (fault tests)."""
        procs = [self.procs.pop(n) for n in (f"supernode-{site}", f"superexec-{site}") if n in self.procs]
        tree = [p for proc in procs for p in _tree(proc.pid)]
        for p in tree:
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(tree, timeout=10)
        for proc in procs:
            proc.wait(timeout=5)

    def stop(self) -> None:
        """Terminate every launched process and all their descendants (Flower detaches its
        SuperExec and app processes into sessions of their own, so process groups are not
        enough); kill what is still alive after 10 s. Our Control API client is closed first:
        its open connection holds the SuperLink's graceful shutdown until the kill (10 s)."""
        if self._control is not None:
            self._control.close()
            self._control = None
        tree = [p for proc in self.procs.values() for p in _tree(proc.pid)]
        for p in tree:
            _signal(p, signal.SIGTERM)
            _signal(p, signal.SIGCONT)  # a stopped (SIGSTOP) process acts on SIGTERM only once resumed
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
                raise FederationError(
                    f"{name} exited with code {proc.returncode}; see "
                    f"{self.workdir / 'logs' / (name + '.log')}"
                )
            try:
                with socket.create_connection((HOST, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise FederationError(f"{name} did not listen on {HOST}:{port} within {timeout_s:.0f} s")

    @property
    def control(self) -> ControlClient:
        """This federation's Control API, in process (:mod:`.control`); one client per
        federation, closed by :meth:`stop`."""
        if self._control is None:
            self._control = ControlClient(
                f"{HOST}:{self.port}",
                root_certificates=None if self.insecure else self._pki.ca_cert,
                insecure=self.insecure,
                credential=None if self.insecure else self.coordinator_credential,
            )
        return self._control

    @property
    def operator_key(self) -> Path | None:
        """The operator's public key the SuperLink pins for operator tokens: the study key the
        nodes pin (their ``coordinator-key``), so the operator who signs studies can also run
        them from another machine (``study run --superlink``)."""
        pinned = {str(n.config["coordinator-key"]) for n in self.nodes if n.config.get("coordinator-key")}
        return Path(pinned.pop()) if len(pinned) == 1 else None

    @property
    def coordinator_credential(self) -> CoordinatorCredential:
        """The coordinator's own Control API tokens, keyed by this federation's SuperExec secret."""
        return CoordinatorCredential.from_file(self._pki.superexec_secret)

    @property
    def client(self) -> FlwrClient:
        """The ``flwr`` CLI pointed at this federation's SuperLink."""
        return FlwrClient(
            home=private_dir(self.workdir / "flwr-home" / "cli"),
            address=f"{HOST}:{self.port}",
            root_certificates=None if self.insecure else self._pki.ca_cert,
            insecure=self.insecure,
        )


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
    """Stop every launched process at interpreter exit and on SIGTERM or SIGHUP (a closed
    terminal), exiting 128 + the signal; SIGINT raises KeyboardInterrupt, which unwinds through
    ``__exit__``. (SIGKILL runs nothing: the parent-death signal covers it.)"""
    if not _CLEANUP:
        atexit.register(_stop_all)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _stop_and_exit)
    _CLEANUP.add(fed)


def _stop_and_exit(signum: int, _frame) -> None:
    _stop_all()
    sys.exit(128 + signum)
