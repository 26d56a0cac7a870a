"""The issuer bound to the key: provisioning's CA certifies the report-signing key, and
``verify --ca`` refuses a report whose key is not certified for the issuer it names.

Attacks: a self-made CA and certificate claiming the operator's name (even the CA's name
copied); the genuine certificate lifted onto a report signed by another key; the genuine key
signing under another name; a certificate of the right key without the signing usage; a report
dated outside its certificate. Python's verifier and the Node.js one both refuse each.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from report_fixtures import make_result
from typer.testing import CliRunner

from coordinator.cli.report import app
from coordinator.federation.provision import FederationFile, load_encrypted_key, provision
from coordinator.report import ReportError, ReportVerificationError, build_report, sign_report
from coordinator.report.certify import verify_with_ca
from coordinator.report.signing import load_private_key
from shared.tls import issue_signing_cert, new_ca, pem_cert

ROOT = Path(__file__).resolve().parents[2]
VERIFIER = ROOT / "deploy" / "verify" / "verify-report.mjs"
PASS = "certify-test-passphrase"
OPERATOR = "Acme Health Coordination Ltd"


def _now() -> str:
    """Now, when the report is built: within the kit's certificate, made minutes before (a time
    taken at import would precede a certificate made later in a long suite)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


runner = CliRunner(env={"REHEALTH_KEY_PASSPHRASE": PASS, "REHEALTH_KEY_PASSPHRASE_FILE": ""})


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("certify")
    spec = FederationFile.model_validate(
        {"name": "t", "coordinator": "127.0.0.1:9093", "operator": OPERATOR, "sites": [{"name": "a"}]}
    )
    coord = provision(spec, d / "kits", passphrase=PASS.encode()).coordinator
    key = load_private_key(coord.signing_key, PASS.encode())
    doc = build_report(make_result(), issuer=OPERATOR, issued_at=_now())
    genuine = sign_report(doc, key, certificate=coord.signing_cert.read_text())
    (d / "report.json").write_bytes(genuine)
    return {
        "dir": d,
        "coord": coord,
        "key": key,
        "doc": doc,
        "genuine": genuine,
        "ca": coord.ca_cert.read_bytes(),
    }


def _reason(data: bytes, ca: bytes) -> str:
    with pytest.raises(ReportVerificationError) as e:
        verify_with_ca(data, ca)
    return e.value.reason


def _node(report: Path, ca: Path) -> subprocess.CompletedProcess:
    node = shutil.which("node")
    assert node, "Node.js is required: run `bash deploy/node.sh`"
    return subprocess.run([node, str(VERIFIER), str(report), "--ca", str(ca)], capture_output=True, text=True)


def _write(kit, name: str, data: bytes) -> Path:
    path = kit["dir"] / name
    path.write_bytes(data)
    return path


def test_genuine_report_verifies_against_the_federation_ca(kit):
    certified = verify_with_ca(kit["genuine"], kit["ca"])
    assert certified.subject == certified.verified.report.issuer == OPERATOR
    r = runner.invoke(app, ["verify", str(kit["dir"] / "report.json"), "--ca", str(kit["coord"].ca_cert)])
    assert r.exit_code == 0, r.output
    assert f"certified by {kit['coord'].ca_cert} for '{OPERATOR}'" in r.output
    n = _node(kit["dir"] / "report.json", kit["coord"].ca_cert)
    assert n.returncode == 0, n.stdout + n.stderr
    # one of --key / --ca, not both, not neither
    both = ["verify", str(kit["dir"] / "report.json"), "--ca", str(kit["coord"].ca_cert)]
    assert runner.invoke(app, [*both, "--key", str(kit["coord"].signing_pub)]).exit_code == 2
    assert runner.invoke(app, both[:2]).exit_code == 2


