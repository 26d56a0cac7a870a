"""Ed25519 signing and offline verification of evidence reports.

The signed file is itself canonical JSON per RFC 8785 (:mod:`shared.canonical`)::

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
signature matches (all of that is :mod:`shared.signed_report`, which the node's
``rehealth node report import`` runs too); the report follows the schema. An actuary can
reproduce the check without this code: ``deploy/verify/verify-report.mjs`` does it with
Node.js's standard library alone.

Notes:
    Ed25519 verification is deterministic and constant-time in the key (``cryptography``/
    OpenSSL); the private key is written PKCS#8 PEM, encrypted, with mode 0600 (:mod:`keys`)
    and never read by ``verify``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from coordinator.report.document import EvidenceReport
from coordinator.report.errors import ReportError, ReportVerificationError
from coordinator.report.keys import open_private_key, private_key_pem, write_new_private
from shared.canonical import CANONICALIZATION, canonical_bytes
from shared.signed_report import ALGORITHM, key_id, verify_signed_bytes

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
    """Verify a signed report file's bytes against the issuer's public key
    (:func:`shared.signed_report.verify_signed_bytes`), then the report's schema.

    Raises:
        ReportVerificationError: with a message saying what is wrong and a ``reason`` code.
    """
    signed = verify_signed_bytes(data, public_key)
    try:
        report = EvidenceReport.model_validate(signed.report)
    except ValidationError as e:
        raise ReportVerificationError(
            f"signature valid but the report does not follow schema "
            f"{EvidenceReport.model_fields['schema_version'].default}: {e.error_count()} error(s), "
            f"first at {'.'.join(map(str, e.errors()[0]['loc']))}",
            reason="schema",
        ) from None
    return VerifiedReport(report=report, key_id=signed.key_id, sha256=signed.sha256)


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


def _load(path: str | Path, loader, **kwargs):
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ReportError(f"cannot read key {path}: {e.strerror}") from None
    try:
        return loader(data, **kwargs)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ReportError(f"{path}: not a usable PEM key ({e})") from None
