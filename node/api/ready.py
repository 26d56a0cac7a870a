"""Wait until a node API process answers its health check (tests, benchmarks, launchers)."""

from __future__ import annotations

import subprocess
import time

import httpx


def wait_until_healthy(base_url: str, proc: subprocess.Popen, *, timeout_s: float = 90.0) -> None:
    """Poll ``GET /v1/health`` until it answers 200.

    Raises:
        RuntimeError: the process exited or the deadline passed; carries the tail of its stderr.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base_url}/v1/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.communicate()[1] if proc.stderr is not None else b""
            raise RuntimeError(
                f"node API at {base_url} did not start: {(err or b'').decode(errors='replace')[-2000:]}"
            )
        time.sleep(0.2)
