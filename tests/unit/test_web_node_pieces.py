"""The pieces behind the node's web pages: the vendored canonicalize file is the recorded one;
`rehealth node report import` keeps a genuine report and refuses a changed or foreign one; the
uptake table counts each person once (sensitivity 1) and `GET /v1/programme` is charged once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select
from typer.testing import CliRunner

from coordinator.report import build_report, sign_report
from node.cli import app as node_cli
from node.plans.uptake import exact_stages
from node.report_inbox import latest_report
from node.store.models import plans
from shared.web import report_page
from tests.unit.report_fixtures import ISSUED_AT, make_result
from tests.web_node import build_node

VENDORED_SHA256 = "c1d0195af2a0748454b06af8f218e5c90415c19d39154d0058fee8229c12d859"


def test_vendored_canonicalize_is_the_recorded_release() -> None:
    folder = report_page.REPORT
    data = (folder / "vendor/canonicalize/canonicalize.js").read_bytes()
    assert hashlib.sha256(data).hexdigest() == VENDORED_SHA256
    assert VENDORED_SHA256 in (folder / "VENDOR.md").read_text()
    lock = json.loads((folder / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/canonicalize"]["integrity"].startswith("sha512-")
    assert report_page.CANONICALIZE_VERSION == "5.1.0"
    assert "export" not in report_page.classic_canonicalize()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    return build_node(tmp_path_factory.mktemp("pieces"), staff=200)


def test_report_import_keeps_genuine_and_refuses_changed_or_foreign(node, tmp_path) -> None:
    cfg = _node_toml(tmp_path)
    doc = build_report(make_result(), issued_at=ISSUED_AT)
    changed = json.loads(node.report)
    changed["report"]["value"]["n_treated"] += 1
    files = {
        "changed.json": rfc8785.dumps(changed),
        "foreign.json": sign_report(doc, Ed25519PrivateKey.generate()),
        "good.json": sign_report(doc, node.signer),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    run = CliRunner().invoke
    for name, why in (
        ("changed.json", "signature does not match"),
        ("foreign.json", "signed by another key"),
    ):
        r = run(
            node_cli,
            ["report", "import", str(tmp_path / name), "--key", str(node.pub_pem), "--config", str(cfg)],
        )
        assert r.exit_code == 1 and why in r.output, r.output
        assert latest_report(tmp_path / "reports") is None  # nothing kept
    r = run(
        node_cli,
        ["report", "import", str(tmp_path / "good.json"), "--key", str(node.pub_pem), "--config", str(cfg)],
    )
    assert r.exit_code == 0, r.output
    kept = latest_report(tmp_path / "reports")
    assert kept is not None and kept.sha256 == hashlib.sha256(files["good.json"]).hexdigest()
    kept.path.write_bytes(files["changed.json"])  # swapped on disk afterwards: not shown
    with pytest.raises(ValueError, match="no longer matches"):
        latest_report(tmp_path / "reports")


def _node_toml(folder: Path) -> Path:
    from node.config import default_config_text

    cfg = folder / "node.toml"
    cfg.write_text(default_config_text(site_id="acme"))
    return cfg


def test_uptake_counts_each_person_with_a_plan_once(node) -> None:
    departments, counts, digest = exact_stages(node.store_url)
    engine = create_engine(node.store_url)
    with engine.connect() as conn:
        people = conn.execute(select(func.count(func.distinct(plans.c.pseudonym)))).scalar()
    engine.dispose()
    assert counts.sum() == people > 0 and counts.shape == (len(departments), 6)
    assert exact_stages(node.store_url)[2] == digest


def test_programme_api_is_hr_only_and_charged_once(node) -> None:
    c = TestClient(node.app())
    assert c.get("/v1/programme", headers={"X-API-Key": node.uw_key}).status_code == 403
    first = c.get("/v1/programme", headers={"X-API-Key": node.hr_key}).json()
    spent = node.ledger.state().spent
    again = TestClient(node.app()).get("/v1/programme", headers={"X-API-Key": node.hr_key}).json()
    assert node.ledger.state().spent == spent and again["charged_now"] is False
    assert {**first, "charged_now": None} == {**again, "charged_now": None}
    assert all(c["count"] is None for c in first["cells"] if c["suppressed"])
