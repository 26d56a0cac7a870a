"""Group views charge the node's privacy ledger before release: `rehealth node serve --config`.

A node made by `rehealth node init` (budget ε = 10, δ = 1e-6 by default) serves group views at
σ = 0.9·√2; each grouping is one Gaussian release of sensitivity √2 (counts and risk sums), so a
noise multiplier of 0.9. The ledger (node.toml's
``ledger_url``: the population budget studies draw from too) must record each view once — repeats,
and a restarted server, serve the stored view — and refuse the release that would exceed the budget
with a clear JSON error, leaving the ledger unchanged.
"""

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
from node.config import NodeConfig
from node.ledger import PrivacyLedger
from node.risk.model_store import ModelStore, TrainingRecord
from shared.dp.accounting import epsilon_spent
from shared.synth import generate_cohort

REHEALTH = str(Path(sys.executable).parent / "rehealth")
SIGMA = 0.9 * 2**0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*args: str) -> str:
    return subprocess.run([REHEALTH, *args], check=True, capture_output=True, text=True).stdout


def test_group_views_are_charged_once_and_refused_over_budget(tmp_path):
    node = tmp_path / "node"
    _run("node", "init", "--dir", str(node), "--site-id", "ledger_site")
    cfg = NodeConfig.from_toml(node / "node.toml")
    assert (
        epsilon_spent(noise_multipliers=[0.9, 0.9], delta=cfg.budget.delta)
        <= cfg.budget.epsilon
        < epsilon_spent(noise_multipliers=[0.9] * 3, delta=cfg.budget.delta)
    )
    ModelStore(node / "models").save(
        arrays=[np.full((1, 16), 0.2), np.array([-3.0])], record=TrainingRecord(rounds=1)
    )
    key = json.loads(
        _run("node", "apikey", "add", "--role", "hr", "--config", str(node / "node.toml"), "--format", "json")
    )["key"]
    book, _ = generate_cohort(n=2000, seed=5)
    book.to_parquet(node / "book.parquet")
    serve = [
        REHEALTH,
        "node",
        "serve",
        "--config",
        str(node / "node.toml"),
        "--book",
        str(node / "book.parquet"),
        "--sigma",
        repr(SIGMA),
        "--host",
        "127.0.0.1",
    ]
    proc, base = _serve(serve)
    try:
        ledger = PrivacyLedger(cfg.ledger_url)
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=30) as client:
            first = client.get("/v1/groups", params={"by": "department"})
            assert first.status_code == 200, first.text
            again = client.get("/v1/groups", params={"by": "department"}).json()
            assert again["cells"] == first.json()["cells"] and not again["charged_now"]
            assert [r.query for r in ledger.history()] == ["group_view:department"]
    finally:
        _stop(proc)
    proc, base = _serve(serve)  # a restart serves the stored view: no fresh draw, no new charge
    try:
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=30) as client:
            again = client.get("/v1/groups", params={"by": "department"}).json()
            assert again["cells"] == first.json()["cells"] and not again["charged_now"]
            assert [r.query for r in ledger.history()] == ["group_view:department"]
            assert client.get("/v1/groups", params={"by": "age_band"}).status_code == 200
            refused = client.get("/v1/groups", params={"by": "department,age_band"})
        assert refused.status_code == 409
        assert "budget" in refused.json()["error"] and "left" in refused.json()["error"]
        history = ledger.history()
        assert [r.query for r in history] == ["group_view:department", "group_view:age_band"]
        assert all(r.sigma == SIGMA and r.sensitivity == pytest.approx(2**0.5) for r in history)
        assert [r.status for r in history] == ["sent", "sent"]  # answered, so recorded as sent
        assert ledger.state().spent <= cfg.budget.epsilon
    finally:
        _stop(proc)


def _serve(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, proc)
    except RuntimeError as e:
        _stop(proc)
        pytest.fail(str(e))
    return proc, base


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=10)
