"""The real `rehealth node serve` process on 127.0.0.1, configured from node.toml ([api] limit,
[log] format = "json"): one JSON audit line on stderr per request (issue #20: it used to log
0 bytes over ~40 requests, 401/403/409 included), a 413 before the key check, /readyz over the
real store and ledger, and /metrics scraped with an ops key as Prometheus sends it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from node.api.ready import wait_until_healthy
from node.risk.model_store import ModelStore, TrainingRecord
from shared.features import FEATURES

REHEALTH = str(Path(sys.executable).parent / "rehealth")
REF = "LIVE-REF-94XQ"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rehealth(*args: str) -> str:
    return subprocess.run([REHEALTH, *args], check=True, capture_output=True, text=True).stdout


def test_serve_logs_an_audit_line_per_call_and_serves_metrics(tmp_path):
    root = tmp_path / "node"
    _rehealth("node", "init", "--dir", str(root), "--site-id", "live")
    config = root / "node.toml"
    config.write_text(config.read_text() + '\n[api]\nmax_body_bytes = 65536\n\n[log]\nformat = "json"\n')
    ModelStore(root / "models").save(
        arrays=[np.linspace(-0.6, 0.9, 16).reshape(1, 16), np.array([-2.5])],
        record=TrainingRecord(rounds=5, nodes=3, epsilon=8.0, delta=1e-5, metrics={"auc": 0.8}),
    )
    key = {
        role: json.loads(
            _rehealth("node", "apikey", "create", "--role", role, "-c", str(config), "--format", "json")
        )
        for role in ("underwriter", "ops")
    }
    port = _free_port()
    stderr = (tmp_path / "serve.err").open("wb")
    proc = subprocess.Popen(
        [REHEALTH, "node", "serve", "-c", str(config), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        # node.toml's [log] decides: no REHEALTH_LOG_* from the caller's environment
        env={k: v for k, v in os.environ.items() if not k.startswith("REHEALTH_LOG_")}
        | {"OMP_NUM_THREADS": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    person = {f.name: (0 if f.kind == "binary" else (f.lo + f.hi) / 2) for f in FEATURES} | {"ref": REF}
    try:
        wait_until_healthy(base, proc)
        with httpx.Client(base_url=base, timeout=30) as c:
            u = {"X-API-Key": key["underwriter"]["key"]}
            r = c.post("/v1/score", json=person, headers={**u, "X-Request-ID": "live-1"})
            assert r.status_code == 200 and r.headers["x-request-id"] == "live-1"
            assert c.post("/v1/score", json=person).status_code == 401
            big = c.post("/v1/score", content=b"[" * 100_000, headers={"content-type": "application/json"})
            assert big.status_code == 413  # no key, and not parsed: 413, not 401 or 422
            ready = c.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"model": "ok", "store": "ok", "budget": "ok"}
            assert c.get("/metrics").status_code == 401
            m = c.get("/metrics", headers={"Authorization": f"Bearer {key['ops']['key']}"})
            assert m.status_code == 200
            assert 'rehealth_api_requests_total{method="POST",route="/v1/score",status="413"} 1.0' in m.text
            assert "rehealth_budget_epsilon_remaining 10.0" in m.text  # node.toml's budget, none spent
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        stderr.close()
    text = (tmp_path / "serve.err").read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    audit = [r for r in lines if r["logger"] == "rehealth.api.audit"]
    calls = [(a["route"], a["status"]) for a in audit if a["route"] != "/v1/health"]  # the start-up polls
    assert calls == [("/v1/score", 200), ("/v1/score", 401), ("/v1/score", 413), ("/readyz", 200)] + [
        ("/metrics", 401),
        ("/metrics", 200),
    ]
    first = next(a for a in audit if a["request_id"] == "live-1")
    assert (first["key_id"], first["role"], first["method"]) == (
        key["underwriter"]["id"],
        "underwriter",
        "POST",
    )
    assert audit[-1]["key_id"] == key["ops"]["id"]
    assert any(r["msg"] == "scoring API starting" for r in lines)
    for secret in (REF, key["underwriter"]["key"], key["ops"]["key"]):
        assert secret not in text
    if proc.returncode not in (0, -15):
        pytest.fail(f"serve exited {proc.returncode}")
