"""The console's operators: a users file written by ``rehealth coordinator console adduser``.

Passwords are stored as scrypt hashes (``hashlib.scrypt``, RFC 7914; N = 2^15, r = 8, p = 1:
32 MiB and ~0.1 s per guess here, the OWASP password-storage minimum) with a 16-byte random
salt per user, never in the clear. The file is JSON, 0600 in a 0700 folder::

    {"users": {"alice": {"hash": "scrypt$32768$8$1$<salt b64>$<key b64>", "created": "..."}}}

:func:`UserStore.check` spends one scrypt whether or not the user exists (against a dummy
hash), so the time of a failed login does not tell which user names exist.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from pathlib import Path

from coordinator.federation.pki import private_dir, write_private
from shared.errors import SpecError

N, R, P = 2**15, 8, 1
KEY_BYTES = 32
SALT_BYTES = 16
MAXMEM = 64 * 1024 * 1024
MIN_PASSWORD = 12
USER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    """A self-describing scrypt hash of ``password`` with a fresh salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=MAXMEM, dklen=KEY_BYTES)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(key).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """True if ``password`` matches ``stored`` (constant-time compare); False on any
    malformed hash (never an exception: a bad users file must not open the door)."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(key, validate=True)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


_DUMMY = hash_password(secrets.token_urlsafe(16))


class UserStore:
    """The users file at ``path`` (read on every check: a user added while the console runs
    can log in at once, a removed one cannot)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            users = data["users"]
            if not isinstance(users, dict):
                raise TypeError("users is not an object")
            return users
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SpecError(f"users file {self.path}: {type(e).__name__}: {e}") from None

    def names(self) -> list[str]:
        return sorted(self._load())

    def add(self, name: str, password: str, *, replace: bool = False) -> None:
        """Add (or with ``replace``, re-key) user ``name``.

        Raises:
            SpecError: a bad name, a password shorter than :data:`MIN_PASSWORD`, or an
                existing user without ``replace``.
        """
        if not USER_NAME.match(name):
            raise SpecError(f"user name {name!r}: 1-64 letters, digits or . _ @ -")
        if len(password) < MIN_PASSWORD:
            raise SpecError(f"password: at least {MIN_PASSWORD} characters")
        users = self._load()
        if name in users and not replace:
            raise SpecError(f"user {name} exists (pass --replace to set a new password)")
        users[name] = {"hash": hash_password(password), "created": _now()}
        private_dir(self.path.parent)
        write_private(self.path, (json.dumps({"users": users}, indent=2) + "\n").encode())

    def remove(self, name: str) -> None:
        users = self._load()
        if name not in users:
            raise SpecError(f"no user {name}")
        del users[name]
        write_private(self.path, (json.dumps({"users": users}, indent=2) + "\n").encode())

    def check(self, name: str, password: str) -> bool:
        """True if ``name`` exists and ``password`` is its password (one scrypt either way)."""
        user = self._load().get(name)
        stored = user.get("hash", "") if isinstance(user, dict) else ""
        ok = verify_password(password, stored or _DUMMY)
        return ok and bool(stored)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
