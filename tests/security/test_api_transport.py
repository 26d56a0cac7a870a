"""The node's scoring API on the network: every route but the probes needs a key, and keys,
per-person scores and HR's session cookie never cross a network in the clear.

a. ``rehealth node serve --host 0.0.0.0`` (or ``[api] host`` an interface address, as the
   container guide said) served plain HTTP: anyone on the path read every ``X-API-Key`` and
   every score. A host that is not loopback now needs a certificate and key; without them the
   command refuses before it opens anything.
b. With them it serves HTTPS: a plaintext client gets no answer, a TLS client does.
c. Every route of the app (the OpenAPI ones and the HR view's) refuses a caller without a key,
   with an unknown key, with an expired key and with a key of a role that may not call it;
   only the public probes and pages (health, liveness, readiness, the login and report pages)
   answer without one.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import ipaddress
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from node.api.app import create_app
from node.api.auth import add_key
from node.cli import app as cli
from node.config import is_loopback
from tests.security.hr_company import company, risk_model
from tests.web_node import free_port

#: routes anyone may call: probes (no data but the model's version and readiness words) and
#: the pages that hold no data of the node (sign-in form, its stylesheet, the report checker)
PUBLIC = {"/v1/health", "/livez", "/readyz", "/hr/login", "/hr/static/base.css", "/report"}
HEALTHCHECK = Path(__file__).resolve().parents[2] / "deploy" / "container" / "healthcheck.py"
#: routes FastAPI adds for the API's own description (no data)
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "api.crt", folder / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    risk_model(tmp_path / "models")
    add_key(tmp_path / "api_keys.toml", role="underwriter")
    return tmp_path


def test_a_plain_http_off_loopback_is_refused_before_anything_opens(node_dir, monkeypatch) -> None:
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: served.append(kw))
    common = [
        "serve",
        "--model-dir",
        str(node_dir / "models"),
        "--keys-file",
        str(node_dir / "api_keys.toml"),
    ]
    for host in ("0.0.0.0", "10.1.2.3", "::", "api.example.org"):
        res = CliRunner().invoke(cli, [*common, "--host", host])
        assert res.exit_code != 0 and "plain HTTP" in res.output, (host, res.output)
    assert served == []
    (node_dir / "node.toml").write_text('site_id = "a"\n[api]\nhost = "0.0.0.0"\n')  # the old container guide
    res = CliRunner().invoke(cli, ["serve", "-c", str(node_dir / "node.toml"), "--host", "0.0.0.0"])
    assert res.exit_code != 0 and "plain HTTP" in res.output and served == []
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert is_loopback(host)
        res = CliRunner().invoke(cli, [*common, "--host", host])
        assert res.exit_code == 0, res.output
    assert len(served) == 4 and all(kw["ssl_certfile"] is None for kw in served)
    cert, key = _self_signed(node_dir)
    tls = ["--tls-cert", str(cert), "--tls-key", str(key)]
    key.chmod(0o644)
    res = CliRunner().invoke(cli, [*common, "--host", "0.0.0.0", *tls])
    assert res.exit_code != 0 and "readable by others" in res.output and len(served) == 4
    key.chmod(0o600)
    res = CliRunner().invoke(cli, [*common, "--host", "0.0.0.0", *tls])
    assert res.exit_code == 0, res.output
    assert served[-1]["ssl_certfile"] == str(cert) and served[-1]["ssl_keyfile"] == str(key)
    (node_dir / "node.toml").write_text(
        f'site_id = "a"\n[api]\nhost = "0.0.0.0"\ntls_cert = "{cert.name}"\ntls_key = "{key.name}"\n'
    )
    res = CliRunner().invoke(cli, ["serve", "-c", str(node_dir / "node.toml"), "--host", "0.0.0.0"])
    assert res.exit_code == 0, res.output
    assert served[-1]["ssl_certfile"] == str(cert)


def test_b_with_a_certificate_it_serves_https_only(node_dir, monkeypatch) -> None:
    cert, key = _self_signed(node_dir)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "serve", "--model-dir", str(node_dir / "models")]
        + ["--keys-file", str(node_dir / "api_keys.toml"), "--host", "127.0.0.1", "--port", str(port)]
        + ["--tls-cert", str(cert), "--tls-key", str(key)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"https://127.0.0.1:{port}/v1/health", verify=trust, timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "the API did not start"
                time.sleep(0.3)
        assert r.status_code == 200
        with pytest.raises(httpx.TransportError):  # a plaintext request gets no HTTP answer
            httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=5)
        # the container's health check follows the API to HTTPS
        spec = importlib.util.spec_from_file_location("healthcheck", HEALTHCHECK)
        health = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "healthcheck", health)  # its dataclasses look it up
        spec.loader.exec_module(health)
        assert health.check_api("127.0.0.1", port, tls=True).startswith("scoring API /")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_c_every_route_but_the_public_ones_wants_a_key_of_its_role(tmp_path) -> None:
    keys = tmp_path / "api_keys.toml"
    _, expired = add_key(keys, role="admin", expires_in=dt.timedelta(seconds=1))
    _, ops = add_key(keys, role="ops")
    app = create_app(keys=keys, model=risk_model(tmp_path / "models"), book=company(n=60))
    c = TestClient(app, follow_redirects=False)
    time.sleep(1.1)  # the admin key is expired now
    routes = {(m, r.path) for r in app.routes for m in getattr(r, "methods", ()) if m != "HEAD"}
    guarded = {(m, p) for m, p in routes if p not in PUBLIC | DOCS}
    assert {("POST", "/v1/score"), ("POST", "/v1/score/batch"), ("GET", "/v1/groups")} <= guarded
    for method, path in sorted(guarded):
        url = path.replace("{path}", "x")
        body: dict = {}
        if method == "POST":
            body = {"data": {"csrf": "x"}} if path.startswith("/hr/") else {"json": {}}
        for headers in ({}, {"X-API-Key": "rh_unknown"}, {"X-API-Key": expired}):
            r = c.request(method, url, headers=headers, **body)
            if path.startswith("/hr/"):  # the HR view: a session, not a key; none → sign in
                assert r.status_code == 303 and "/hr/login" in r.headers["location"], (method, path)
            else:
                assert r.status_code == 401, (method, path, headers, r.status_code)
            assert "probability" not in r.text and "tier" not in r.text
        if not path.startswith("/hr/") and path != "/metrics":
            r = c.request(method, url, headers={"X-API-Key": ops}, **body)
            assert r.status_code == 403, (method, path, r.status_code)


def test_d_a_batch_past_the_limit_is_refused_whole_and_nothing_is_scored(tmp_path) -> None:
    from node.api.schemas import MAX_BATCH
    from shared.features import FEATURES

    key = "rh_uw_key_for_the_batch_test"
    c = TestClient(create_app(keys={key: "underwriter"}, model=risk_model(tmp_path / "models")))
    person = {f.name: (0 if f.kind == "binary" else (f.lo + f.hi) / 2) for f in FEATURES}
    r = c.post("/v1/score/batch", json={"persons": [person] * (MAX_BATCH + 1)}, headers={"X-API-Key": key})
    assert r.status_code == 422 and r.json()["field"] == "persons"
    assert "probability" not in r.text and len(r.content) < 2000  # one error, not one per person
    ok = c.post("/v1/score/batch", json={"persons": [person] * 3}, headers={"X-API-Key": key})
    assert ok.status_code == 200 and ok.json()["count"] == 3


def test_e_plans_go_to_the_employers_gateway_encrypted(tmp_path) -> None:
    """A plan says which of a person's factors is off target (health data). ``webhook_url``
    took ``http://`` to any host: every plan crossed the network in the clear."""
    from node.config import NodeConfig
    from shared.errors import SpecError

    def plans(url: str) -> NodeConfig:
        toml = {"site_id": "a", "plans": {"catalogue": "c.toml", "webhook_url": url}}
        return NodeConfig.from_dict(toml, base=tmp_path)

    for url in ("http://gateway.example.org/plans", "http://10.1.2.3:8443/p", "http://0.0.0.0/p"):
        with pytest.raises(SpecError, match="in the clear"):
            plans(url)
    for url in ("https://gateway.example.org/plans", "http://127.0.0.1:9000/p", "http://localhost/p"):
        assert plans(url).plans.webhook_url == url


def test_f_no_page_of_the_node_runs_a_script_from_another_host(tmp_path) -> None:
    """FastAPI's ``/docs`` and ``/redoc`` pages (public, no key) load Swagger UI and ReDoc from
    cdn.jsdelivr.net — a floating version, no integrity hash — into the node's origin, where the
    HR session cookie rides along on same-origin requests and an admin types API keys into the
    "Authorize" box: whoever serves that script reads the HR pages, spends the budget and takes
    the keys. The node serves its OpenAPI document; a viewer for it is the integrator's own."""
    app = create_app(keys={"k": "admin"}, model=risk_model(tmp_path / "models"), book=company(n=60))
    c = TestClient(app, follow_redirects=False)
    assert c.get("/openapi.json").status_code == 200
    for path in sorted(PUBLIC | DOCS - {"/openapi.json"}):
        r = c.get(path)
        if r.status_code == 404:
            continue
        assert not re.search(r"""<(script|link)[^>]+(src|href)=["']?(https?:)?//""", r.text), path
