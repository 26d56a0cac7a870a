"""Verify a signed evidence report's bytes: one check for both sides.

The coordinator (``rehealth report verify``, the console, publishing) and the node
(``rehealth node report import``) accept exactly the same files, so the check lives here, pure:
bytes in (the signed file, the public key), a :class:`SignedReport` out or a
:class:`~shared.errors.ReportVerificationError` with a stable ``reason``. The format is described
in :mod:`coordinator.report.signing`, which signs it; the checks, in order:

1. the bytes parse as strict JSON (:func:`shared.canonical.parse_canonical`) holding ``report``
   and ``signature``;
2. the signature block names RFC 8785 (a file signed under the older recipe is refused as such);
3. the bytes are exactly the RFC 8785 form of what they parse to (any byte change is caught);
4. the block holds exactly its fields, the algorithm is Ed25519, the value canonical base64 of
   64 bytes;
5. the key id is the given key's; 6. the Ed25519 signature over the RFC 8785 bytes of ``report``
   matches.

What the report says (its schema) is the coordinator's to check: the node shows aggregates from
a report that passed these checks, the coordinator validates its model on top.
``deploy/verify/verify-report.mjs`` and the report page's ``report.js`` stay independent checks of
the same format in another language.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shared.canonical import CANONICALIZATION, dump_parsed, first_difference, parse_canonical
from shared.errors import CanonicalisationError, ReportVerificationError, WrongReportKey

__all__ = ["ALGORITHM", "SignedReport", "key_id", "public_key_from_bytes", "verify_signed_bytes"]

ALGORITHM = "Ed25519"
_BLOCK_FIELDS = {"algorithm", "canonicalization", "key_id", "value"}


@dataclass(frozen=True)
class SignedReport:
    """A report whose signature verified: the parsed ``report`` value, not yet schema-checked
    (each side checks what it reads: the coordinator its model, the node that it is an object)."""

    report: Any
    key_id: str
    sha256: str  # of the signed file's bytes: cite it to name exactly this report


def key_id(public_key: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw 32-byte public key: names the key in the signature block."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_key_from_bytes(data: bytes) -> Ed25519PublicKey | None:
    """The Ed25519 public key in ``data`` (PEM, or the raw 32 bytes), or None if it holds none."""
    key: object = None
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            key = None
    if key is None and len(data) == 32:
        key = Ed25519PublicKey.from_public_bytes(data)
    return key if isinstance(key, Ed25519PublicKey) else None


def verify_signed_bytes(data: bytes, public_key: Ed25519PublicKey) -> SignedReport:
    """Verify a signed report file's bytes against the issuer's public key.

    Raises:
        ReportVerificationError: with a message saying what is wrong and a ``reason`` code
            (:class:`~shared.errors.WrongReportKey` for ``wrong-key``).
    """
    try:
        parsed = parse_canonical(data)
    except CanonicalisationError as e:
        raise ReportVerificationError(f"report altered or unreadable: {e}", reason="unreadable") from None
    if not isinstance(parsed, dict) or "report" not in parsed:
        raise ReportVerificationError("not a signed evidence report: no 'report' field", reason="unreadable")
    if "signature" not in parsed:
        raise ReportVerificationError(
            "signature missing: the report is not signed", reason="signature-missing"
        )
    _require_marker(parsed["signature"])
    _require_canonical(data, parsed)
    if set(parsed) != {"report", "signature"}:
        extra = sorted(set(parsed) - {"report", "signature"})
        raise ReportVerificationError(
            f"report altered: unexpected top-level fields {extra}", reason="bad-signature-block"
        )
    signature = _signature_value(parsed["signature"])
    expected = key_id(public_key)
    signed_by = parsed["signature"]["key_id"]
    if signed_by != expected:
        raise WrongReportKey(
            f"signed by a different key (key id {signed_by}); the public key given has key id {expected}",
            signed_by=signed_by,
            given=expected,
        )
    try:
        public_key.verify(signature, _report_bytes(data, parsed))
    except InvalidSignature:
        raise ReportVerificationError(
            "report altered: signature does not match", reason="signature-mismatch"
        ) from None
    return SignedReport(report=parsed["report"], key_id=expected, sha256=hashlib.sha256(data).hexdigest())


def _report_bytes(data: bytes, parsed: dict) -> bytes:
    """The RFC 8785 bytes of ``parsed["report"]``, cut from ``data`` instead of serialised again.

    Called once ``data`` is known to be exactly the RFC 8785 form of ``parsed``, a dict of the
    keys ``report`` and ``signature`` only: that form is ``{"report":`` + the report's form +
    ``,"signature":`` + the block's form + ``}`` (keys sorted, no whitespace), so the middle is
    the report's form byte for byte. The prefix and the (small) block's form are checked, and
    anything else falls back to serialising the report. Halves a verification's cost: the
    serialisation is pure Python, ~2 ms for a small report."""
    head = b'{"report":'
    tail = b',"signature":' + dump_parsed(parsed["signature"]) + b"}"
    if data.startswith(head) and data.endswith(tail) and len(data) > len(head) + len(tail):
        return data[len(head) : -len(tail)]
    return dump_parsed(parsed["report"])


def _require_canonical(data: bytes, parsed: dict) -> None:
    again = dump_parsed(parsed)
    if again != data:
        at = first_difference(again, data)
        raise ReportVerificationError(
            f"report altered: bytes are not canonical (first difference at byte {at})", reason="not-canonical"
        )


def _require_marker(block: object) -> None:
    """Refuse a file whose signature was made over other bytes than RFC 8785's."""
    if not isinstance(block, dict) or "value" not in block:
        return  # no signature at all: the block checks say what is wrong
    marker = block.get("canonicalization")
    if marker is None:
        raise ReportVerificationError(
            "signed under the old pre-RFC 8785 format (its signature block names no "
            "'canonicalization'): this verifier checks only RFC 8785 reports; ask the issuer to "
            "re-issue the report",
            reason="old-format",
        )
    if marker != CANONICALIZATION:
        raise ReportVerificationError(
            f"unknown canonicalization {marker!r}: this verifier checks only {CANONICALIZATION!r}",
            reason="old-format",
        )


def _signature_value(block: object) -> bytes:
    if not isinstance(block, dict) or not _BLOCK_FIELDS <= set(block) <= _BLOCK_FIELDS | {"certificate"}:
        raise ReportVerificationError(
            "report altered: signature block must hold exactly algorithm, canonicalization, key_id, "
            "value and optionally certificate",
            reason="bad-signature-block",
        )
    if "certificate" in block and not isinstance(block["certificate"], str):
        raise ReportVerificationError(
            "report altered: the certificate must be a PEM string", reason="bad-signature-block"
        )
    if block["algorithm"] != ALGORITHM:
        raise ReportVerificationError(
            f"report altered: signature algorithm {block['algorithm']!r}, expected {ALGORITHM}",
            reason="bad-signature-block",
        )
    if not isinstance(block["key_id"], str) or not isinstance(block["value"], str):
        raise ReportVerificationError(
            "report altered: key_id and value must be strings", reason="bad-signature-block"
        )
    try:
        raw = base64.b64decode(block["value"], validate=True)
    except (binascii.Error, ValueError):
        raise ReportVerificationError(
            "report altered: signature value is not base64", reason="bad-signature-block"
        ) from None
    if base64.b64encode(raw).decode("ascii") != block["value"]:  # unused padding bits set
        raise ReportVerificationError(
            "report altered: signature value is not canonical base64", reason="bad-signature-block"
        )
    if len(raw) != 64:
        raise ReportVerificationError(
            "report altered: an Ed25519 signature has 64 bytes", reason="bad-signature-block"
        )
    return raw
