"""Opened and completed events coming back from the employer's app, and the opt-out list.

A callback (``POST /v1/plans/events`` on the node API) is accepted only if

1. its ``X-ReHealth-Timestamp`` lies within ``callback_window_s`` of the node's clock (an old
   message replayed verbatim is refused),
2. its ``X-ReHealth-Signature`` is the HMAC-SHA256 of timestamp, ``Idempotency-Key`` and body
   under the callback secret (a forged or altered one is refused, and so is a captured one
   replayed under a fresh key),
3. its ``Idempotency-Key`` was never accepted before (a replay inside the window is refused:
   the key is unique in ``plan_events``),
4. it names a delivered plan with the plan's own recipient id, and for ``completed`` one of
   the plan's item codes.

Body: ``{"plan_id": ..., "recipient": ..., "event": "opened"|"completed", "code": item code
(completed only), "at": ISO 8601 time (optional, default now)}``. An operator may import the
same events from a JSON-lines file instead (``rehealth node plans import-events``; trusted, no
signature; the key is derived from the line, so importing a file twice adds nothing).

A **completed** item becomes an intervention in the trajectory log
(:func:`node.trajectory.record_planned`): code = the item's intervention code, start = the
plan's first ``opened`` (else the completion) date, end = the completion date, channel = the
item's, source ``plan``. That row is what :func:`node.trajectory.derive_cohort` counts as
treatment in the next study: per protocol (the person did the programme), not intention to
treat (a plan was sent).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from node.plans.signing import IDEMPOTENCY, SIGNATURE, TIMESTAMP, recipient_id, verify
from node.store import Store
from node.store.models import opt_outs, plan_events, plans
from node.trajectory import record_planned
from shared.errors import DataError

log = logging.getLogger(__name__)

EVENTS = ("opened", "completed")


class CallbackRefused(Exception):
    """A callback the node does not accept: ``status`` is the HTTP answer, the message says why
    (never echoing the body)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class CallbackSettings:
    store: Store
    secret: bytes
    recipient_key: bytes
    window_s: int = 300
    clock: Callable[[], float] = lambda: dt.datetime.now(dt.timezone.utc).timestamp()


def accept_callback(settings: CallbackSettings, headers: Mapping[str, str], body: bytes) -> str:
    """Verify and record one signed callback; returns the event recorded.

    Raises:
        CallbackRefused: 401 stale/forged, 400 malformed, 404 unknown plan, 409 replayed.
    """
    h = {k.lower(): v for k, v in headers.items()}
    try:
        ts = int(h.get(TIMESTAMP.lower(), ""))
    except ValueError:
        raise CallbackRefused(401, f"missing or malformed {TIMESTAMP}") from None
    if abs(settings.clock() - ts) > settings.window_s:
        raise CallbackRefused(401, f"{TIMESTAMP} outside the {settings.window_s} s window")
    key = h.get(IDEMPOTENCY.lower(), "")
    if not verify(settings.secret, ts, body, key, h.get(SIGNATURE.lower(), "")):
        raise CallbackRefused(401, "bad signature")
    if not 1 <= len(key) <= 100:
        raise CallbackRefused(400, f"{IDEMPOTENCY} must have 1 to 100 characters")
    try:
        msg = json.loads(body)
        if not isinstance(msg, dict):
            raise ValueError
    except ValueError:
        raise CallbackRefused(400, "body is not a JSON object") from None
    try:
        return record_event(
            settings.store,
            plan_id=str(msg.get("plan_id", "")),
            event=str(msg.get("event", "")),
            code=msg.get("code"),
            at=msg.get("at"),
            source="callback",
            key="cb:" + key,
            recipient=(settings.recipient_key, str(msg.get("recipient", ""))),
        )
    except DataError as e:
        status = 404 if e.field == "plan_id" else (409 if e.field == "idempotency_key" else 400)
        raise CallbackRefused(status, str(e)) from None


