"""Every release is charged to the node's ledger before it leaves — the HR group views too.

``rehealth node groups`` refuses to run without the node's config (its ledger), but
``rehealth node serve --book FILE`` without one served ``/v1/groups`` noised and unaccounted,
its draw kept only in the process: every restart of the API (a deploy, a crash, a reboot) gave
HR a fresh, free draw of every view, and the average of n draws has noise σ/√n — no budget
stops it. ``serve`` now refuses a book it could not charge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from node.api.auth import add_key
from node.cli import app as cli
from tests.security.hr_company import company, risk_model


def test_restarts_of_an_api_without_a_ledger_give_no_fresh_draws(tmp_path: Path, monkeypatch) -> None:
    import uvicorn

    monkeypatch.chdir(tmp_path)  # no node.toml here: serve finds no config
    risk_model(tmp_path / "models")
    _, hr = add_key(tmp_path / "api_keys.toml", role="hr")
    company(n=400).to_csv(tmp_path / "book.csv", index=False)
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    args = ["serve", "--book", str(tmp_path / "book.csv"), "--model-dir", str(tmp_path / "models")]
    args += ["--keys-file", str(tmp_path / "api_keys.toml")]
    draws = []
    for _restart in range(3):
        res = CliRunner().invoke(cli, args)
        if res.exit_code != 0:
            assert "ledger" in res.output, res.output
            continue
        view = TestClient(apps[-1]).get("/v1/groups", params={"by": "department"}, headers={"X-API-Key": hr})
        assert view.status_code == 200
        draws.append([g["people"] for g in view.json()["groups"]])
    # the attack: as many independent draws of one view as restarts, none of them charged
    assert len(draws) == 0, f"{len(draws)} uncharged draws: {np.unique(draws, axis=0).tolist()}"
