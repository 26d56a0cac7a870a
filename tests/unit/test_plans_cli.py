"""``rehealth node plans`` through the CLI on a real node directory (ingested staff, served
model, secrets made at run time), delivering to a real HTTP receiver on 127.0.0.1; the signed
callback through the node API; the operator's event import."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from node.api.app import create_app
from node.cli import app
from node.cli.serve import _plan_callbacks
from node.config import NodeConfig
from node.plans.signing import IDEMPOTENCY, SIGNATURE, TIMESTAMP, sign
from node.risk.model_store import ModelStore
from node.risk.scoring import Scorer, feature_matrix
from tests.security.hr_company import company, risk_model
from tests.unit.webhook_receiver import Receiver


def _run(*args: str):
    res = CliRunner().invoke(app, list(args))
    return res


@pytest.fixture
def node_dir(tmp_path):
    assert _run("init", "--dir", str(tmp_path), "--site-id", "acme").exit_code == 0
    staff = company(n=120).drop(columns=["site"])
    staff.to_csv(tmp_path / "staff.csv", index=False)
    cfg = str(tmp_path / "node.toml")
    res = _run("ingest", str(tmp_path / "staff.csv"), "--kind", "persons", "--config", cfg)
    assert res.exit_code == 0, res.output
    risk_model(tmp_path / "models")
    for name in ("webhook.secret", "callback.secret"):
        assert _run("plans", "secret", str(tmp_path / name)).exit_code == 0
    assert (tmp_path / "webhook.secret").stat().st_mode & 0o077 == 0
    return tmp_path


def _configure(node_dir, url: str) -> str:
    with open(node_dir / "node.toml", "a") as f:
        f.write(
            "\n[plans]\n"
            f'catalogue = "{__import__("pathlib").Path("deploy/examples/plan-catalogue.toml").resolve()}"\n'
            f'webhook_url = "{url}"\n'
            "max_attempts = 3\nbackoff_ms = 1\ntimeout_s = 0.3\n"
        )
    return str(node_dir / "node.toml")


def test_generate_deliver_opt_out_callback_and_import(node_dir):
    secret = bytes.fromhex((node_dir / "webhook.secret").read_text().strip())
    rx = Receiver(secret=secret, script=[500, "slow"])
    cfg = _configure(node_dir, rx.url)
    try:
        res = _run("plans", "generate", "--min-risk", "0.2", "--config", cfg, "--format", "json")
        assert res.exit_code == 0, res.output
        generated = json.loads(res.output)["generated"]
        assert generated > 3
        staff = company(n=120)
        prob = Scorer.from_model(ModelStore(node_dir / "models").latest()).score(feature_matrix(staff)).prob
        high = staff["person_id"][prob >= 0.2].iloc[0]
        assert _run("plans", "opt-out", "--person-id", high, "--config", cfg).exit_code == 0
        res = _run("plans", "deliver", "--config", cfg, "--format", "json")
        assert res.exit_code == 0, res.output
        out = json.loads(res.output)
        assert out["skipped"] == 1 and out["delivered"] == generated - 1 and out["failed_attempts"] == 2
        assert len(rx.applied) == out["delivered"] and rx.bad_signatures == 0
        # the recipient id the app enrols a person under is the one plans name them by
        rids = {body["recipient"]: pid for pid, body in rx.applied.items()}
        found = None
        for i in range(120):
            rid = _run("plans", "recipient", "--person-id", f"P-{i:05d}", "--config", cfg).output.strip()
            if rid in rids:
                found = rids[rid]
                break
        assert found is not None
    finally:
        rx.close()
    body = rx.applied[found]

    # the callback through the node API: signed → 200, replayed → 409, forged → 401
    conf = NodeConfig.from_toml(cfg)
    api = create_app(keys={"k": "admin"}, model_dir=node_dir / "models", plan_callbacks=_plan_callbacks(conf))
    client = TestClient(api)
    event = json.dumps({"plan_id": found, "recipient": body["recipient"], "event": "opened"}).encode()
    cb_secret = bytes.fromhex((node_dir / "callback.secret").read_text().strip())
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP: str(ts),
        SIGNATURE: sign(cb_secret, ts, event, "evt-1"),
        IDEMPOTENCY: "evt-1",
    }
    r = client.post("/v1/plans/events", content=event, headers=headers)
    assert r.status_code == 200 and r.json() == {"recorded": "opened"}
    assert client.post("/v1/plans/events", content=event, headers=headers).status_code == 409
    forged = {**headers, SIGNATURE: sign(secret, ts, event, "evt-2"), IDEMPOTENCY: "evt-2"}  # the webhook key
    r = client.post("/v1/plans/events", content=event, headers=forged)
    assert r.status_code == 401 and found not in r.text

    # the operator imports a completion; importing the same file again adds nothing
    code = body["items"][0]["code"]
    line = {"plan_id": found, "event": "completed", "code": code, "at": "2025-03-01T10:00:00+00:00"}
    (node_dir / "events.jsonl").write_text(json.dumps(line) + "\n")
    for recorded, already in ((1, 0), (0, 1)):
        res = _run(
            "plans", "import-events", str(node_dir / "events.jsonl"), "--config", cfg, "--format", "json"
        )
        assert json.loads(res.output) == {"recorded": recorded, "already": already}, res.output
    res = _run("plans", "status", "--config", cfg, "--format", "json")
    status = json.loads(res.output)
    assert status["plans"]["skipped"] == 1 and status["events"]["opened"] == 1
    assert status["events"]["completed"] == 1 and status["events"]["failed"] == 2


def test_deliver_to_a_gateway_that_stays_down_exits_2_with_dead_letters(node_dir):
    secret = bytes.fromhex((node_dir / "webhook.secret").read_text().strip())
    rx = Receiver(secret=secret, script=[500] * 1000)
    cfg = _configure(node_dir, rx.url)
    try:
        assert _run("plans", "generate", "--min-risk", "0.5", "--config", cfg).exit_code == 0
        res = _run("plans", "deliver", "--config", cfg, "--format", "json")
    finally:
        rx.close()
    assert res.exit_code == 2 and json.loads(res.output)["dead_lettered"] >= 1
    assert rx.requests == 3 * json.loads(res.output)["dead_lettered"]


def test_without_a_plans_section_the_commands_say_what_is_missing(node_dir):
    res = _run("plans", "generate", "--config", str(node_dir / "node.toml"))
    assert res.exit_code == 1 and "[plans]" in res.output
