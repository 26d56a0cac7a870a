"""``rehealth coordinator run``: the SuperLink (and its SuperExec) from a coordinator kit.

The SuperLink serves TLS with the kit's certificate, authenticates SuperNodes, and runs
ServerApps in ``process`` isolation next to the SuperExec holding the kit's auth secret — the
command lines are :mod:`shared.flower_commands`', as the loopback launcher's. Once it listens,
every public key in the kit's registered set (``registered/*.pub``) is registered through the
control API; nothing else is. Flower keeps registrations in its database, so each start uses a
fresh one: a key revoked from the kit (``rehealth federation revoke-site``) is then no longer
accepted — a revocation takes effect at the SuperLink's next start (or at once with
``flwr supernode unregister NODE_ID``). A fresh database also forgets the previous run's nodes,
which would otherwise count as online for up to a minute (see :mod:`.launcher`).

Processes are stopped as a whole (SIGTERM, SIGINT or SIGHUP: every process tree, then SIGKILL
after 10 s) and die with this one however it dies (:mod:`.lifetime`).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.federation.control import ControlClient
from coordinator.federation.control_auth import CoordinatorCredential, guarded_superlink
from coordinator.federation.flwr_cli import FlwrClient, flwr_bin, flwr_env
from coordinator.federation.kit_files import CoordinatorKit
from coordinator.federation.launcher import UMASK, _signal, _tree
from coordinator.federation.lifetime import spawn
from coordinator.federation.pki import private_dir
from shared.errors import FederationError, SpecError
from shared.flower_commands import RuntimeTLS, split_address, superexec_command, superlink_command

log = logging.getLogger("rehealth.coordinator.run")


@dataclass(eq=False)
class Coordinator:
    kit: CoordinatorKit
    bind: str | None = None  # the SuperLink's listen host; default the kit address's host
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    registered: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.kit.address

    @property
    def tls(self) -> RuntimeTLS:
        k = self.kit
        for path in (k.ca_cert, k.server_cert, k.server_key, k.superexec_secret):
            if not path.is_file():
                raise SpecError(f"coordinator kit: {path} not found")
        return RuntimeTLS(k.ca_cert, k.server_cert, k.server_key, k.superexec_secret)

    @property
    def client(self) -> FlwrClient:
        """The ``flwr`` CLI pointed at this SuperLink, pinning the kit's CA."""
        return FlwrClient(
            home=private_dir(self.kit.state / "cli"), address=self.address, root_certificates=self.kit.ca_cert
        )

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        logs = private_dir(self.kit.state / "logs")
        with open(logs / f"{name}.log", "ab", opener=_private_opener) as out:
            proc = spawn(
                cmd,
                env=flwr_env(private_dir(self.kit.state / "home" / name), PYTHONUNBUFFERED="1"),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                umask=UMASK,
            )
        self.procs[name] = proc
        log.info("started %s (pid %d), log %s", name, proc.pid, logs / f"{name}.log")
        return proc

    def start(self, timeout_s: float = 30.0) -> None:
        tls = self.tls
        host, port = split_address(self.address)
        state = private_dir(self.kit.state)
        database = state / "superlink.db"
        for suffix in ("", "-wal", "-shm", "-journal"):  # registrations come from the kit alone
            database.with_name(database.name + suffix).unlink(missing_ok=True)
        link = self._spawn(
            "superlink",
            guarded_superlink(
                superlink_command(
                    flwr_bin("flower-superlink"),
                    host=self.bind or host,
                    port=port,
                    database=database,
                    tls=tls,
                ),
                operator_key=self.kit.signing_pub if self.kit.signing_pub.is_file() else None,
            ),
        )
        self._wait_port("superlink", host, port, timeout_s)
        self._spawn(
            "superexec",
            superexec_command(sys.executable, runtime_api=self.address, runtime=tls, parent_pid=link.pid),
        )
        keys = self.kit.registered_sites()
        credential = CoordinatorCredential.from_file(self.kit.superexec_secret)
        with ControlClient(
            self.address, root_certificates=self.kit.ca_cert, credential=credential
        ) as control:
            for site, key in keys.items():  # under the site's name: a missing site is named
                control.register_node(key, site)
        self.registered = sorted(keys)
        log.info(
            "SuperLink on %s (TLS, node auth); registered sites: %s", self.address, ", ".join(self.registered)
        )

    def _wait_port(self, name: str, host: str, port: int, timeout_s: float) -> None:
        import socket

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check()
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise FederationError(f"{name} did not listen on {host}:{port} within {timeout_s:.0f} s")

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                logfile = self.kit.state / "logs" / f"{name}.log"
                raise FederationError(f"{name} exited with code {proc.returncode}; see {logfile}")

    def run_forever(self, poll_s: float = 0.5) -> None:
        received: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda s, _f: received.append(s))
        while not received:
            self.check()
            time.sleep(poll_s)
        log.info("received %s: stopping", signal.Signals(received[0]).name)

    def stop(self) -> None:
        import psutil

        tree = [p for proc in self.procs.values() for p in _tree(proc.pid)]
        for p in tree:
            _signal(p, signal.SIGTERM)
            _signal(p, signal.SIGCONT)
        _gone, alive = psutil.wait_procs(tree, timeout=10)
        for p in alive:
            _signal(p, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
        for proc in self.procs.values():
            proc.wait(timeout=5)
        self.procs.clear()


def _private_opener(path, flags):
    import os

    return os.open(path, flags, 0o600)


def run(kit: Path, *, bind: str | None = None, console: str | None = None, console_tls: bool = False) -> int:
    """Serve the SuperLink from ``kit`` until a signal; with ``console`` (host:port) also the
    operator console over the kit's provisioning folder (:mod:`coordinator.console`)."""
    from shared.errors import ReHealthError

    coord = Coordinator(CoordinatorKit(Path(kit).resolve()), bind=bind)
    web = None
    try:
        coord.start()
        if console:
            from coordinator.console.cli import start_in_thread

            web = start_in_thread(coord.kit.root.parent, console, tls=console_tls)
        coord.run_forever()
        return 0
    except ReHealthError as e:
        log.error("%s", e)
        return 1
    finally:
        if web is not None:
            web.should_exit = True
            web.thread.join(timeout=10)
        coord.stop()
