"""The billable evidence report: canonical document, value figures, HTML/PDF, Ed25519 signature.

Public API::

    build_report(result, *, issuer=..., issued_at=None) -> EvidenceReport
    report_bytes(report) -> bytes                       # canonical bytes the signature covers
    sign_report(report, private_key) -> bytes           # the signed file's bytes
    verify_signed_report(data, public_key) -> VerifiedReport
    verify_file(report_path, public_key_path) -> VerifiedReport
    write_signed_report(result, *, key_path, out_dir) -> {"json", "html", "pdf": Path}
    generate_keypair(out_dir, *, passphrase) / ensure_keypair(key_dir) -> (key_path, pub_path)

Rendering (matplotlib, fpdf2) is imported on first use, so ``verify`` starts fast.
"""

from coordinator.report.build import build_report
from coordinator.report.document import REPORT_SCHEMA_VERSION, EvidenceReport
from coordinator.report.errors import CanonicalisationError, ReportError, ReportVerificationError
from coordinator.report.signing import (
    VerifiedReport,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    report_bytes,
    sign_report,
    verify_file,
    verify_signed_report,
)
from shared.canonical import canonical_bytes

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "CanonicalisationError",
    "EvidenceReport",
    "ReportError",
    "ReportVerificationError",
    "VerifiedReport",
    "build_report",
    "canonical_bytes",
    "ensure_keypair",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "report_bytes",
    "sign_report",
    "verify_file",
    "verify_signed_report",
    "write_renderings",
    "write_signed_report",
]

_LAZY = {"ensure_keypair", "write_renderings", "write_signed_report"}


def __getattr__(name: str):
    if name in _LAZY:
        from coordinator.report import publish

        return getattr(publish, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
