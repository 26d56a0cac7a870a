"""The operator's signing key at rest: encrypted PKCS#8 unless plaintext is asked for explicitly,
and every path that signs (report render, study grants, the demo's throw-away key) opens it.

The attack: someone who copies ``coordinator.key`` (a backup, a shared folder) cannot sign with
it without the passphrase. Before keys were encrypted, the file alone was the key.
"""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from report_fixtures import ISSUED_AT, make_result, make_spec
from typer.testing import CliRunner

from coordinator.cli.report import app
from coordinator.report import ReportError, ensure_keypair, load_private_key, verify_file, write_signed_report
from coordinator.report.keys import PASSPHRASE_ENV, PASSPHRASE_FILE_ENV
from coordinator.study.runner import sign_study
from shared.grant import SignedGrant, load_public_key, verify_grant

PASS = "keys-test-passphrase"


@pytest.fixture(autouse=True)
def no_passphrase(monkeypatch):
    for name in (PASSPHRASE_ENV, PASSPHRASE_FILE_ENV):  # set first, so the test's value is undone
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _keygen(out, *extra, env=None):
    return CliRunner(env={PASSPHRASE_ENV: "", PASSPHRASE_FILE_ENV: "", **(env or {})}).invoke(
        app, ["keygen", "--out", str(out), *extra]
    )


def test_keygen_encrypts_and_plaintext_needs_the_explicit_flag(tmp_path):
    r = _keygen(tmp_path / "none")
    assert r.exit_code == 2 and PASSPHRASE_ENV in r.output and "--insecure-plaintext-key" in r.output
    assert not (tmp_path / "none" / "coordinator.key").exists()
    assert _keygen(tmp_path / "short", env={PASSPHRASE_ENV: "too-short"}).exit_code == 2

    r = _keygen(tmp_path / "enc", env={PASSPHRASE_ENV: PASS})
    assert r.exit_code == 0 and "encrypted" in r.output
    key = tmp_path / "enc" / "coordinator.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")

    r = _keygen(tmp_path / "plain", "--insecure-plaintext-key")
    assert r.exit_code == 0 and "UNENCRYPTED" in r.output
    assert (tmp_path / "plain" / "coordinator.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_a_copied_key_file_is_useless_without_the_passphrase(tmp_path, monkeypatch):
    assert _keygen(tmp_path, env={PASSPHRASE_ENV: PASS}).exit_code == 0
    key = tmp_path / "coordinator.key"
    with pytest.raises(TypeError, match="encrypted"):
        serialization.load_pem_private_key(key.read_bytes(), password=None)
    with pytest.raises(ReportError, match=f"is encrypted: set {PASSPHRASE_ENV}"):
        load_private_key(key)
    monkeypatch.setenv(PASSPHRASE_ENV, "not-the-passphrase")
    with pytest.raises(ReportError, match="wrong passphrase"):
        load_private_key(key)
    with pytest.raises(ReportError, match="wrong passphrase"):
        write_signed_report(make_result(), key_path=key, out_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "report.json").exists()
    # the passphrase from a file (a mounted secret) opens it
    secret = tmp_path / "secret"
    secret.write_text(PASS + "\n")
    monkeypatch.delenv(PASSPHRASE_ENV)
    monkeypatch.setenv(PASSPHRASE_FILE_ENV, str(secret))
    assert load_private_key(key).public_key() is not None


def test_every_signing_path_opens_the_encrypted_key(tmp_path, monkeypatch):
    assert _keygen(tmp_path / "keys", env={PASSPHRASE_ENV: PASS}).exit_code == 0
    key, pub = tmp_path / "keys" / "coordinator.key", tmp_path / "keys" / "coordinator.pub"
    monkeypatch.setenv(PASSPHRASE_ENV, PASS)
    # the evidence report (rehealth report render --key, study run --report-key)
    paths = write_signed_report(make_result(), key_path=key, out_dir=tmp_path / "out", issued_at=ISSUED_AT)
    assert verify_file(paths["json"], pub).report.issued_at == ISSUED_AT
    # the study grant every node checks (rehealth study run --key)
    grant = SignedGrant.model_validate_json(sign_study(make_spec(privacy=True), key))
    assert verify_grant(grant, load_public_key(pub.read_bytes())).kind == "study"


def test_the_demos_throw_away_key_is_encrypted_too(tmp_path):
    """No passphrase configured: the demo's key is still encrypted, with a random passphrase in
    a 0600 file it names through REHEALTH_KEY_PASSPHRASE_FILE, and reports sign with it."""
    key, pub = ensure_keypair(tmp_path / "keys")
    assert key.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    phrase_file = tmp_path / "keys" / "passphrase"
    assert stat.S_IMODE(phrase_file.stat().st_mode) == 0o600
    assert os.environ[PASSPHRASE_FILE_ENV] == str(phrase_file.resolve())
    assert ensure_keypair(tmp_path / "keys") == (key, pub)  # made once
    paths = write_signed_report(make_result(), key_path=key, out_dir=tmp_path / "out", issued_at=ISSUED_AT)
    assert verify_file(paths["json"], pub).report.issued_at == ISSUED_AT
    # a second throw-away key in the same process shares the passphrase
    other, _ = ensure_keypair(tmp_path / "other")
    assert load_private_key(other) is not None and not (tmp_path / "other" / "passphrase").exists()
    # a later run (a new process: nothing exported) finds the folder's own passphrase file
    del os.environ[PASSPHRASE_FILE_ENV]
    assert ensure_keypair(tmp_path / "keys") == (key, pub)
    assert load_private_key(key) is not None
