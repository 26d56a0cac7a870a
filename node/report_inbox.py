"""Evidence reports a node has received: verified at import, kept, the newest shown to HR.

``rehealth node report import report.json --key coordinator.pub`` checks the file before it
keeps it, the way ``deploy/verify/verify-report.mjs`` does (the node does not import the
coordinator's code; this is one more independent check of the published format): the bytes are
the RFC 8785 form of what they parse to (``rfc8785``, the maintained implementation), the
signature block names RFC 8785 and Ed25519, ``key_id`` is the SHA-256 of the given key's raw
bytes, and the Ed25519 signature (``cryptography``) over the RFC 8785 bytes of ``report``
matches. A file that fails is refused with the reason and not kept.

Kept as ``<node dir>/reports/<sha256>.json`` (the verified bytes) and ``latest.json`` (which one,
with the key id it verified under and when it was imported). A report holds aggregates only
(estimates, CIs, site counts): showing its HR and ESG summary releases nothing about a person.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.errors import SpecError

__all__ = ["ReportRefused", "StoredReport", "import_report", "latest_report", "verify_bytes"]

REPORTS_DIR = "reports"
_BLOCK = {"algorithm", "canonicalization", "key_id", "value"}


class ReportRefused(SpecError):
    """The report failed verification (the message says why); nothing was kept."""


@dataclass(frozen=True)
class StoredReport:
    report: dict
    sha256: str
    key_id: str
    imported_at: str
    path: Path


def _public_key(path: Path) -> Ed25519PublicKey:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SpecError(f"cannot read public key {path}: {e.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data) if b"-----BEGIN" in data else None
    except ValueError:
        key = None
    if key is None and len(data) == 32:
        key = Ed25519PublicKey.from_public_bytes(data)
    if not isinstance(key, Ed25519PublicKey):
        raise SpecError(f"{path}: not an Ed25519 public key (PEM or raw 32 bytes)")
    return key


def verify_bytes(data: bytes, key: Ed25519PublicKey) -> tuple[dict, str]:
    """The verified report (parsed) and the key id.

    Raises:
        ReportRefused: why the file is not an intact report signed by ``key``.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportRefused(f"not a JSON report: {e}") from None
    if (
        not isinstance(doc, dict)
        or set(doc) != {"report", "signature"}
        or not isinstance(doc["report"], dict)
    ):
        raise ReportRefused("not a signed report: top-level fields must be report and signature")
    block = doc["signature"]
    if not isinstance(block, dict) or not _BLOCK <= set(block) <= _BLOCK | {"certificate"}:
        raise ReportRefused("signature block must hold algorithm, canonicalization, key_id, value")
    if block["canonicalization"] != "RFC 8785" or block["algorithm"] != "Ed25519":
        raise ReportRefused("the signature is not RFC 8785 + Ed25519 (an old or unknown format)")
    try:
        canonical = rfc8785.dumps(doc)
    except rfc8785.CanonicalizationError as e:
        raise ReportRefused(f"no RFC 8785 form: {e}") from None
    if canonical != data:
        raise ReportRefused("the file's bytes are not the RFC 8785 form of its content: it was edited")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = hashlib.sha256(raw).hexdigest()
    if block["key_id"] != kid:
        raise ReportRefused(f"signed by another key (key id {str(block['key_id'])[:16]}…), not {kid[:16]}…")
    try:
        sig = base64.b64decode(str(block["value"]), validate=True)
        key.verify(sig, rfc8785.dumps(doc["report"]))
    except (binascii.Error, InvalidSignature):
        raise ReportRefused("the signature does not match: the report was changed after signing") from None
    return doc["report"], kid


def _write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def import_report(folder: Path, report_path: Path, key_path: Path) -> StoredReport:
    """Verify ``report_path`` with the key at ``key_path`` and keep it as the latest report.

    Raises:
        SpecError: unreadable file or key; ReportRefused: the report does not verify.
    """
    try:
        data = report_path.read_bytes()
    except OSError as e:
        raise SpecError(f"cannot read report {report_path}: {e.strerror}") from None
    report, kid = verify_bytes(data, _public_key(key_path))
    sha = hashlib.sha256(data).hexdigest()
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / f"{sha}.json"
    _write(kept, data)
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    _write(folder / "latest.json", json.dumps({"sha256": sha, "key_id": kid, "imported_at": now}).encode())
    return StoredReport(report=report, sha256=sha, key_id=kid, imported_at=now, path=kept)


def latest_report(folder: Path | None) -> StoredReport | None:
    """The newest imported report, or None (no folder, nothing imported). The kept bytes are
    checked against their recorded SHA-256, so a file swapped on disk is not shown."""
    if folder is None or not (folder / "latest.json").exists():
        return None
    meta = json.loads((folder / "latest.json").read_text())
    path = folder / f"{meta['sha256']}.json"
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise SpecError(f"{path} no longer matches the SHA-256 recorded at import: re-import the report")
    return StoredReport(
        report=json.loads(data)["report"],
        sha256=meta["sha256"],
        key_id=meta["key_id"],
        imported_at=meta["imported_at"],
        path=path,
    )
