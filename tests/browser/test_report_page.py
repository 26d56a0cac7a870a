"""The report page in headless Chromium, served by a node at ``/report`` and opened offline from
a saved file: a genuine signed report verifies and is drawn with its figures; a report with one
changed value, one signed by another key and one re-spaced are "NOT VERIFIED"; the page's RFC 8785
bytes (the vendored ``canonicalize``) equal Python's ``rfc8785`` on the report."""

from __future__ import annotations

import json

import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.report import build_report, sign_report
from node.api.app import create_app
from shared.web.report_page import page as report_html
from tests.security.hr_company import risk_model
from tests.unit.report_fixtures import ISSUED_AT, make_result
from tests.web_node import Served


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    doc = build_report(make_result(privacy=True), issued_at=ISSUED_AT)
    genuine = sign_report(doc, key)
    parsed = json.loads(genuine)
    parsed["report"]["outcomes"][0]["estimate"]["att"] = -512.5  # one value changed
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "genuine": genuine,
        "tampered": rfc8785.dumps(parsed),  # canonical bytes: only the signature can tell
        "other_key": sign_report(doc, other),
        "respaced": genuine.replace(b'{"report":', b'{ "report":', 1),
        "pem": pem,
        "raw": raw,
    }


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    app = create_app(keys={}, model=risk_model(tmp_path_factory.mktemp("m")))
    served = Served(app)
    try:
        yield served.url
    finally:
        served.stop()


def _check(page, report: bytes, key: bytes, key_name: str = "coordinator.pub") -> str:
    page.set_input_files(
        "#report-file", {"name": "report.json", "mimeType": "application/json", "buffer": report}
    )
    page.set_input_files(
        "#key-file", {"name": key_name, "mimeType": "application/octet-stream", "buffer": key}
    )
    page.wait_for_function("document.body.dataset.verified !== undefined")
    return page.inner_text("#verdict")


def test_genuine_report_verifies_and_is_drawn(url, signed, page, shot) -> None:
    page.goto(f"{url}/report")
    verdict = _check(page, signed["genuine"], signed["pem"])
    assert verdict.startswith("VERIFIED")
    assert page.locator("#content svg.chart").count() == 3  # estimates, balance, overlap
    assert page.locator("#content figure circle").count() > 10
    assert "For HR, management and ESG reporting" in page.inner_text("#content")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot(page, "verified")
    assert page.console_errors == []


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered", "signature does not match"),
        ("other_key", "signed by another key"),
        ("respaced", "not the RFC 8785 form"),
    ],
)
def test_altered_report_is_not_verified(url, signed, page, shot, case, reason) -> None:
    page.goto(f"{url}/report")
    verdict = _check(page, signed[case], signed["pem"])
    assert verdict.startswith("NOT VERIFIED") and reason in verdict, verdict
    assert page.locator("#content svg").count() == 0  # an unverified report's figures are not drawn
    shot(page, case)


def test_page_canonical_bytes_equal_python_rfc8785(url, signed, page) -> None:
    page.goto(f"{url}/report")
    text = signed["genuine"].decode()
    js = page.evaluate("t => rehealthReport.canonicalize(JSON.parse(t).report)", text)
    assert js.encode() == rfc8785.dumps(json.loads(text)["report"])
    assert (
        page.evaluate("t => rehealthReport.canonicalize(JSON.parse(t))", text).encode() == signed["genuine"]
    )


def test_saved_page_verifies_offline_with_a_raw_key(tmp_path, signed, page, shot) -> None:
    saved = tmp_path / "verify-report.html"
    saved.write_text(report_html(), encoding="utf-8")
    page.goto(saved.as_uri())
    assert _check(page, signed["genuine"], signed["raw"], "coordinator.raw").startswith("VERIFIED")
    shot(page, "offline")
    assert page.console_errors == []
