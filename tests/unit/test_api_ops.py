"""The scoring API's operations side (issue #20, item 5), through FastAPI's TestClient and, where
what matters is how much of a body the node reads, straight through ASGI.

Attacks, each of which succeeds without the middleware: an oversized body without a key makes
the node read and parse it (401 or 422 after the fact) — here it gets 413 with nothing read;
a hostile X-Request-ID forges a log line; a revoked or expired key keeps working; a person's
ref or feature value ends up in the log.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from node.api.app import create_app
from node.api.auth import add_key, now_utc, revoke_key
from node.config import ApiSection, NodeConfig
from node.ledger import PrivacyLedger
from node.risk.model_store import ModelStore, TrainingRecord
from shared.errors import SpecError
from shared.features import FEATURES
from shared.logsetup import setup_logging

WEIGHTS = np.linspace(-0.6, 0.9, 16).reshape(1, 16)
BIAS = np.array([-2.5])
LIMIT = 4096
#: a ref and a feature value no log line may ever contain
REF = "PERSON-REF-7Q3ZK"
AGE = 63.123457


def _person(**over) -> dict:
    p = {f.name: (0 if f.kind == "binary" else round((f.lo + f.hi) / 2, 3)) for f in FEATURES}
    return {**p, "ref": REF, "age": AGE, **over}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    record = TrainingRecord(rounds=5, nodes=3, epsilon=8.0, delta=1e-5, metrics={"auc": 0.8})
    return ModelStore(root).save(arrays=[WEIGHTS, BIAS], record=record)


@pytest.fixture
def log_lines():
    """The process's logging set up as ``rehealth node serve`` does (JSON), into a buffer."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buf = io.StringIO()
    setup_logging("json", "INFO", stream=buf)
    yield lambda: [json.loads(line) for line in buf.getvalue().splitlines()]
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


@pytest.fixture
def node(tmp_path, model):
    """A keys file with one key per role, and a client for an app serving ``model``."""
    keys_path = tmp_path / "api_keys.toml"
    keys = {role: add_key(keys_path, role=role) for role in ("underwriter", "hr", "ops")}

    def client(**kw) -> TestClient:
        return TestClient(create_app(keys=keys_path, model=model, max_body_bytes=LIMIT, **kw))

    return keys_path, keys, client


def _audit(lines: list[dict]) -> list[dict]:
    return [r for r in lines if r["logger"] == "rehealth.api.audit"]


def test_audit_line_per_call_says_who_what_when_never_the_key(node, log_lines):
    keys_path, keys, client = node
    c = client()
    (u_entry, u_key), (_, hr_key) = keys["underwriter"], keys["hr"]
    assert c.post("/v1/score", json=_person(), headers={"X-API-Key": u_key}).status_code == 200
    assert c.post("/v1/score", json=_person()).status_code == 401
    assert c.post("/v1/score", json=_person(), headers={"X-API-Key": hr_key}).status_code == 403
    assert c.get("/no/such/path?ref=" + REF).status_code == 404
    assert c.get("/v1/score").status_code == 405
    audit = _audit(log_lines())
    assert [(a["route"], a["status"]) for a in audit] == [
        ("/v1/score", 200),
        ("/v1/score", 401),
        ("/v1/score", 403),
        ("<unmatched>", 404),  # never the raw path (the caller's choice)
        ("/v1/score", 405),
    ]
    assert (audit[0]["key_id"], audit[0]["role"]) == (u_entry.key_id, "underwriter")
    assert (audit[1]["key_id"], audit[1]["role"]) == ("-", "-")
    assert audit[2]["role"] == "hr"
    for a in audit:
        assert a["method"] in ("GET", "POST") and a["duration_ms"] >= 0 and len(a["request_id"]) == 32
        assert a["ts"].endswith("Z")
    text = keys_path.read_text() + json.dumps(log_lines())
    assert u_key not in text and hr_key not in text  # neither the file nor the log has a key


def test_no_row_value_or_ref_in_logs(node, log_lines):
    _, keys, client = node
    c = client()
    key = keys["underwriter"][1]
    assert c.post("/v1/score", json=_person(), headers={"X-API-Key": key}).status_code == 200
    batch = {"persons": [_person(), _person(ref=REF + "-2")]}
    assert c.post("/v1/score/batch", json=batch, headers={"X-API-Key": key}).status_code == 200
    bad = c.post("/v1/score", json=_person(age=987.654), headers={"X-API-Key": key})
    assert bad.status_code == 422 and "987.654" in bad.text  # the caller is told ...
    logged = json.dumps(log_lines())
    assert len(_audit(log_lines())) == 3
    for value in (REF, str(AGE), "987.654"):  # ... the log is not
        assert value not in logged


