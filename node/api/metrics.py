"""Prometheus metrics of the scoring API, in a registry of the app's own (``GET /metrics``).

Labels are bounded and value-free: the HTTP method, the *route template* (``/v1/score``, never
a raw path, which a caller chooses) and the status code. Gauges are read at scrape time: the
privacy budget's ε left and readiness.

``/metrics`` needs a key with the ``ops`` (or ``admin``) role rather than being open to
localhost: the API is usually reached through a reverse proxy or a container network, where
"localhost" is every caller the proxy forwards, or no caller at all (the scraper runs in its own
container). A key works in every topology, can be revoked, and names the scraper in the audit
log; Prometheus sends it as ``Authorization: Bearer`` (``authorization.credentials_file``).
"""

from __future__ import annotations

import math
from typing import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: latency buckets (seconds): a single score is ~1 ms, a 10 000-person batch ~1 s
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """Request counts and latency by route and status; budget left; readiness."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        *,
        budget_left: Callable[[], float] | None = None,
        ready: Callable[[], bool] | None = None,
    ):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rehealth_api_requests",
            "API requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "rehealth_api_request_duration_seconds",
            "Time from request in to response sent, by method, route template and status.",
            ["method", "route", "status"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        if budget_left is not None:
            g = Gauge(
                "rehealth_budget_epsilon_remaining",
                "Privacy budget ε the node's ledger still allows (population budget).",
                registry=self.registry,
            )
            g.set_function(_safe(budget_left))
        if ready is not None:
            r = Gauge("rehealth_api_ready", "1 if /readyz answers ready, else 0.", registry=self.registry)
            r.set_function(_safe(lambda: 1.0 if ready() else 0.0))

    def observe(self, *, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route, str(status)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _safe(f: Callable[[], float]) -> Callable[[], float]:
    """A scrape never fails for one unreadable gauge: it reads NaN instead."""

    def read() -> float:
        try:
            return float(f())
        except Exception:  # noqa: BLE001
            return math.nan

    return read
