"""The employer's app reports a plan opened or completed with a signed callback
(``POST /v1/plans/events``). The network is hostile, and so is whoever reads a proxy's or the
gateway's request log: they hold a genuine callback.

Replaying it verbatim inside the timestamp window was refused (its ``Idempotency-Key`` was
used), but the key was not signed: the same timestamp, signature and body under a fresh key was
recorded again — a forged event in ``plan_events`` (the programme view's uptake and its
charge follow the plans' state). The key is now signed with the timestamp and the body.
"""

from __future__ import annotations

import json
import time

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from node.api.app import create_app
from node.plans.events import CallbackSettings
from node.plans.signing import IDEMPOTENCY, SIGNATURE, TIMESTAMP, recipient_id, sign
from node.store import open_store
from node.store.models import plan_events, plans
from tests.web_node import build_node

SECRET = b"s" * 32
RECIPIENT_KEY = b"r" * 32


def test_a_captured_callback_under_a_fresh_idempotency_key_is_refused(tmp_path) -> None:
    node = build_node(tmp_path / "node", staff=60)
    store = open_store(node.store_url)
    with store.engine.connect() as conn:
        plan_id, pseudonym = conn.execute(
            select(plans.c.id, plans.c.pseudonym).where(plans.c.status == "delivered").limit(1)
        ).one()
    settings = CallbackSettings(store=store, secret=SECRET, recipient_key=RECIPIENT_KEY)
    app = create_app(keys={"k": "admin"}, model=node.model, plan_callbacks=settings, hr_view=False)
    client = TestClient(app)

    def opened() -> int:
        with store.engine.connect() as conn:
            return conn.execute(
                select(func.count()).where(plan_events.c.plan_id == plan_id, plan_events.c.event == "opened")
            ).scalar_one()

    before = opened()
    body = json.dumps(
        {"plan_id": plan_id, "recipient": recipient_id(RECIPIENT_KEY, pseudonym), "event": "opened"}
    ).encode()
    ts = int(time.time())
    genuine = {
        "Content-Type": "application/json",
        TIMESTAMP: str(ts),
        SIGNATURE: sign(SECRET, ts, body, "evt-1"),
        IDEMPOTENCY: "evt-1",
    }
    assert client.post("/v1/plans/events", content=body, headers=genuine).status_code == 200
    assert opened() == before + 1
    assert client.post("/v1/plans/events", content=body, headers=genuine).status_code == 409
    for fresh in ("evt-2", "EVT-1", "evt-1.1"):
        r = client.post("/v1/plans/events", content=body, headers={**genuine, IDEMPOTENCY: fresh})
        assert r.status_code == 401, (fresh, r.status_code)
    assert opened() == before + 1
    store.engine.dispose()
