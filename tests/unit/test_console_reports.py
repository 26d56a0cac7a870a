"""The console's verdict on signed reports: verified against the federation's CA, failed (a
changed byte, another federation's key) or unsigned — with real keys and signatures from a
provisioned kit, shown on the reports page to a signed-in operator."""

from __future__ import annotations

import json
import re

from starlette.testclient import TestClient

from coordinator.console.app import ConsoleConfig, create_app
from coordinator.console.runs import RunManager
from coordinator.console.users import UserStore
from coordinator.console.views import reports
from coordinator.federation.kit_files import CoordinatorKit
from coordinator.federation.provision import FederationFile, provision
from coordinator.report import build_report, load_private_key, sign_report
from coordinator.report.certify import certified_issuer
from tests.unit.report_fixtures import make_result


def _signed(kit: CoordinatorKit) -> bytes:
    key = load_private_key(kit.signing_key)
    issuer, pem = certified_issuer(kit.signing_key, key, None)
    return sign_report(build_report(make_result(privacy=True), issuer=issuer), key, certificate=pem)


def test_reports_are_shown_verified_failed_or_unsigned(tmp_path):
    fed = tmp_path / "fed"
    provision(FederationFile(coordinator="127.0.0.1:1", sites=[{"name": "a"}]), fed, passphrase=None)
    other = tmp_path / "other"  # another federation: its own CA and signing key
    provision(FederationFile(coordinator="127.0.0.1:1", sites=[{"name": "a"}]), other, passphrase=None)
    kit = CoordinatorKit(fed / "coordinator")
    genuine = _signed(kit)
    folder = fed / "reports"
    folder.mkdir()
    (folder / "genuine.json").write_bytes(genuine)
    att = re.search(rb'"att":(-?[0-9.e+-]+)', genuine)
    assert att
    changed = genuine.replace(att.group(0), b'"att":' + str(float(att.group(1)) * 2).encode(), 1)
    assert changed != genuine
    (folder / "tampered.json").write_bytes(changed)
    (folder / "unsigned.json").write_text(json.dumps({"report": json.loads(genuine)["report"]}))
    (folder / "foreign.json").write_bytes(_signed(CoordinatorKit(other / "coordinator")))

    manager = RunManager(kit, fed / "studies", fed / "console" / "runs")
    states = {r["name"]: r["verification"] for r in reports(manager, folder)}
    assert states["genuine.json"]["state"] == "verified"
    assert states["genuine.json"]["issuer"] == "ReHealth Core coordinator"
    assert states["tampered.json"]["state"] == "failed"
    assert states["tampered.json"]["reason"] in ("signature-mismatch", "not-canonical")
    assert states["unsigned.json"]["state"] == "unsigned"
    assert states["foreign.json"]["state"] == "failed"
    assert states["foreign.json"]["reason"] == "bad-certificate"

    UserStore(fed / "console" / "users.json").add("alice", "correct horse battery staple")
    app = create_app(ConsoleConfig(fed, hosts=["testserver"]))
    with TestClient(app, base_url="http://testserver") as c:
        page = c.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        r = c.post(
            "/login",
            data={
                "csrf": token,
                "next": "/",
                "username": "alice",
                "password": "correct horse battery staple",
            },
        )
        assert r.status_code == 200
        listed = {x["name"]: x["verification"]["state"] for x in c.get("/api/reports").json()["reports"]}
        assert listed == {
            "genuine.json": "verified",
            "tampered.json": "failed",
            "unsigned.json": "unsigned",
            "foreign.json": "failed",
        }
        one = c.get("/reports/files/tampered.json").text
        assert "Failed" in one and "Verified" not in one
        assert "Verified" in c.get("/reports/files/genuine.json").text
        assert c.get("/reports/files/..%2F..%2Fcoordinator%2Fca.key").status_code == 404
