"""API keys with roles, stored hashed (SHA-256) in a TOML file; only their hashes are kept.

Roles and what they may do::

    underwriter   score persons (real-time and batch), read the model card
    hr            group views only (counts per tier, suppressed and noised), the model card
    admin         everything

Keys file (``api_keys.toml``, written by ``rehealth node apikey add``)::

    [[keys]]
    id = "k-3f9a…"        # public identifier, safe to log
    role = "underwriter"
    sha256 = "…"          # hex digest of the key; the key itself is shown once, never stored
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from shared.errors import SpecError

ROLES = ("underwriter", "hr", "admin")
HEADER = "X-API-Key"


def hash_key(key: str) -> str:
    """Hex SHA-256 of a presented key."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """A stored key: identifier, role and hash (never the key)."""

    key_id: str
    role: str
    sha256: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise SpecError(f"API key {self.key_id}: role {self.role!r} is not one of {ROLES}")


class KeyRing:
    """The node's accepted keys; looks a presented key up by its hash in constant time."""

    def __init__(self, keys: Iterable[ApiKey]):
        self._keys = tuple(keys)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_file(cls, path: str | Path) -> "KeyRing":
        """Load a keys file.

        Raises:
            SpecError: missing/unreadable file, or an entry without id, role or sha256.
        """
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SpecError(
                f"API keys file {path} not found (create a key: rehealth node apikey add --role …)"
            ) from None
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"API keys file {path}: not valid TOML: {e}") from None
        keys = []
        for i, entry in enumerate(data.get("keys", [])):
            try:
                keys.append(
                    ApiKey(key_id=str(entry["id"]), role=str(entry["role"]), sha256=str(entry["sha256"]))
                )
            except KeyError as e:
                raise SpecError(f"API keys file {path}: keys[{i}] lacks {e.args[0]!r}") from None
        return cls(keys)

    @classmethod
    def from_plain(cls, keys: Mapping[str, str]) -> "KeyRing":
        """From ``{key: role}`` (tests, embedding); the keys are hashed at once."""
        return cls(ApiKey(key_id=f"k-{hash_key(k)[:8]}", role=r, sha256=hash_key(k)) for k, r in keys.items())

    def lookup(self, presented: str | None) -> ApiKey | None:
        """The stored key matching ``presented``, or ``None``."""
        if not presented:
            return None
        digest = hash_key(presented)
        found = None
        for k in self._keys:  # compare all, so timing does not depend on the position
            if hmac.compare_digest(k.sha256, digest):
                found = k
        return found


def add_key(path: str | Path, *, role: str) -> tuple[ApiKey, str]:
    """Create a key for ``role``, append its hash to the keys file (mode 0600).

    Returns:
        The stored entry and the plaintext key, to be shown once to the operator.
    """
    if role not in ROLES:
        raise SpecError(f"role {role!r} is not one of {ROLES}")
    path = Path(path)
    key = "rh_" + secrets.token_urlsafe(32)
    entry = ApiKey(key_id=f"k-{secrets.token_hex(4)}", role=role, sha256=hash_key(key))
    if path.exists():
        KeyRing.from_file(path)  # refuse to append to a broken file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(f'\n[[keys]]\nid = "{entry.key_id}"\nrole = "{entry.role}"\nsha256 = "{entry.sha256}"\n')
    return entry, key