def record_event(
    store: Store,
    *,
    plan_id: str,
    event: str,
    code: str | None,
    at: str | dt.datetime | None,
    source: str,
    key: str,
    recipient: tuple[bytes, str] | None = None,
) -> str:
    """Record an opened/completed event of a delivered plan (see the module docstring).

    Raises:
        DataError: names the field: unknown ``plan_id`` (or a recipient that is not the plan's),
            bad ``event``, ``code``, ``at``, or an ``idempotency_key`` already used.
    """
    if event not in EVENTS:
        raise DataError(f"event must be one of {EVENTS}", field="event")
    when = _when(at)
    with store.engine.begin() as conn:
        plan = conn.execute(select(plans).where(plans.c.id == plan_id)).mappings().first()
        ok = plan is not None and plan["status"] == "delivered"
        if plan is not None and ok and recipient is not None:
            ok = recipient_id(recipient[0], plan["pseudonym"]) == recipient[1]
        if plan is None or not ok:
            raise DataError("no delivered plan with this id for this recipient", field="plan_id")
        items = {it["code"]: it for it in plan["items"]}
        if event == "completed" and code not in items:
            raise DataError("completed needs code: one of the plan's item codes", field="code")
        if event == "opened" and code is not None and code not in items:
            raise DataError("code is not one of the plan's item codes", field="code")
        channel = items[code]["channel"] if code else plan["items"][0]["channel"]
        try:
            conn.execute(
                insert(plan_events).values(
                    plan_id=plan_id,
                    pseudonym=plan["pseudonym"],
                    event=event,
                    code=code,
                    channel=channel,
                    at=when,
                    source=source,
                    idempotency_key=key,
                )
            )
        except IntegrityError:
            raise DataError("this event was already received (replayed)", field="idempotency_key") from None
        if event == "completed":
            opened = conn.execute(
                select(plan_events.c.at)
                .where(plan_events.c.plan_id == plan_id, plan_events.c.event == "opened")
                .order_by(plan_events.c.at)
            ).first()
            start = min(_aware(opened[0]), when) if opened else when
            record_planned(
                conn,
                pseudonym=plan["pseudonym"],
                code=items[code]["intervention"],
                start=start.date(),
                end=when.date(),
                channel=channel,
            )
    log.info("plan event %s (%s) recorded from %s", event, code or "-", source)
    return event


def import_events(store: Store, path: str | Path) -> dict[str, int]:
    """Import opened/completed events from a JSON-lines file (one object per line).

    Raises:
        DataError: a bad line (names the line and field; nothing of the line is imported,
            earlier lines stay). A line imported before is counted, not repeated.
    """
    counts = {"recorded": 0, "already": 0}
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError
        except ValueError:
            raise DataError(f"line {n}: not a JSON object", row=n) from None
        key = "import:" + hashlib.sha256(line.strip().encode()).hexdigest()
        try:
            record_event(
                store,
                plan_id=str(msg.get("plan_id", "")),
                event=str(msg.get("event", "")),
                code=msg.get("code"),
                at=msg.get("at"),
                source="import",
                key=key,
            )
            counts["recorded"] += 1
        except DataError as e:
            if e.field == "idempotency_key":
                counts["already"] += 1
                continue
            raise DataError(f"line {n}: {e}", row=n, field=e.field) from None
    return counts


def set_opt_out(store: Store, pseudonym: str, *, out: bool = True) -> bool:
    """Put a person on (``out``) or off the opt-out list; True if that changed anything."""
    with store.engine.begin() as conn:
        if not out:
            return conn.execute(delete(opt_outs).where(opt_outs.c.pseudonym == pseudonym)).rowcount == 1
        if conn.execute(select(opt_outs.c.pseudonym).where(opt_outs.c.pseudonym == pseudonym)).first():
            return False
        conn.execute(insert(opt_outs).values(pseudonym=pseudonym, at=dt.datetime.now(dt.timezone.utc)))
        return True


def _when(at: str | dt.datetime | None) -> dt.datetime:
    if at is None:
        return dt.datetime.now(dt.timezone.utc)
    if isinstance(at, dt.datetime):
        return _aware(at)
    try:
        return _aware(dt.datetime.fromisoformat(str(at)))
    except ValueError:
        raise DataError("at: expected an ISO 8601 time", field="at") from None


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