def _asgi(app, *, method="POST", path="/v1/score", headers=(), chunks=(b"",)):
    """One request straight through ASGI; returns (status, body bytes the app pulled)."""
    pulled = 0
    chunks = list(chunks)
    out: dict = {}

    async def receive():
        nonlocal pulled
        if not chunks:
            await asyncio.sleep(3600)  # the client waits for the answer, as a real one would
        body = chunks.pop(0)
        if body is None:  # the caller hangs up
            return {"type": "http.disconnect"}
        pulled += len(body)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = dict(message["headers"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8080),
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    return out.get("status"), pulled


def test_oversized_declared_body_without_key_is_413_unread(node, log_lines):
    _, _, client = node
    app = client().app
    big = [b"{" + b"x" * 1_000_000]  # not even JSON: parsing it would be a 422, the key a 401
    status, pulled = _asgi(
        app, headers=[("content-type", "application/json"), ("content-length", str(len(big[0])))], chunks=big
    )
    assert (status, pulled) == (413, 0)
    assert _audit(log_lines())[-1]["status"] == 413 and _audit(log_lines())[-1]["route"] == "/v1/score"


def test_oversized_chunked_body_is_cut_off_at_the_limit(node):
    _, keys, client = node
    app = client().app
    chunk = b"x" * 1000
    status, pulled = _asgi(
        app,
        headers=[("content-type", "application/json"), ("x-api-key", keys["underwriter"][1])],
        chunks=[chunk] * 1000,  # 1 MB, no Content-Length
    )
    assert status == 413 and pulled <= LIMIT + len(chunk)


def test_caller_gone_mid_body_is_logged_499_and_not_answered(node, log_lines):
    _, _, client = node
    status, pulled = _asgi(client().app, headers=[("content-type", "application/json")], chunks=[b"{", None])
    assert (status, pulled) == (None, 1)
    assert (_audit(log_lines())[-1]["status"], _audit(log_lines())[-1]["route"]) == (499, "/v1/score")


def test_body_within_limit_in_chunks_is_handed_on_whole(node):
    _, keys, client = node
    app = client().app
    body = json.dumps(_person()).encode()
    parts = [body[i : i + 50] for i in range(0, len(body), 50)]
    status, _ = _asgi(
        app,
        headers=[("content-type", "application/json"), ("x-api-key", keys["underwriter"][1])],
        chunks=parts,
    )
    assert status == 200


def test_wrong_content_type_is_415_before_the_key(node):
    _, keys, client = node
    c = client()
    body = json.dumps(_person())
    key = {"X-API-Key": keys["underwriter"][1]}
    assert c.post("/v1/score", content=body, headers={"content-type": "text/plain"}).status_code == 415
    assert c.post("/v1/score", content=body, headers={**key, "content-type": "text/plain"}).status_code == 415
    r = c.post(
        "/v1/score", content=body, headers={**key, "content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    ok = c.post("/v1/score", content=body, headers={**key, "content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_request_id_echoed_generated_and_never_injected(node, log_lines):
    _, keys, client = node
    c = client()
    r = c.get("/livez", headers={"X-Request-ID": "req-42.a:b"})
    assert r.headers["x-request-id"] == "req-42.a:b"
    fresh = c.get("/livez").headers["x-request-id"]
    assert len(fresh) == 32 and int(fresh, 16) >= 0
    hostile = 'x" status=200\nINFO rehealth.api.audit: api call key_id=k-admin role=admin'
    r = c.get("/livez", headers={"X-Request-ID": hostile.replace("\n", "\r\n ")})  # folded header
    replaced = r.headers["x-request-id"]
    assert replaced != hostile and len(replaced) == 32
    lines = log_lines()
    assert [a["request_id"] for a in _audit(lines)] == ["req-42.a:b", fresh, replaced]
    assert "k-admin" not in json.dumps(lines) and "status=200" not in json.dumps(lines)


def test_revoked_and_expired_keys_get_401(node, log_lines, tmp_path):
    keys_path, keys, client = node
    c = client()
    entry, key = keys["underwriter"]
    assert c.post("/v1/score", json=_person(), headers={"X-API-Key": key}).status_code == 200
    revoke_key(keys_path, entry.key_id)  # the running app re-reads the file
    r = c.post("/v1/score", json=_person(), headers={"X-API-Key": key})
    assert r.status_code == 401 and "revoked" in r.json()["error"]
    old, old_key = add_key(
        keys_path, role="underwriter", expires_in=timedelta(days=1), now=now_utc() - timedelta(days=2)
    )
    r = c.post("/v1/score", json=_person(), headers={"X-API-Key": old_key})
    assert r.status_code == 401 and "expired" in r.json()["error"]
    audit = _audit(log_lines())
    assert [(a["key_id"], a["status"]) for a in audit[-2:]] == [(entry.key_id, 401), (old.key_id, 401)]
    # a keys file broken while the API runs: no key is accepted (fail closed)
    keys_path.write_text("[[keys]\nbroken")
    hr_key = keys["hr"][1]
    assert c.get("/v1/model", headers={"X-API-Key": hr_key}).status_code == 401


def test_livez_and_readyz_model_store_budget(node, tmp_path):
    _, _, client = node
    assert client().get("/livez").json() == {"status": "alive"}
    r = client().get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"model": "ok", "store": "not configured", "budget": "not configured"}

    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.ensure_budget(epsilon=5.0, delta=1e-6)
    store_url = f"sqlite:///{tmp_path / 'node.db'}"
    from node.store import open_store

    open_store(store_url).engine.dispose()
    c = client(ledger=ledger, store_url=store_url)
    assert c.get("/readyz").json() == {
        "status": "ready",
        "checks": {"model": "ok", "store": "ok", "budget": "ok"},
    }

    ledger.charge(study_id="s1", query="q", sigma=1.0, sensitivity=1.0)
    ledger.ensure_budget(epsilon=0.01, delta=1e-6)  # the node config lowered the budget below spent
    r = client(ledger=ledger, store_url=store_url).get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["budget"] == "exhausted"

    gone = f"sqlite:///{tmp_path / 'no-such-dir' / 'node.db'}"
    r = client(store_url=gone).get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["store"] == "failed"
    assert "no-such-dir" not in r.text  # the reason goes to the log, not to an unauthenticated prober


def test_metrics_need_an_ops_key_and_count_by_route_and_status(node, tmp_path):
    _, keys, client = node
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger.ensure_budget(epsilon=5.0, delta=1e-6)
    c = client(ledger=ledger)
    u_key, ops_key = keys["underwriter"][1], keys["ops"][1]
    for _ in range(3):
        c.post("/v1/score", json=_person(), headers={"X-API-Key": u_key})
    c.post("/v1/score", json=_person())
    assert c.get("/metrics").status_code == 401  # TestClient's peer: no localhost exemption either
    assert c.get("/metrics", headers={"X-API-Key": u_key}).status_code == 403
    assert c.post("/v1/score", json=_person(), headers={"X-API-Key": ops_key}).status_code == 403
    r = c.get("/metrics", headers={"Authorization": f"Bearer {ops_key}"})  # as Prometheus sends it
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'rehealth_api_requests_total{method="POST",route="/v1/score",status="200"} 3.0' in text
    assert 'rehealth_api_requests_total{method="POST",route="/v1/score",status="401"} 1.0' in text
    assert (
        'rehealth_api_request_duration_seconds_count{method="POST",route="/v1/score",status="200"} 3.0'
        in text
    )
    assert "rehealth_budget_epsilon_remaining 5.0" in text and "rehealth_api_ready 1.0" in text
    assert c.get("/metrics", headers={"X-API-Key": ops_key}).status_code == 200


def test_cors_off_by_default_and_only_for_named_origins(node):
    _, _, client = node
    pre = {"Origin": "https://portal.example.org", "Access-Control-Request-Method": "POST"}
    r = client().options("/v1/score", headers=pre)
    assert "access-control-allow-origin" not in r.headers
    c = client(cors_origins=["https://portal.example.org"])
    r = c.options("/v1/score", headers={**pre, "Access-Control-Request-Headers": "x-api-key,content-type"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://portal.example.org"
    r = c.options("/v1/score", headers={**pre, "Origin": "https://evil.example.com"})
    assert r.headers.get("access-control-allow-origin") != "https://evil.example.com"
    assert (
        c.get("/livez", headers={"Origin": "https://portal.example.org"})
        .headers["access-control-expose-headers"]
        .lower()
        == "x-request-id"
    )


def test_api_section_of_node_config(tmp_path: Path):
    cfg = NodeConfig.from_dict(
        {"site_id": "s", "api": {"max_body_bytes": 65536, "cors_origins": ["https://a.example.org:8443"]}},
        base=tmp_path,
    )
    assert cfg.api == ApiSection(max_body_bytes=65536, cors_origins=("https://a.example.org:8443",))
    assert cfg.log.format == "text"
    for bad in ({"cors_origins": ["*"]}, {"cors_origins": ["https://a.org/path"]}, {"max_body_bytes": 10}):
        with pytest.raises(SpecError, match="api"):
            NodeConfig.from_dict({"site_id": "s", "api": bad}, base=tmp_path)
    with pytest.raises(SpecError, match="log.format"):
        NodeConfig.from_dict({"site_id": "s", "log": {"format": "xml"}}, base=tmp_path)
