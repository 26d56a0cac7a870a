"""Write a study's evidence report: the signed JSON, the HTML and the PDF, side by side.

``rehealth demo`` and ``rehealth study run`` call :func:`write_signed_report` at the end;
``rehealth report render`` calls the same functions. The HTML and PDF are renderings of the
signed JSON (they show its key id and file hash); the JSON is the evidence.
"""

from __future__ import annotations

import os
from pathlib import Path

from coordinator.report.build import DEFAULT_ISSUER, build_report
from coordinator.report.certify import certified_issuer
from coordinator.report.html import render_html
from coordinator.report.keys import demo_passphrase
from coordinator.report.pdf import render_pdf
from coordinator.report.registration import load_verified
from coordinator.report.signing import (
    ALGORITHM,
    PRIVATE_KEY_NAME,
    PUBLIC_KEY_NAME,
    VerifiedReport,
    generate_keypair,
    load_private_key,
    sign_report,
    verify_signed_report,
)
from coordinator.report.view import Signature, report_view
from shared.result import StudyResult

REPORT_JSON, REPORT_HTML, REPORT_PDF = "report.json", "report.html", "report.pdf"


def write_signed_report(
    result: StudyResult,
    *,
    key_path: str | Path,
    out_dir: str | Path,
    issuer: str | None = None,
    issued_at: str | None = None,
    registration: str | Path | None = None,
) -> dict[str, Path]:
    """Build, sign and render the report of ``result`` into ``out_dir``.

    Args:
        result: the study result.
        key_path: the coordinator's Ed25519 private key (PEM), e.g. from ``rehealth report keygen``.
        out_dir: folder for ``report.json`` (signed), ``report.html`` and ``report.pdf``.
        issuer: who issues the report; by default the subject of the key's certificate
            (``coordinator.crt`` beside a provisioned key, carried in the signed file), else
            "ReHealth Core coordinator".
        issued_at: ISO 8601 time of issue; now when omitted.
        registration: the study's registration file (``rehealth study register``), verified
            under the same key before it is stated in the report.

    Returns:
        ``{"json": path, "html": path, "pdf": path}``.

    Raises:
        ReportError: the key cannot be loaded or the result cannot be reported honestly.
    """
    key = load_private_key(key_path)
    issuer, certificate = certified_issuer(key_path, key, issuer)
    record = (
        None if registration is None else load_verified(Path(registration).read_bytes(), key.public_key())
    )
    doc = build_report(result, issuer=issuer or DEFAULT_ISSUER, issued_at=issued_at, registration=record)
    signed = sign_report(doc, key, certificate=certificate)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / REPORT_JSON
    _write_atomic(json_path, signed)
    verified = verify_signed_report(signed, key.public_key())  # never publish what won't verify
    return {"json": json_path, **write_renderings(verified, signed_name=REPORT_JSON, out_dir=out)}


def write_renderings(verified: VerifiedReport, *, signed_name: str, out_dir: str | Path) -> dict[str, Path]:
    """Write ``report.html`` and ``report.pdf`` for a verified signed report."""
    sig = Signature(
        algorithm=ALGORITHM, key_id=verified.key_id, file_sha256=verified.sha256, file_name=signed_name
    )
    view = report_view(verified.report, signature=sig)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path, pdf_path = out / REPORT_HTML, out / REPORT_PDF
    _write_atomic(html_path, render_html(view).encode("utf-8"))
    _write_atomic(pdf_path, render_pdf(view, created=verified.report.issued_at))
    return {"html": html_path, "pdf": pdf_path}


def ensure_keypair(key_dir: str | Path) -> tuple[Path, Path]:
    """The coordinator key pair in ``key_dir``, generated on first use (for the demo and local
    runs): encrypted like every key, with the configured passphrase or a throw-away one
    (:func:`coordinator.report.keys.demo_passphrase`)."""
    key_dir = Path(key_dir)
    key_path, pub_path = key_dir / PRIVATE_KEY_NAME, key_dir / PUBLIC_KEY_NAME
    passphrase = demo_passphrase(key_dir)
    if key_path.exists() and pub_path.exists():
        return key_path, pub_path
    return generate_keypair(key_dir, passphrase=passphrase, overwrite=True)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
