"""Run a node's long-lived processes in the foreground and take them all down together.

``rehealth node run`` starts a SuperNode, its SuperExec (whose children are the ClientApp
processes) and optionally the scoring API. A service manager (systemd, a container runtime)
stops the node with SIGTERM and expects every child to go with it: Flower detaches its app
processes into sessions of their own, so a process group is not enough — :meth:`stop` walks
each child's process tree. A supervisor that dies without running it (SIGKILL) still leaves
nothing behind: each child carries a parent-death signal (Linux ``PR_SET_PDEATHSIG``), set in
the child before ``exec`` (all children are forked from the main thread, which lives as long
as the supervisor). If any child exits on its own, the others are stopped and the node exits
non-zero: a half-running node (a SuperNode without its SuperExec) answers nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import psutil

log = logging.getLogger("rehealth.node.run")
PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _dies_with(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        if _libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(126)
        os.umask(0o077)  # every file a child writes (Flower's state, installed bundles): owner only

    return preexec


class ChildExited(RuntimeError):
    """A supervised process ended (or never listened) while the node was meant to run."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass
class Supervisor:
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    received: list[int] = field(default_factory=list)  # stop signals seen

    def install_signals(self) -> None:
        """SIGTERM, SIGINT and SIGHUP ask the supervisor to stop (seen by :meth:`run_forever`
        and :meth:`sleep`); the children are stopped by the caller's :meth:`stop`."""

        def on_signal(signum, _frame) -> None:
            self.received.append(signum)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)

    def sleep(self, seconds: float) -> bool:
        """Sleep unless a stop signal arrives; False if one did."""
        deadline = time.monotonic() + seconds
        while not self.received and time.monotonic() < deadline:
            time.sleep(0.1)
        return not self.received

    def spawn(self, name: str, cmd: list[str], *, env: dict, log_path=None) -> subprocess.Popen:
        """Start ``cmd`` in a session of its own; output to ``log_path`` (0600) or inherited."""
        out = None
        if log_path is not None:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            out = os.fdopen(fd, "ab")
        try:
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
                preexec_fn=_dies_with(os.getpid()),
            )
        finally:
            if out is not None:
                out.close()
        self.procs[name] = proc
        log.info("started %s (pid %d)", name, proc.pid)
        return proc

    def wait_port(self, name: str, host: str, port: int, timeout_s: float = 30.0) -> None:
        """Until ``host:port`` accepts connections; ChildExited if ``name`` exits first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check()
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise ChildExited(name, f"{name} did not listen on {host}:{port} within {timeout_s:.0f} s")

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ChildExited(name, f"{name} exited with code {proc.returncode}")

    def run_forever(self, poll_s: float = 0.5) -> None:
        """Block until a child exits (ChildExited) or a stop signal arrives (returns); call
        :meth:`install_signals` first."""
        while not self.received:
            self.check()
            time.sleep(poll_s)
        log.info("received %s: stopping", signal.Signals(self.received[0]).name)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every child's whole tree, SIGKILL what is left after ``timeout_s``."""
        tree = []
        for proc in self.procs.values():
            try:
                root = psutil.Process(proc.pid)
                tree += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        if not tree:
            return
        for p in tree:
            _send(p, signal.SIGTERM)
            _send(p, signal.SIGCONT)
        _gone, alive = psutil.wait_procs(tree, timeout=timeout_s)
        for p in alive:
            _send(p, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.error("%s (pid %d) did not exit", name, proc.pid)
        log.info("stopped %d processes", len(tree))
        self.procs.clear()


def _send(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.NoSuchProcess:
        pass
