"""Ed25519 signing and offline verification of evidence reports.

The signed file is itself canonical JSON per RFC 8785 (:mod:`canonical`)::

    {"report": {...},
     "signature": {"algorithm": "Ed25519", "canonicalization": "RFC 8785", "key_id": <hex>,
                   "value": <base64>, "certificate": <PEM, optional>}}

``value`` is the Ed25519 signature (RFC 8032) over the RFC 8785 bytes of ``report``, which are
also, verbatim, the bytes between ``{"report":`` and ``,"signature":`` in the file. ``key_id`` is
the SHA-256 (hex) of the 32-byte raw public key; ``certificate`` is the signing key's X.509
certificate from the federation's CA (:mod:`certify`), which binds the report's ``issuer`` to
the key. ``canonicalization`` names the byte recipe, so a file signed under the pre-RFC 8785
recipe (Python's float text, no marker) is refused with that reason instead of failing
somewhere obscure or, worse, being checked against bytes it was never signed over.

Verification needs only the file and the public key (or the CA certificate, :mod:`certify`),
and checks, in order: the file parses as strict JSON; it carries a signature; the signature
block names RFC 8785; the file's bytes are exactly the RFC 8785 serialisation of what they parse
to (so *any* byte change is caught, even whitespace); the key id is the expected key's; the
signature matches; the report follows the schema. An actuary can reproduce the check without
this code: ``deploy/verify/verify-report.mjs`` does it with Node.js's standard library alone.

Notes:
    Ed25519 verification is deterministic and constant-time in the key (``cryptography``/
    OpenSSL); the private key is written PKCS#8 PEM, encrypted, with mode 0600 (:mod:`keys`)
    and never read by ``verify``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from coordinator.report.canonical import (
    CANONICALIZATION,
    canonical_bytes,
    dump_parsed,
    first_difference,
    parse_canonical,
)
from coordinator.report.document import EvidenceReport
from coordinator.report.errors import CanonicalisationError, ReportError, ReportVerificationError
from coordinator.report.keys import open_private_key, private_key_pem, write_new_private

ALGORITHM = "Ed25519"
PRIVATE_KEY_NAME = "coordinator.key"
PUBLIC_KEY_NAME = "coordinator.pub"


@dataclass(frozen=True)
class VerifiedReport:
    """A report that passed verification, with the key that signed it."""

    report: EvidenceReport
    key_id: str
    sha256: str  # of the signed file's bytes: cite it to name exactly this report


def generate_keypair(
    out_dir: str | Path, *, passphrase: bytes | None, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``coordinator.key`` (PKCS#8 PEM, mode 0600, encrypted with ``passphrase``) and
    ``coordinator.pub`` (PEM).

    Args:
        passphrase: encrypts the private key; ``None`` writes it in the clear, which callers ask
            for explicitly (``--insecure-plaintext-key``), see :mod:`coordinator.report.keys`.

    Raises:
        ReportError: a key file exists and ``overwrite`` is false.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key_path, pub_path = out / PRIVATE_KEY_NAME, out / PUBLIC_KEY_NAME
    if not overwrite and (key_path.exists() or pub_path.exists()):
        raise ReportError(f"{key_path} or {pub_path} exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    write_new_private(key_path, private_key_pem(key, passphrase))
    pub_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_path, pub_path


def load_private_key(path: str | Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """The Ed25519 signing key at ``path``; an encrypted one is opened with ``passphrase`` or the
    configured one (``REHEALTH_KEY_PASSPHRASE`` / ``_FILE``).

    Raises: ReportError if the file is missing, cannot be decrypted or is not an Ed25519 key.
    """
    key = open_private_key(path, passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise ReportError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """Raises: ReportError if the file is missing or not an Ed25519 PEM public key."""
    key = _load(path, serialization.load_pem_public_key)
    if not isinstance(key, Ed25519PublicKey):
        raise ReportError(f"{path}: not an Ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw 32-byte public key: names the key in the signature block."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def report_bytes(report: EvidenceReport) -> bytes:
    """The canonical bytes of the report document: what the signature covers."""
    return canonical_bytes(report.model_dump(mode="json"))


def sign_report(
    report: EvidenceReport, private_key: Ed25519PrivateKey, *, certificate: str | None = None
) -> bytes:
    """The signed report file's bytes (RFC 8785 JSON of report + signature block).

    Args:
        certificate: the signing key's certificate (PEM) from the federation's CA, carried in
            the signature block so ``rehealth report verify --ca`` can bind issuer and key.
    """
    body = report.model_dump(mode="json")
    signature = private_key.sign(canonical_bytes(body))
    block = {
        "algorithm": ALGORITHM,
        "canonicalization": CANONICALIZATION,
        "key_id": key_id(private_key.public_key()),
        "value": base64.b64encode(signature).decode("ascii"),
    }
    if certificate is not None:
        block["certificate"] = certificate
    return canonical_bytes({"report": body, "signature": block})


def verify_signed_report(data: bytes, public_key: Ed25519PublicKey) -> VerifiedReport:
    """Verify a signed report file's bytes against the issuer's public key.

    Raises:
        ReportVerificationError: with a message saying what is wrong and a ``reason`` code.
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
    if parsed["signature"]["key_id"] != expected:
        raise ReportVerificationError(
            f"signed by a different key (key id {parsed['signature']['key_id']}); "
            f"the public key given has key id {expected}",
            reason="wrong-key",
        )
    try:
        public_key.verify(signature, dump_parsed(parsed["report"]))
    except InvalidSignature:
        raise ReportVerificationError(
            "report altered: signature does not match", reason="signature-mismatch"
        ) from None
    try:
        report = EvidenceReport.model_validate(parsed["report"])
    except ValidationError as e:
        raise ReportVerificationError(
            f"signature valid but the report does not follow schema "
            f"{EvidenceReport.model_fields['schema_version'].default}: {e.error_count()} error(s), "
            f"first at {'.'.join(map(str, e.errors()[0]['loc']))}",
            reason="schema",
        ) from None
    return VerifiedReport(report=report, key_id=expected, sha256=hashlib.sha256(data).hexdigest())


def verify_file(report_path: str | Path, public_key_path: str | Path) -> VerifiedReport:
    """Verify the signed report at ``report_path`` with the PEM public key at ``public_key_path``.

    Raises:
        ReportError: the key cannot be loaded or the report file cannot be read.
        ReportVerificationError: the report fails verification.
    """
    public_key = load_public_key(public_key_path)
    try:
        data = Path(report_path).read_bytes()
    except OSError as e:
        raise ReportError(f"cannot read report {report_path}: {e.strerror}") from None
    return verify_signed_report(data, public_key)


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


_BLOCK_FIELDS = {"algorithm", "canonicalization", "key_id", "value"}


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


def _load(path: str | Path, loader, **kwargs):
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ReportError(f"cannot read key {path}: {e.strerror}") from None
    try:
        return loader(data, **kwargs)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ReportError(f"{path}: not a usable PEM key ({e})") from None
