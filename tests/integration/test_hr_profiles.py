"""Acceptance (issue #22): a 480-person company's risk profile by job type and by department ×
age band, the node restarted three times, costs its budget once.

A node made by `rehealth node init` ingests the company's persons file into its store (SQLite
file); `rehealth node serve --config` — no book: the store is the population — is started four
times (a first start and three restarts, each a new process on the same store and ledger files),
and each time HR asks both views. The ledger must hold exactly two releases, the budget spent must
not move after the first start, and every start must serve the same noisy view. `rehealth node
groups` (another process) exports the same view as CSV at no cost. Ingesting more staff changes the
data: the next start draws and charges again, and says that the data changed.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from node.config import NodeConfig
from node.ledger import PrivacyLedger
from tests.integration.test_api_ledger import _serve, _stop
from tests.security.hr_company import STAFF, company, risk_model

REHEALTH = str(Path(sys.executable).parent / "rehealth")
VIEWS = ("job_type", "department,age_band")


def _run(*args: str) -> str:
    return subprocess.run([REHEALTH, *args], check=True, capture_output=True, text=True).stdout


def test_profiles_survive_three_restarts_at_one_charge(tmp_path):
    node = tmp_path / "node"
    _run("node", "init", "--dir", str(node), "--site-id", "acme")
    config = str(node / "node.toml")
    cfg = NodeConfig.from_toml(node / "node.toml")
    company(site="acme").to_csv(tmp_path / "persons.csv", index=False)
    loaded = json.loads(
        _run(
            "node",
            "ingest",
            str(tmp_path / "persons.csv"),
            "--kind",
            "persons",
            "-c",
            config,
            "--format",
            "json",
        )
    )
    assert loaded["loaded"] == STAFF and loaded["quarantined"] == 0
    risk_model(node / "models")
    key = json.loads(_run("node", "apikey", "add", "--role", "hr", "--config", config, "--format", "json"))[
        "key"
    ]
    ledger = PrivacyLedger(cfg.ledger_url)

    first: dict[str, dict] = {}
    spent, walls = [], []
    for start in range(4):
        t0 = time.perf_counter()
        proc, base = _serve([REHEALTH, "node", "serve", "--config", config, "--host", "127.0.0.1"])
        try:
            with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=60) as client:
                for by in VIEWS:
                    r = client.get("/v1/groups", params={"by": by})
                    assert r.status_code == 200, r.text
                    view = r.json()
                    assert view["charged_now"] == (start == 0), (start, by, view["note"])
                    first.setdefault(by, view)
                    assert view["cells"] == first[by]["cells"] and view["groups"] == first[by]["groups"]
                    assert view["released_at"] == first[by]["released_at"]
        finally:
            _stop(proc)
        walls.append(time.perf_counter() - t0)
        spent.append(ledger.state().spent)
    print(f"\nserve start + two views, per start (s): {[round(w, 2) for w in walls]}; ε spent: {spent}")
    assert [r.query for r in ledger.history()] == ["group_view:job_type", "group_view:department,age_band"]
    assert spent == [spent[0]] * 4 and 0 < spent[0] <= cfg.budget.epsilon
    assert [r.status for r in ledger.history()] == ["sent", "sent"]
    jobs = {g["values"]["job_type"] for g in first["job_type"]["groups"]}
    assert jobs == {"picker", "forklift_operator", "driver", "clerk", "manager"}

    # the CLI, another process, prints the stored view (no new release)
    out = _run("node", "groups", "--by", "job_type", "--config", config, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    by_cell = {(c["values"]["job_type"], c["tier"]): c["count"] for c in first["job_type"]["cells"]}
    assert {
        (r["job_type"], r["tier"]): (int(r["count"]) if r["count"] else None)
        for r in rows
        if r["tier"] != "all"
    } == by_cell
    assert len(ledger.history()) == 2

    # twenty new staff: new data, so a new draw — charged, and said so
    company(seed=29, n=20, site="acme").assign(person_id=[f"N-{i:03d}" for i in range(20)]).to_csv(
        tmp_path / "new.csv", index=False
    )
    _run("node", "ingest", str(tmp_path / "new.csv"), "--kind", "persons", "-c", config)
    view = json.loads(_run("node", "groups", "--by", "job_type", "--config", config, "--format", "json"))
    assert view["charged_now"] and view["supersedes"]["changed"] == ["data"]
    assert "the data changed" in view["note"]
    assert len(ledger.history()) == 3 and ledger.state().spent > spent[0]
