"""The ``flwr`` CLI as the coordinator uses it: submit a run, poll its status, read its logs.

A ServerApp reaches a real SuperLink only through ``flwr run``; its connection lives in
``$FLWR_HOME/config.toml`` (written here), never in the app's pyproject (``flwr run`` would
rewrite it). ``flwr run --stream`` exits 0 even when the ServerApp failed, so we poll the
run's status instead.

The connection is TLS: against ``root_certificates`` (a pinned CA, as the local launcher
generates) or, without it, the system's roots. Plaintext only with ``insecure=True``, an explicit
opt-out. The CLI's own files (config, run configs, what ``flwr`` writes under its home) are 0600.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from coordinator.federation.lifetime import spawn
from coordinator.federation.pki import private_dir, write_private
from shared.errors import FederationError
from shared.flower_commands import FLOWER_PACE_ENV, toml_value

__all__ = ["CONNECTION", "FlwrClient", "flwr_bin", "flwr_env", "toml_value"]

CONNECTION = "rehealth"


def flwr_bin(name: str) -> str:
    """A Flower executable from the same environment as this Python."""
    cand = Path(sys.executable).with_name(name)
    return str(cand) if cand.exists() else name


def flwr_env(home: Path, **extra: str) -> dict:
    """Environment for a Flower process: its own FLWR_HOME, this venv's bin first on PATH
    (Flower spawns flower-superexec / flwr-clientapp by name), no telemetry."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {
        **os.environ,
        "FLWR_HOME": str(home),
        "PATH": path,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        **FLOWER_PACE_ENV,
        **extra,  # may set its own pace
    }


@dataclass(frozen=True)
class FlwrClient:
    home: Path
    address: str
    root_certificates: Path | None = None  # CA to pin; None = the system's roots
    insecure: bool = False  # plaintext, no server authentication: debugging only

    def __post_init__(self) -> None:
        if self.insecure and self.root_certificates:
            raise FederationError("a connection is either insecure or pins root certificates")
        private_dir(self.home)
        tls = (
            f'root-certificates = "{self.root_certificates}"\n'
            if self.root_certificates
            else "insecure = true\n"
            if self.insecure
            else ""
        )
        write_private(
            self.home / "config.toml",
            (
                f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                f'address = "{self.address}"\n{tls}'
            ).encode(),
        )

    def _run(self, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
        """``flwr ARGS``, killed after ``timeout_s`` and with this process (a ``flwr list``
        polling a SuperLink must not outlive a coordinator that was killed)."""
        cmd = [flwr_bin("flwr"), *args]
        with spawn(
            cmd,
            env=flwr_env(self.home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
            umask=0o077,
        ) as proc:
            try:
                out, err = proc.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def json(self, *args: str, timeout_s: float = 60.0) -> dict:
        """Run ``flwr ARGS --format json``; its parsed output, or a FederationError."""
        cp = self._run(*args, "--format", "json", timeout_s=timeout_s)
        try:
            out = json.loads(cp.stdout)
        except json.JSONDecodeError:
            raise FederationError(
                f"flwr {args[0]} failed (exit {cp.returncode}): {(cp.stdout + cp.stderr).strip()[-800:]}"
            ) from None
        if not out.get("success", cp.returncode == 0):
            raise FederationError(f"flwr {args[0]} failed: {out.get('error-message', out)}")
        return out

    def submit(self, app_dir: Path, run_config: dict) -> int:
        """Submit a run of the app in ``app_dir``; returns its run id. The run configuration
        travels as a TOML file (any string, JSON included, survives quoting)."""
        import hashlib

        import tomli_w

        blob = tomli_w.dumps(run_config)
        cfg = self.home / f"run-config-{hashlib.sha256(blob.encode()).hexdigest()[:16]}.toml"
        write_private(cfg, blob.encode())
        out = self.json("run", str(app_dir), CONNECTION, "--run-config", str(cfg))
        return int(out["run-id"])

    def status(self, run_id: int) -> str:
        runs = self.json("list", CONNECTION, "--run-id", str(run_id)).get("runs") or []
        return str(runs[0].get("status", "")) if runs else ""

    def wait(self, run_id: int, *, timeout_s: float = 600.0, poll_s: float = 2.0, on_poll=None) -> str:
        """Poll until the run finishes; returns its final status (e.g. ``finished:completed``).

        Each poll is a ``flwr list`` process (~1.3 s of CPU for its imports): polled every
        0.5 s they took most of a core from the federation being waited for (on a 2-core
        machine, the SuperLink, SuperNodes and their app processes)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status(run_id)
            if status.startswith("finished"):
                return status
            if on_poll:
                on_poll(status)
            time.sleep(poll_s)
        raise FederationError(f"run {run_id} did not finish within {timeout_s:.0f} s")

    def stop(self, run_id: int) -> None:
        self._run("stop", str(run_id), CONNECTION)

    def logs(self, run_id: int) -> str:
        cp = self._run("log", str(run_id), CONNECTION, "--show")
        return cp.stdout + cp.stderr
