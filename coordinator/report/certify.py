"""The issuer bound to the key: a report verified against the federation's CA certificate.

A public key alone says nothing about *who* signed: anyone can make a key pair and write
"ReHealth Core coordinator" into a report's ``issuer``. Provisioning therefore has the
federation's CA certify the operator's report-signing key (``signing/coordinator.crt``, subject
CN = the operator's name, key usage digital signature + content commitment only); the signed
report carries that certificate in its signature block, and ``rehealth report verify --ca
ca.crt`` accepts a report only if

1. the certificate was issued by that CA (signature checked), is an end-entity certificate with
   the signing key usage, and its key is Ed25519;
2. the report is intact and signed by the certified key (:func:`verify_signed_report`);
3. the report was issued while the certificate was valid; and
4. the report's ``issuer`` is exactly the certificate's subject common name.

A self-made CA or certificate claiming the operator's name fails 1; a certificate lifted from a
genuine report and attached to a report signed by another key fails 2; a genuine key signing
under another name fails 4.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from coordinator.report.errors import CanonicalisationError, ReportError, ReportVerificationError
from coordinator.report.signing import VerifiedReport, verify_signed_report
from shared.canonical import parse_canonical
from shared.tls import SIGNING_KEY_USAGE

CERTIFICATE_NAME = "coordinator.crt"  # beside coordinator.key in a provisioned kit

__all__ = [
    "CERTIFICATE_NAME",
    "CertifiedReport",
    "certificate_beside",
    "certified_issuer",
    "check_certificate_matches",
    "common_name",
    "verify_with_ca",
]


@dataclass(frozen=True)
class CertifiedReport:
    verified: VerifiedReport
    subject: str  # the certificate's subject CN, equal to the report's issuer
    ca_subject: str


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def certificate_beside(key_path: str | Path) -> str | None:
    """The PEM of ``coordinator.crt`` in the key's folder (a provisioned kit), or None."""
    path = Path(key_path).with_name(CERTIFICATE_NAME)
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ReportError(f"cannot read certificate {path}: {e.strerror}") from None


def check_certificate_matches(pem: str, key: Ed25519PrivateKey) -> x509.Certificate:
    """The certificate, after checking it certifies ``key`` (never publish a report that the
    certificate beside it would not verify).

    Raises:
        ReportError: the PEM is no certificate, or it certifies another key.
    """
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as e:
        raise ReportError(f"not a PEM certificate: {e}") from None
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    if not isinstance(cert.public_key(), Ed25519PublicKey) or cert.public_key().public_bytes(
        *raw
    ) != key.public_key().public_bytes(*raw):
        raise ReportError(
            f"the certificate of {common_name(cert)!r} certifies another key than the signing key"
        )
    return cert


def certified_issuer(
    key_path: str | Path, key: Ed25519PrivateKey, issuer: str | None
) -> tuple[str | None, str | None]:
    """(issuer, certificate PEM) for signing with the key at ``key_path``: with a certificate
    beside the key, the issuer is its subject (an ``issuer`` given that differs is refused, as
    ``verify --ca`` would refuse the report); without one, ``issuer`` as given and no certificate.

    Raises:
        ReportError: the certificate certifies another key, or names another issuer.
    """
    pem = certificate_beside(key_path)
    if pem is None:
        return issuer, None
    name = common_name(check_certificate_matches(pem, key))
    if issuer is not None and issuer != name:
        raise ReportError(
            f"issuer {issuer!r} is not the name the signing key is certified for ({name!r}, "
            f"{Path(key_path).with_name(CERTIFICATE_NAME)}): leave --issuer out"
        )
    return name, pem


def verify_with_ca(data: bytes, ca_pem: bytes) -> CertifiedReport:
    """Verify a signed report's bytes and bind its issuer to its key through ``ca_pem``.

    Raises:
        ReportError: ``ca_pem`` is not a CA certificate.
        ReportVerificationError: reason ``no-certificate``, ``bad-certificate`` (not issued by
            the CA, wrong usage, expired at issue) or ``issuer-mismatch``, or any reason of
            :func:`verify_signed_report`.
    """
    ca = _load_ca(ca_pem)
    cert = _carried_certificate(data)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ReportVerificationError(
            f"the report's certificate (subject {common_name(cert)!r}, issuer "
            f"{cert.issuer.rfc4514_string()!r}) was not issued by the CA {common_name(ca)!r}",
            reason="bad-certificate",
        ) from None
    _require_signing_certificate(cert)
    public_key = cert.public_key()
    if not isinstance(public_key, Ed25519PublicKey):
        raise ReportVerificationError(
            "the report's certificate is not for an Ed25519 key", reason="bad-certificate"
        )
    verified = verify_signed_report(data, public_key)
    report = verified.report
    issued = _parse_time(report.issued_at)
    if not cert.not_valid_before_utc <= issued <= cert.not_valid_after_utc:
        raise ReportVerificationError(
            f"the report was issued at {report.issued_at}, outside its certificate's validity "
            f"({cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()})",
            reason="bad-certificate",
        )
    subject = common_name(cert)
    if report.issuer != subject:
        raise ReportVerificationError(
            f"the report names its issuer {report.issuer!r} but its key is certified for {subject!r}",
            reason="issuer-mismatch",
        )
    return CertifiedReport(verified=verified, subject=subject, ca_subject=common_name(ca))


def _load_ca(pem: bytes) -> x509.Certificate:
    try:
        ca = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise ReportError(f"not a PEM CA certificate: {e}") from None
    try:
        is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ReportError(f"{common_name(ca)!r} is not a CA certificate (give the federation's ca.crt)")
    return ca


def _carried_certificate(data: bytes) -> x509.Certificate:
    try:
        parsed = parse_canonical(data)
    except CanonicalisationError as e:
        raise ReportVerificationError(f"report altered or unreadable: {e}", reason="unreadable") from None
    block = parsed.get("signature") if isinstance(parsed, dict) else None
    pem = block.get("certificate") if isinstance(block, dict) else None
    if not isinstance(pem, str):
        raise ReportVerificationError(
            "the report carries no certificate: its issuer cannot be checked against a CA "
            "(verify it with the issuer's public key, --key, instead)",
            reason="no-certificate",
        )
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError:
        raise ReportVerificationError(
            "the report's certificate is not a PEM certificate", reason="bad-certificate"
        ) from None


def _require_signing_certificate(cert: x509.Certificate) -> None:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound as e:
        raise ReportVerificationError(
            f"the report's certificate lacks {e.oid._name}: not a report-signing certificate",
            reason="bad-certificate",
        ) from None
    if constraints.ca or usage != SIGNING_KEY_USAGE:
        raise ReportVerificationError(
            "the report's certificate is not a report-signing certificate (key usage must be "
            "digital signature and content commitment only, not a CA)",
            reason="bad-certificate",
        )


def _parse_time(text: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ReportVerificationError(
            f"issued_at {text!r} is not an ISO 8601 time", reason="schema"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
