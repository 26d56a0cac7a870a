"""Is the node API up, and is it ready? Liveness and readiness, from both sides.

:func:`wait_until_healthy` is the client's side (tests, benchmarks, launchers: wait until a
started API process answers); :class:`ReadinessProbe` is the server's (``/readyz``).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import httpx

log = logging.getLogger("rehealth.api.ready")


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


# -- readiness (served as /readyz) -------------------------------------------------------------
@dataclass(frozen=True)
class Readiness:
    """The outcome of one readiness check: ready, and each check's word (``ok``, ``failed``,
    ``exhausted``, ``not configured``). The words are all a prober sees; the reason behind a
    failure (a path, a driver's message) goes to the node's log only."""

    ready: bool
    checks: dict[str, str]


class ReadinessProbe:
    """Is this API able to do its work: does the store open, does the model score, is the
    population's privacy budget not exhausted?

    Liveness (``/livez``) is only "the process answers"; a node that is alive but not ready
    (store gone, budget spent) should be taken out of a load balancer, not restarted.

    Args:
        model_ok: scores a reference person; ``True`` if the result is a finite probability.
        store_url: the node's store (``store_url`` in node.toml); opened once fully checked
            (:func:`node.store.open_store`, without creating one), then pinged per check.
        budget_left: ε the ledger still allows (``None``: no ledger at this API).
        ttl_s: a result is reused this long, so probes and scrapes cost no more than this.
    """

    def __init__(
        self,
        *,
        model_ok: Callable[[], bool],
        store_url: str | None = None,
        budget_left: Callable[[], float] | None = None,
        ttl_s: float = 2.0,
    ):
        self.model_ok, self.store_url, self.budget_left, self.ttl_s = model_ok, store_url, budget_left, ttl_s
        self._store: Any = None
        self._last: tuple[float, Readiness] | None = None
        self._lock = threading.Lock()

    def _check_store(self) -> str:
        if self.store_url is None:
            return "not configured"
        from sqlalchemy import text

        from node.store import open_store

        try:
            if self._store is None:
                self._store = open_store(self.store_url, create=False)
            with self._store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return "ok"
        except Exception as e:  # noqa: BLE001 - any failure means not ready; reason to the log
            self._store = None
            log.warning("readiness: the store does not open: %s", type(e).__name__)
            return "failed"

    def _check_budget(self) -> str:
        if self.budget_left is None:
            return "not configured"
        try:
            return "ok" if self.budget_left() > 0 else "exhausted"
        except Exception as e:  # noqa: BLE001
            log.warning("readiness: the ledger cannot be read: %s", type(e).__name__)
            return "failed"

    def _check_model(self) -> str:
        try:
            return "ok" if self.model_ok() else "failed"
        except Exception as e:  # noqa: BLE001
            log.warning("readiness: the model does not score: %s", type(e).__name__)
            return "failed"

    def check(self) -> Readiness:
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self.ttl_s:
                return self._last[1]
            checks = {
                "model": self._check_model(),
                "store": self._check_store(),
                "budget": self._check_budget(),
            }
            result = Readiness(all(v in ("ok", "not configured") for v in checks.values()), checks)
            if self._last is None or self._last[1] != result:
                log.info("readiness: %s", "ready" if result.ready else "not ready", extra={"fields": checks})
            self._last = (now, result)
            return result