def test_self_made_certificate_claiming_the_operators_name_is_refused(kit):
    """Mallory makes her own CA, even with the federation CA's name, certifies her key as the
    operator, and signs a report naming the operator: nothing but the CA's signature tells."""
    real_ca = x509.load_pem_x509_certificate(kit["ca"])
    ca_name = real_ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    fake_ca_key, fake_ca = new_ca(str(ca_name), dt.timedelta(days=30))
    mallory = Ed25519PrivateKey.generate()
    cert = issue_signing_cert(fake_ca_key, fake_ca, mallory.public_key(), OPERATOR, dt.timedelta(days=30))
    forged = sign_report(kit["doc"], mallory, certificate=pem_cert(cert).decode())
    assert verify_with_ca(forged, pem_cert(fake_ca)).subject == OPERATOR  # valid under her own CA
    assert _reason(forged, kit["ca"]) == "bad-certificate"
    r = runner.invoke(
        app, ["verify", str(_write(kit, "forged.json", forged)), "--ca", str(kit["coord"].ca_cert)]
    )
    assert r.exit_code == 1 and "was not issued by the CA" in r.output
    assert _node(kit["dir"] / "forged.json", kit["coord"].ca_cert).returncode == 1
    # and it is not rendered as if genuine
    out = kit["dir"] / "forged-render"
    r = runner.invoke(
        app, ["render", str(kit["dir"] / "forged.json"), "--ca", str(kit["coord"].ca_cert), "--out", str(out)]
    )
    assert r.exit_code == 1 and not (out / "report.pdf").exists()


def test_genuine_certificate_on_a_report_signed_by_another_key_is_refused(kit):
    mallory = Ed25519PrivateKey.generate()
    lifted = sign_report(kit["doc"], mallory, certificate=kit["coord"].signing_cert.read_text())
    assert _reason(lifted, kit["ca"]) == "wrong-key"
    n = _node(_write(kit, "lifted.json", lifted), kit["coord"].ca_cert)
    assert n.returncode == 1 and "signed by key id" in n.stdout


def test_genuine_key_signing_under_another_name_is_refused(kit, tmp_path, monkeypatch):
    doc = build_report(make_result(), issuer="Another Insurer plc", issued_at=_now())
    other = sign_report(doc, kit["key"], certificate=kit["coord"].signing_cert.read_text())
    with pytest.raises(ReportVerificationError, match="certified for 'Acme Health") as e:
        verify_with_ca(other, kit["ca"])
    assert e.value.reason == "issuer-mismatch"
    n = _node(_write(kit, "renamed.json", other), kit["coord"].ca_cert)
    assert n.returncode == 1 and "is not the certificate's subject" in n.stdout
    # and the publishing path refuses to write such a report in the first place
    from coordinator.report import write_signed_report

    monkeypatch.setenv("REHEALTH_KEY_PASSPHRASE", PASS)
    with pytest.raises(ReportError, match="is not the name the signing key is certified for"):
        write_signed_report(
            make_result(), key_path=kit["coord"].signing_key, out_dir=tmp_path, issuer="Another"
        )
    paths = write_signed_report(make_result(), key_path=kit["coord"].signing_key, out_dir=tmp_path)
    assert verify_with_ca(paths["json"].read_bytes(), kit["ca"]).verified.report.issuer == OPERATOR


def test_certificate_without_the_signing_usage_or_out_of_date_is_refused(kit):
    ca_key = load_encrypted_key(kit["coord"].ca_key, PASS.encode())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(kit["ca"])
    now = dt.datetime.now(dt.timezone.utc)
    tls_like = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, OPERATOR)]))
        .issuer_name(ca.subject)
        .public_key(kit["key"].public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    report = sign_report(kit["doc"], kit["key"], certificate=pem_cert(tls_like).decode())
    assert _reason(report, kit["ca"]) == "bad-certificate"
    old = build_report(make_result(), issuer=OPERATOR, issued_at="2020-01-01T00:00:00+00:00")
    stale = sign_report(old, kit["key"], certificate=kit["coord"].signing_cert.read_text())
    with pytest.raises(ReportVerificationError, match="outside its certificate's validity"):
        verify_with_ca(stale, kit["ca"])
    assert _node(_write(kit, "stale.json", stale), kit["coord"].ca_cert).returncode == 1


def test_report_without_certificate_cannot_be_checked_against_a_ca(kit):
    bare = sign_report(kit["doc"], kit["key"])
    assert _reason(bare, kit["ca"]) == "no-certificate"
    with pytest.raises(ReportError, match="not a CA certificate"):
        verify_with_ca(kit["genuine"], kit["coord"].signing_cert.read_bytes())
