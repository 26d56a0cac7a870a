"""HMAC-SHA256 signatures of webhooks and callbacks, and the recipient id the employer sees.

Both directions sign ``<unix seconds> "." <idempotency key> "\n" <raw body>`` with a shared
secret and send::

    X-ReHealth-Timestamp: 1733512345
    X-ReHealth-Signature: sha256=<hex HMAC-SHA256>
    Idempotency-Key: <plan id (webhook) or the sender's unique event id (callback)>

Signing the timestamp with the body lets a receiver reject an old message replayed verbatim
(outside its window), and the idempotency key a replay inside it. The key is signed too (a
header value holds no newline, so the three parts cannot be shifted): unsigned, a callback
captured once could be replayed inside the window under a fresh key and was recorded again
(``tests/security/test_callback_replay.py``).

**Recipient id.** The store's pseudonym never leaves the node. A plan names its person by
``recipient = HMAC-SHA256(K_r, pseudonym)`` with ``K_r = HMAC-SHA256(node key,
"rehealth-recipient-v1")``: stable per person, unlinkable to the store's pseudonyms or to
another node's without the node key. The employer's app learns which device it belongs to at
enrolment: ``rehealth node plans recipient --person-id ID`` prints it for an employee the app
registers (the employer knows its own employees; what it does not get is their risk data).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from shared.errors import SpecError

TIMESTAMP = "X-ReHealth-Timestamp"
SIGNATURE = "X-ReHealth-Signature"
IDEMPOTENCY = "Idempotency-Key"
SECRET_BYTES = 32


def sign(secret: bytes, timestamp: int, body: bytes, idempotency_key: str) -> str:
    """The signature header value for ``body`` sent at ``timestamp`` under ``idempotency_key``."""
    if "\n" in idempotency_key or "\r" in idempotency_key:
        raise ValueError("an idempotency key is one header line")
    signed = str(int(timestamp)).encode() + b"." + idempotency_key.encode() + b"\n" + body
    return "sha256=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()


def verify(secret: bytes, timestamp: int, body: bytes, idempotency_key: str, signature: str) -> bool:
    """Constant-time check of a signature header value."""
    try:
        expected = sign(secret, timestamp, body, idempotency_key)
    except ValueError:
        return False
    return hmac.compare_digest(expected, signature)


def recipient_key(node_key: bytes) -> bytes:
    return hmac.new(node_key, b"rehealth-recipient-v1", hashlib.sha256).digest()


def recipient_id(key: bytes, pseudonym: str) -> str:
    """The id a plan names its person by (see the module docstring)."""
    return hmac.new(key, pseudonym.encode(), hashlib.sha256).hexdigest()


def read_secret(path: Path, *, what: str) -> bytes:
    """A signing secret from its file (hex, ≥ 32 bytes).

    Raises:
        SpecError: missing, unreadable or too short (the secret is never quoted).
    """
    try:
        text = Path(path).read_text().strip()
        key = bytes.fromhex(text)
    except FileNotFoundError:
        raise SpecError(f"{what} {path} not found (create one: rehealth node plans secret {path})") from None
    except (OSError, ValueError):
        raise SpecError(f"{what} {path}: expected the secret as hex") from None
    if len(key) < SECRET_BYTES:
        raise SpecError(f"{what} {path}: a secret has at least {SECRET_BYTES} bytes")
    return key


def write_secret(path: Path) -> None:
    """Create a new random secret file, mode 0600 (refuses to overwrite one)."""
    path = Path(path)
    try:
        with open(path, "x", opener=lambda p, f: __import__("os").open(p, f, 0o600)) as fh:
            fh.write(secrets.token_hex(SECRET_BYTES) + "\n")
    except FileExistsError:
        raise SpecError(f"{path} exists: a secret is not overwritten") from None
