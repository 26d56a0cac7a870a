"""The operator's private keys at rest: PKCS#8 PEM encrypted with a passphrase, 0600.

One place writes and opens every private key the coordinator's operator holds (the report and
study-signing Ed25519 key from ``rehealth report keygen``, the demo, a local study run and a
provisioned kit, and the kit's CA key), so they are all encrypted the same way and all opened
the same way.

The passphrase comes from the environment, never from a command line (``ps`` shows those):
``REHEALTH_KEY_PASSPHRASE`` (at least 12 characters) or ``REHEALTH_KEY_PASSPHRASE_FILE`` (a
file holding it, e.g. a mounted secret). A key is written in the clear only when the caller
says so explicitly (``passphrase=None`` here, ``--insecure-plaintext-key`` on the command line),
for throw-away demos and tests. A plaintext key is still opened (one made that way on purpose,
or before keys were encrypted), with a warning in the log.

The demo and a local study run without ``--key`` make a throw-away key on first use
(:func:`ensure_keypair`): encrypted as well, with the configured passphrase or, when none is
set, a random one written to ``<key dir>/passphrase`` (0600) and exported as
``REHEALTH_KEY_PASSPHRASE_FILE`` for this process, so the same code path opens it.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from coordinator.report.errors import ReportError

log = logging.getLogger(__name__)

PASSPHRASE_ENV = "REHEALTH_KEY_PASSPHRASE"
PASSPHRASE_FILE_ENV = "REHEALTH_KEY_PASSPHRASE_FILE"
MIN_PASSPHRASE = 12
DEMO_PASSPHRASE_NAME = "passphrase"

__all__ = [
    "MIN_PASSPHRASE",
    "PASSPHRASE_ENV",
    "PASSPHRASE_FILE_ENV",
    "configured_passphrase",
    "demo_passphrase",
    "is_encrypted",
    "open_private_key",
    "passphrase_for_writing",
    "private_key_pem",
    "write_new_private",
]


def configured_passphrase() -> bytes | None:
    """The passphrase from ``REHEALTH_KEY_PASSPHRASE`` or the file ``REHEALTH_KEY_PASSPHRASE_FILE``
    names (one trailing newline stripped), or None when neither is set.

    Raises:
        ReportError: the passphrase file cannot be read, or the passphrase is shorter than 12.
    """
    phrase = os.environ.get(PASSPHRASE_ENV, "").encode()
    where = PASSPHRASE_ENV
    if not phrase and os.environ.get(PASSPHRASE_FILE_ENV):
        where = os.environ[PASSPHRASE_FILE_ENV]
        try:
            phrase = Path(where).read_bytes().removesuffix(b"\n")
        except OSError as e:
            raise ReportError(f"{PASSPHRASE_FILE_ENV}={where}: cannot read it ({e.strerror})") from None
    if not phrase:
        return None
    if len(phrase) < MIN_PASSPHRASE:
        raise ReportError(f"the key passphrase ({where}) must have at least {MIN_PASSPHRASE} characters")
    return phrase


def passphrase_for_writing(*, insecure_plaintext: bool) -> bytes | None:
    """The passphrase a new key is encrypted with; None only when plaintext was asked for.

    Raises:
        ReportError: no passphrase is configured and plaintext was not asked for explicitly.
    """
    if insecure_plaintext:
        return None
    phrase = configured_passphrase()
    if phrase is None:
        raise ReportError(
            f"set {PASSPHRASE_ENV} (at least {MIN_PASSPHRASE} characters) or {PASSPHRASE_FILE_ENV}: "
            "private keys are written encrypted with it (or pass --insecure-plaintext-key)"
        )
    return phrase


def demo_passphrase(key_dir: Path) -> bytes:
    """The passphrase of a throw-away key in ``key_dir`` (see module doc), in this order:
    ``REHEALTH_KEY_PASSPHRASE``; the folder's own ``passphrase`` file from an earlier run; the
    file ``REHEALTH_KEY_PASSPHRASE_FILE`` names; a new random one in the folder. Whichever file
    is used is exported as ``REHEALTH_KEY_PASSPHRASE_FILE`` so every loader in this process (and
    its children) opens the key the same way."""
    if os.environ.get(PASSPHRASE_ENV):
        phrase = configured_passphrase()
        assert phrase is not None
        return phrase
    path = Path(key_dir) / DEMO_PASSPHRASE_NAME
    if not path.exists():
        configured = configured_passphrase()  # from the file another throw-away key uses
        if configured is not None:
            return configured
        write_new_private(path, secrets.token_urlsafe(24).encode())
    os.environ[PASSPHRASE_FILE_ENV] = str(path.resolve())
    phrase = configured_passphrase()
    assert phrase is not None
    return phrase


def private_key_pem(key: PrivateKeyTypes, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM, encrypted (``BestAvailableEncryption``: AES-256-CBC, PBKDF2/scrypt) unless
    ``passphrase`` is None."""
    enc: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if passphrase is None
        else serialization.BestAvailableEncryption(passphrase)
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def write_new_private(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new file created 0600 (never world-readable, not even briefly)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def is_encrypted(pem: bytes) -> bool:
    return b"BEGIN ENCRYPTED PRIVATE KEY" in pem


def open_private_key(path: str | Path, passphrase: bytes | None = None) -> PrivateKeyTypes:
    """Open a PEM private key; an encrypted one with ``passphrase`` or the configured one.

    Raises:
        ReportError: the file is missing, the key is encrypted and no passphrase is configured,
            the passphrase is wrong, or the file is no PEM private key.
    """
    try:
        pem = Path(path).read_bytes()
    except OSError as e:
        raise ReportError(f"cannot read key {path}: {e.strerror}") from None
    if is_encrypted(pem):
        phrase = passphrase if passphrase is not None else configured_passphrase()
        if phrase is None:
            raise ReportError(
                f"{path} is encrypted: set {PASSPHRASE_ENV} or {PASSPHRASE_FILE_ENV} to its passphrase"
            )
        try:
            return serialization.load_pem_private_key(pem, password=phrase)
        except (ValueError, TypeError):
            raise ReportError(f"{path}: cannot decrypt it (wrong passphrase)") from None
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ReportError(f"{path}: not a usable PEM key ({e})") from None
    log.warning("%s is an unencrypted private key; re-make it encrypted (see deploy/TRUST.md)", path)
    return key
