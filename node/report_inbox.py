"""Evidence reports a node has received: verified at import, kept, the newest shown to HR.

``rehealth node report import report.json --key coordinator.pub`` checks the file before it
keeps it with the check the coordinator's ``rehealth report verify`` runs,
:func:`shared.signed_report.verify_signed_bytes` (the node does not import the coordinator's
code): the bytes are the RFC 8785 form of what they parse to, the signature block names RFC 8785
and Ed25519, ``key_id`` is the SHA-256 of the given key's raw bytes, and the Ed25519 signature
over the RFC 8785 bytes of ``report`` matches; the node then needs ``report`` to be an object.
A file that fails is refused with the reason and not kept.

Kept as ``<node dir>/reports/<sha256>.json`` (the verified bytes) and ``latest.json`` (which one,
with the key id it verified under and when it was imported). A report holds aggregates only
(estimates, CIs, site counts): showing its HR and ESG summary releases nothing about a person.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.errors import ReportVerificationError, SpecError, WrongReportKey
from shared.signed_report import public_key_from_bytes, verify_signed_bytes

__all__ = ["ReportRefused", "StoredReport", "import_report", "latest_report", "verify_bytes"]

REPORTS_DIR = "reports"


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
    key = public_key_from_bytes(data)
    if key is None:
        raise SpecError(f"{path}: not an Ed25519 public key (PEM or raw 32 bytes)")
    return key


def verify_bytes(data: bytes, key: Ed25519PublicKey) -> tuple[dict, str]:
    """The verified report (parsed) and the key id.

    Raises:
        ReportRefused: why the file is not an intact report signed by ``key``.
    """
    try:
        signed = verify_signed_bytes(data, key)
    except WrongReportKey as e:
        raise ReportRefused(
            f"signed by another key (key id {e.signed_by[:16]}…), not {e.given[:16]}…"
        ) from None
    except ReportVerificationError as e:
        raise ReportRefused(str(e)) from None
    if not isinstance(signed.report, dict):
        raise ReportRefused("not a signed report: its report field must be an object")
    return signed.report, signed.key_id


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
