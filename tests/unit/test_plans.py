"""Personalised plans end to end against a real HTTP receiver on 127.0.0.1: generated from the
node's risk model, delivered by signed webhook through failures (500s, a timeout) exactly once,
dead-lettered after N failures, opt-outs honoured; signed callbacks (forged, stale and replayed
ones refused) land in the plan trajectory and in the next cohort's treatment."""

from __future__ import annotations

import datetime as dt
import json
import time

import numpy as np
import pytest
from sqlalchemy import insert, select

from node.plans.catalogue import Catalogue
from node.plans.delivery import DeliverySettings, deliver_plans
from node.plans.events import CallbackRefused, CallbackSettings, accept_callback, set_opt_out
from node.plans.generate import generate_plans
from node.plans.signing import IDEMPOTENCY, SIGNATURE, TIMESTAMP, recipient_key, sign
from node.pseudonym import Pseudonymizer
from node.risk.scoring import Scorer
from node.store import open_store
from node.store.models import interventions, outcomes, persons, plan_events, plans
from node.trajectory import derive_cohort
from shared.features import FEATURE_NAMES
from shared.schemas import age_band
from tests.security.hr_company import company, risk_model
from tests.unit.webhook_receiver import Receiver

CATALOGUE = "deploy/examples/plan-catalogue.toml"
WEBHOOK_SECRET = b"w" * 32
CALLBACK_SECRET = b"c" * 32
RKEY = recipient_key(b"n" * 32)


@pytest.fixture
def node(tmp_path, store_url):
    """A store (SQLite, PostgreSQL) with 120 staff (features, one outcome period each) and the
    fixed risk model."""
    store = open_store(store_url)
    pseudo = Pseudonymizer(key=b"n" * 32, site_id="acme")
    staff = company(n=120)
    rows, outs = [], []
    for rec in staff.to_dict("records"):
        p = pseudo(rec["person_id"])
        rows.append(
            {
                "pseudonym": p,
                "site": "acme",
                "department": rec["department"],
                "job_type": rec["job_type"],
                "age_band": age_band(rec["age"]),
                "index_date": dt.date(2025, 1, 1),
                **{f: float(rec[f]) for f in FEATURE_NAMES},
            }
        )
        outs.append(
            {
                "pseudonym": p,
                "period_start": dt.date(2025, 1, 1),
                "period_end": dt.date(2025, 12, 31),
                "claims_cost": 1000.0,
                "cv_event": 0,
                "absence_days": 3.0,
            }
        )
    with store.engine.begin() as conn:
        conn.execute(insert(persons), rows)
        conn.execute(insert(outcomes), outs)
    scorer = Scorer.from_model(risk_model(tmp_path / "models"))
    yield store, pseudo, scorer
    store.engine.dispose()


def _settings(url, **kw):
    base = dict(
        url=url, secret=WEBHOOK_SECRET, recipient_key=RKEY, backoff_ms=1, max_backoff_ms=5, timeout_s=0.2
    )
    return DeliverySettings(**{**base, **kw})


def _plans(store):
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(plans)).mappings()]


def _events(store, event=None):
    q = select(plan_events)
    if event:
        q = q.where(plan_events.c.event == event)
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def test_plans_rank_off_target_factors_by_the_models_risk_reduction(node):
    store, _, scorer = node
    cat = Catalogue.from_toml(CATALOGUE)
    s = generate_plans(store, scorer, cat, min_risk=0.2)
    assert s.generated > 5 and s.persons == 120 and s.unscored == 0
    for plan in _plans(store):
        assert plan["risk"] >= 0.2 and 1 <= len(plan["items"]) <= cat.max_items
        reductions = [it["expected_reduction"] for it in plan["items"]]
        assert reductions == sorted(reductions, reverse=True)
        assert all(it["reason"] and it["source"] for it in plan["items"])
    # the fixed model weighs sbp most: everyone above 130 mmHg is told about blood pressure first
    firsts = {p["items"][0]["code"] for p in _plans(store)}
    assert firsts <= {"bp_target", "stop_smoking"} and "bp_target" in firsts
    # generating again adds nothing; a lower threshold adds only the newly eligible
    again = generate_plans(store, scorer, cat, min_risk=0.2)
    assert again.generated == 0 and again.already_planned == s.generated


