"""Delivery of stored plans to the employer's app or messaging gateway by signed webhook.

Each pending plan is POSTed as JSON (see :func:`payload`) with the headers of
:mod:`node.plans.signing`; the ``Idempotency-Key`` is the plan id, the same on every retry, so
a gateway that stored a plan but whose answer was lost dedups the retry: each plan is applied
exactly once. A 2xx answer delivers it. A 5xx, 408, 429, timeout or connection error is
retried after ``backoff_ms · 2^(k-1)`` (capped at ``max_backoff_ms``); after ``max_attempts``
the plan is dead-lettered (status ``dead``; ``deliver --requeue`` sends it again later). Any
other 4xx is the gateway refusing that plan: dead-lettered at once, not hammered.

A person on the opt-out list gets nothing: the plan is marked ``skipped`` and the skip logged.

**What is sent.** The recipient id (not the store's pseudonym), the plan id, issue time,
channel and each recommendation's rank, code, reason and text — what the person reads.
Not sent: the predicted risk, the expected reductions, the feature values, the guideline
sources (available on request from the node). The texts say a factor is off its target,
which the person must be told; they never quote the person's value. The gateway sees health
advice for a recipient id it can map to a device: it must be the app vendor or occupational
health service under a data-processing agreement, not HR (docs/USAGE.md).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from typing import Callable

import httpx
from sqlalchemy import insert, select, update

from node.plans.signing import IDEMPOTENCY, SIGNATURE, TIMESTAMP, recipient_id, sign
from node.store import Store
from node.store.models import opt_outs, plan_events, plans

log = logging.getLogger(__name__)

_RETRYABLE = {408, 429}


@dataclass(frozen=True)
class DeliverySettings:
    url: str
    secret: bytes
    recipient_key: bytes
    max_attempts: int = 5
    backoff_ms: float = 1000.0
    max_backoff_ms: float = 60_000.0
    timeout_s: float = 10.0


@dataclass(frozen=True)
class DeliverySummary:
    delivered: int
    dead_lettered: int
    skipped: int
    failed_attempts: int


def payload(plan: dict, rkey: bytes) -> bytes:
    """The webhook body of a stored plan (see the module docstring for what is left out)."""
    items = [{k: it[k] for k in ("rank", "code", "reason", "text", "channel")} for it in plan["items"]]
    body = {
        "type": "rehealth.plan.v1",
        "plan_id": plan["id"],
        "recipient": recipient_id(rkey, plan["pseudonym"]),
        "issued_at": _iso(plan["created_at"]),
        "channel": items[0]["channel"],
        "items": items,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def deliver_plans(
    store: Store,
    settings: DeliverySettings,
    *,
    requeue: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> DeliverySummary:
    """Send every pending plan (``requeue``: dead-lettered and interrupted ones too)."""
    with store.engine.begin() as conn:
        if requeue:
            conn.execute(
                update(plans)
                .where(plans.c.status.in_(("dead", "sending")))
                .values(status="pending", attempts=0, updated_at=_now())
            )
        pending = [dict(r) for r in conn.execute(select(plans).where(plans.c.status == "pending")).mappings()]
        opted = set(conn.execute(select(opt_outs.c.pseudonym)).scalars())
    delivered = dead = skipped = failed = 0
    with httpx.Client(timeout=settings.timeout_s) as client:
        for plan in pending:
            if not _claim(store, plan["id"]):
                continue  # another deliverer took it
            if plan["pseudonym"] in opted:
                _finish(store, plan, "skipped", "skipped", plan["attempts"], "opted out")
                skipped += 1
                continue
            outcome, n_failed = _send(store, client, plan, settings, sleep=sleep, clock=clock)
            failed += n_failed
            delivered += outcome == "delivered"
            dead += outcome == "dead"
    summary = DeliverySummary(delivered, dead, skipped, failed)
    log.info("plan delivery: %s", summary)
    return summary


def _send(store, client, plan, s: DeliverySettings, *, sleep, clock) -> tuple[str, int]:
    body = payload(plan, s.recipient_key)
    channel = plan["items"][0]["channel"]
    attempts, failed = plan["attempts"], 0
    while True:
        attempts += 1
        ts = int(clock())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP: str(ts),
            SIGNATURE: sign(s.secret, ts, body, plan["id"]),
            IDEMPOTENCY: plan["id"],
        }
        _event(store, plan, "sent", channel, f"attempt {attempts}")
        try:
            status: int | None = client.post(s.url, content=body, headers=headers).status_code
            why = f"HTTP {status}"
        except httpx.TimeoutException:
            status, why = None, "timeout"
        except httpx.TransportError as e:
            status, why = None, type(e).__name__
        if status is not None and 200 <= status < 300:
            _finish(store, plan, "delivered", "delivered", attempts, why)
            return "delivered", failed
        failed += 1
        _event(store, plan, "failed", channel, f"attempt {attempts}: {why}")
        permanent = status is not None and 400 <= status < 500 and status not in _RETRYABLE
        if permanent or attempts >= s.max_attempts:
            _finish(store, plan, "dead", "dead_lettered", attempts, why)
            log.warning("plan %s dead-lettered after %d attempt(s): %s", plan["id"], attempts, why)
            return "dead", failed
        sleep(min(s.backoff_ms * 2 ** (attempts - 1), s.max_backoff_ms) / 1000.0)


def _claim(store: Store, plan_id: str) -> bool:
    with store.engine.begin() as conn:
        res = conn.execute(
            update(plans)
            .where(plans.c.id == plan_id, plans.c.status == "pending")
            .values(status="sending", updated_at=_now())
        )
    return res.rowcount == 1


def _finish(store: Store, plan: dict, status: str, event: str, attempts: int, why: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            update(plans)
            .where(plans.c.id == plan["id"])
            .values(
                status=status,
                attempts=attempts,
                last_error=None if status == "delivered" else why,
                updated_at=_now(),
            )
        )
    _event(store, plan, event, plan["items"][0]["channel"], why)


def _event(store: Store, plan: dict, event: str, channel: str, detail: str | None) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            insert(plan_events).values(
                plan_id=plan["id"],
                pseudonym=plan["pseudonym"],
                event=event,
                channel=channel,
                at=_now(),
                source="delivery",
                detail=detail,
            )
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(value) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.isoformat()
    return str(value)
