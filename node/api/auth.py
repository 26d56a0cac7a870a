"""API keys with roles, stored hashed (SHA-256) in a TOML file; only their hashes are kept.

Roles and what they may do::

    underwriter   score persons (real-time and batch), read the model card
    hr            group risk profiles only (node.api.groups: noised, suppressed), the model card
    ops           operations only: ``/metrics`` (no person's score, no group view)
    admin         everything

Keys file (``api_keys.toml``, written by ``rehealth node apikey create``)::

    [[keys]]
    id = "k-3f9a…"        # public identifier, safe to log
    role = "underwriter"
    sha256 = "…"          # hex digest of the key; the key itself is shown once, never stored
    created_at = 2026-12-06T20:00:00Z
    expires_at = 2027-01-05T20:00:00Z   # optional: refused (401) from then on
    revoked_at = 2026-12-10T08:00:00Z   # set by ``rehealth node apikey revoke ID``: refused (401)

A running API re-reads the file when it changes (its size, inode or modification time), so a
revocation takes effect at the next request, without a restart. A file that turns unreadable
is not a reason to go on accepting the keys it used to hold: the ring then accepts none.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import tempfile
import tomllib
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Mapping

import tomli_w

from shared.errors import SpecError

ROLES = ("underwriter", "hr", "ops", "admin")
HEADER = "X-API-Key"
log = logging.getLogger("rehealth.api.keys")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def hash_key(key: str) -> str:
    """Hex SHA-256 of a presented key."""
    return hashlib.sha256(key.encode()).hexdigest()


def now_utc() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``3600s``, ``2w`` → a positive :class:`timedelta`.

    Raises:
        SpecError: anything else (named, with an example).
    """
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text or "")
    if m is None or int(m.group(1)) == 0:
        raise SpecError(f"--expires-in {text!r}: a positive number and a unit s/m/h/d/w, e.g. 30d")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def _aware(value: object, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise SpecError(f"{what}: a TOML date-time with an offset, e.g. 2027-01-05T20:00:00Z")
    return value.astimezone(timezone.utc)


@dataclass(frozen=True)
class ApiKey:
    """A stored key: identifier, role, hash (never the key) and its life: created, expires,
    revoked."""

    key_id: str
    role: str
    sha256: str
    created_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise SpecError(f"API key {self.key_id}: role {self.role!r} is not one of {ROLES}")

    def refusal(self, now: datetime | None = None) -> str | None:
        """Why this key may not be used at ``now`` (``"revoked"``, ``"expired"``), or ``None``."""
        now = now or datetime.now(timezone.utc)
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return None

    def status(self, now: datetime | None = None) -> str:
        return self.refusal(now) or "active"

    def to_toml(self) -> dict:
        out: dict = {"id": self.key_id, "role": self.role, "sha256": self.sha256}
        for name in ("created_at", "expires_at", "revoked_at"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def _read_keys(path: Path) -> tuple[ApiKey, ...]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(
            f"API keys file {path} not found (create a key: rehealth node apikey create --role …)"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"API keys file {path}: not valid TOML: {e}") from None
    keys = []
    for i, entry in enumerate(data.get("keys", [])):
        where = f"API keys file {path}: keys[{i}]"
        try:
            keys.append(
                ApiKey(
                    key_id=str(entry["id"]),
                    role=str(entry["role"]),
                    sha256=str(entry["sha256"]),
                    **{
                        n: _aware(entry.get(n), f"{where}.{n}")
                        for n in ("created_at", "expires_at", "revoked_at")
                    },
                )
            )
        except KeyError as e:
            raise SpecError(f"{where} lacks {e.args[0]!r}") from None
    return tuple(keys)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class KeyRing:
    """The node's keys; looks a presented key up by its hash in constant time.

    A ring read from a file follows the file: :meth:`lookup` re-reads it when it changed.
    """

    def __init__(self, keys: Iterable[ApiKey], *, path: Path | None = None):
        self._keys = tuple(keys)
        self._path = path
        self._stamp = _stamp(path) if path is not None else None

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> tuple[ApiKey, ...]:
        self._refresh()
        return self._keys

    @classmethod
    def from_file(cls, path: str | Path) -> "KeyRing":
        """Load a keys file.

        Raises:
            SpecError: missing/unreadable file, or an entry without id, role or sha256.
        """
        path = Path(path)
        return cls(_read_keys(path), path=path)

    @classmethod
    def from_plain(cls, keys: Mapping[str, str]) -> "KeyRing":
        """From ``{key: role}`` (tests, embedding); the keys are hashed at once."""
        return cls(ApiKey(key_id=f"k-{hash_key(k)[:8]}", role=r, sha256=hash_key(k)) for k, r in keys.items())

    def _refresh(self) -> None:
        if self._path is None:
            return
        stamp = _stamp(self._path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._keys = _read_keys(self._path)
            log.info("API keys file re-read", extra={"fields": {"keys": len(self._keys)}})
        except SpecError as e:  # fail closed: no key is accepted until the file is sound again
            self._keys = ()
            log.error("API keys file unusable, accepting no key: %s", e)

    def lookup(self, presented: str | None) -> ApiKey | None:
        """The stored key matching ``presented`` (revoked or expired ones too: the caller asks
        :meth:`ApiKey.refusal`), or ``None``."""
        if not presented:
            return None
        self._refresh()
        digest = hash_key(presented)
        found = None
        for k in self._keys:  # compare all, so timing does not depend on the position
            if hmac.compare_digest(k.sha256, digest):
                found = k
        return found


def _write_all(path: Path, keys: Iterable[ApiKey]) -> None:
    """Replace the keys file atomically (a reader sees the old file or the new, whole), 0600."""
    text = "# API keys of the node's scoring API: hashes only (rehealth node apikey list|create|revoke)\n"
    text += tomli_w.dumps({"keys": [k.to_toml() for k in keys]})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_key(
    path: str | Path, *, role: str, expires_in: timedelta | None = None, now: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create a key for ``role`` (expiring after ``expires_in``, if given) and store its hash
    in the keys file (mode 0600).

    Returns:
        The stored entry and the plaintext key, to be shown once to the operator.
    """
    if role not in ROLES:
        raise SpecError(f"role {role!r} is not one of {ROLES}")
    path = Path(path)
    created = now or now_utc()
    key = "rh_" + secrets.token_urlsafe(32)
    entry = ApiKey(
        key_id=f"k-{secrets.token_hex(4)}",
        role=role,
        sha256=hash_key(key),
        created_at=created,
        expires_at=created + expires_in if expires_in is not None else None,
    )
    existing = _read_keys(path) if path.exists() else ()  # refuse to add to a broken file
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_all(path, (*existing, entry))
    return entry, key


def list_keys(path: str | Path) -> tuple[ApiKey, ...]:
    """Every key in the file (hashes and metadata; the keys themselves were never stored)."""
    return _read_keys(Path(path))


def revoke_key(path: str | Path, key_id: str, *, now: datetime | None = None) -> ApiKey:
    """Mark ``key_id`` revoked from ``now`` on (kept in the file, so ``list`` shows it); a key
    already revoked keeps its first revocation time.

    Raises:
        SpecError: no key has that id.
    """
    path = Path(path)
    keys = list(_read_keys(path))
    for i, k in enumerate(keys):
        if k.key_id == key_id:
            if k.revoked_at is None:
                keys[i] = replace(k, revoked_at=now or now_utc())
                _write_all(path, keys)
            return keys[i]
    raise SpecError(f"no API key {key_id!r} in {path} (see: rehealth node apikey list)")