def test_delivery_through_failures_is_exactly_once_signed_and_honours_opt_outs(node):
    store, pseudo, scorer = node
    generate_plans(store, scorer, Catalogue.from_toml(CATALOGUE), min_risk=0.2)
    stored = _plans(store)
    opted = stored[0]["pseudonym"]
    assert set_opt_out(store, opted)
    rx = Receiver(script=[500, 500, "slow", 500], secret=WEBHOOK_SECRET)
    try:
        summary = deliver_plans(store, _settings(rx.url))
    finally:
        rx.close()
    n = len(stored)
    assert summary.delivered == n - 1 and summary.skipped == 1 and summary.dead_lettered == 0
    assert summary.failed_attempts == 4
    assert rx.bad_signatures == 0 and rx.requests == (n - 1) + 4
    # exactly once: the timed-out plan was retried with the same key and applied once
    assert len(rx.applied) == n - 1 and stored[0]["id"] not in rx.applied
    body = rx.applied[stored[1]["id"]]
    assert body["recipient"] != stored[1]["pseudonym"] and stored[1]["pseudonym"] not in json.dumps(body)
    assert "risk" not in body and all(
        set(it) == {"rank", "code", "reason", "text", "channel"} for it in body["items"]
    )
    assert len(_events(store, "delivered")) == n - 1 and len(_events(store, "skipped")) == 1
    assert {e["pseudonym"] for e in _events(store, "skipped")} == {opted}
    # a second run sends nothing again
    rx2 = Receiver(secret=WEBHOOK_SECRET)
    try:
        assert deliver_plans(store, _settings(rx2.url)).delivered == 0 and rx2.requests == 0
    finally:
        rx2.close()


def test_a_gateway_that_keeps_failing_dead_letters_after_n_tries_then_requeue_delivers(node):
    store, _, scorer = node
    generate_plans(store, scorer, Catalogue.from_toml(CATALOGUE), min_risk=0.5)
    n = len(_plans(store))
    assert n >= 1
    rx = Receiver(script=[500] * (3 * n), secret=WEBHOOK_SECRET)
    try:
        s = deliver_plans(store, _settings(rx.url, max_attempts=3))
        assert s.dead_lettered == n and rx.requests == 3 * n and not rx.applied
        assert {p["status"] for p in _plans(store)} == {"dead"}
        assert len(_events(store, "dead_lettered")) == n
        assert deliver_plans(store, _settings(rx.url, max_attempts=3), requeue=True).delivered == n
        assert len(rx.applied) == n
    finally:
        rx.close()


def test_a_wrong_secret_is_refused_by_the_receiver_and_dead_lettered_at_once(node):
    store, _, scorer = node
    generate_plans(store, scorer, Catalogue.from_toml(CATALOGUE), min_risk=0.5)
    rx = Receiver(secret=WEBHOOK_SECRET)
    try:
        s = deliver_plans(store, _settings(rx.url, secret=b"x" * 32))
    finally:
        rx.close()
    assert rx.bad_signatures == rx.requests == s.dead_lettered >= 1 and not rx.applied


def _callback(body: dict, *, key: str, ts: int | None = None, secret: bytes = CALLBACK_SECRET):
    raw = json.dumps(body).encode()
    ts = int(time.time()) if ts is None else ts
    return {TIMESTAMP: str(ts), SIGNATURE: sign(secret, ts, raw, key), IDEMPOTENCY: key}, raw


def test_signed_callbacks_reach_the_trajectory_and_the_next_cohorts_treatment(node):
    store, _, scorer = node
    generate_plans(store, scorer, Catalogue.from_toml(CATALOGUE), min_risk=0.2)
    rx = Receiver(secret=WEBHOOK_SECRET)
    try:
        deliver_plans(store, _settings(rx.url))
    finally:
        rx.close()
    plan = next(p for p in _plans(store) if any(it["code"] == "bp_target" for it in p["items"]))
    rid = rx.applied[plan["id"]]["recipient"]
    cb = CallbackSettings(store=store, secret=CALLBACK_SECRET, recipient_key=RKEY, window_s=60)
    opened = {"plan_id": plan["id"], "recipient": rid, "event": "opened", "at": "2025-02-01T09:00:00+00:00"}
    done = {**opened, "event": "completed", "code": "bp_target", "at": "2025-03-01T09:00:00+00:00"}

    before = derive_cohort(
        store,
        intervention="bp_management",
        index_start=dt.date(2025, 1, 1),
        index_end=dt.date(2025, 6, 30),
        followup_days=365,
    )
    assert before["treated"].sum() == 0

    assert accept_callback(cb, *_callback(opened, key="e1")) == "opened"
    # forged (wrong secret), tampered body, stale timestamp, replayed key: all refused
    h, raw = _callback(done, key="e2", secret=b"f" * 32)
    with pytest.raises(CallbackRefused, match="signature") as e:
        accept_callback(cb, h, raw)
    assert e.value.status == 401
    h, raw = _callback(done, key="e2")
    with pytest.raises(CallbackRefused, match="signature"):
        accept_callback(cb, h, raw.replace(b"bp_target", b"ldl_target"))
    with pytest.raises(CallbackRefused, match="window"):
        accept_callback(cb, *_callback(done, key="e3", ts=int(time.time()) - 3600))
    with pytest.raises(CallbackRefused, match="already received") as e:
        accept_callback(cb, *_callback(opened, key="e1"))
    assert e.value.status == 409
    with pytest.raises(CallbackRefused) as e:  # another person's recipient id
        accept_callback(cb, *_callback({**done, "recipient": "0" * 64}, key="e4"))
    assert e.value.status == 404
    assert len(_events(store, "completed")) == 0

    assert accept_callback(cb, h, raw) == "completed"
    ev = {(e["event"], e["code"]) for e in _events(store) if e["plan_id"] == plan["id"]}
    assert {("sent", None), ("delivered", None), ("opened", None), ("completed", "bp_target")} <= ev
    with store.engine.connect() as conn:
        row = conn.execute(select(interventions)).mappings().one()
    assert (row["pseudonym"], row["code"], row["source"]) == (plan["pseudonym"], "bp_management", "plan")
    assert (row["start"], row["end"]) == (dt.date(2025, 2, 1), dt.date(2025, 3, 1))

    after = derive_cohort(
        store,
        intervention="bp_management",
        index_start=dt.date(2025, 1, 1),
        index_end=dt.date(2025, 6, 30),
        followup_days=365,
    )
    assert after["treated"].sum() == 1 and after.attrs["attrition"]["treated"] == 1
    assert np.isclose(after.loc[after["treated"] == 1, "sbp"].iloc[0], _sbp(store, plan["pseudonym"]))


def _sbp(store, pseudonym):
    with store.engine.connect() as conn:
        return conn.execute(select(persons.c.sbp).where(persons.c.pseudonym == pseudonym)).scalar_one()


@pytest.mark.parametrize(
    "edit,message",
    [
        (('factor = "sbp"', 'factor = "age"'), "'age' is not a modifiable factor"),
        (("target = 130", "target = 300"), "outside its bounds"),
        (('intervention = "bp_management"', 'intervention = "homeopathy"'), "unknown intervention"),
        (('code = "weight"', 'code = "bp_target"'), "listed twice: bp_target"),
    ],
)
def test_a_bad_catalogue_is_refused_naming_what_is_wrong(tmp_path, edit, message):
    from pathlib import Path

    from shared.errors import SpecError

    path = tmp_path / "cat.toml"
    path.write_text(Path(CATALOGUE).read_text().replace(*edit, 1))
    with pytest.raises(SpecError, match=message):
        Catalogue.from_toml(path)


def test_a_person_with_a_missing_feature_gets_no_plan_and_is_counted(node):
    from sqlalchemy import update

    store, _, scorer = node
    with store.engine.begin() as conn:
        first = conn.execute(select(persons.c.pseudonym).limit(1)).scalar_one()
        conn.execute(update(persons).where(persons.c.pseudonym == first).values(ldl=None))
    s = generate_plans(store, scorer, Catalogue.from_toml(CATALOGUE), min_risk=0.0)
    assert s.unscored == 1 and s.high_risk == 119
    assert first not in {p["pseudonym"] for p in _plans(store)}
