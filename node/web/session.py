"""Server-side sessions of the HR view: the browser holds only a random identifier.

Why server-side: the cookie carries no claim to forge or tamper with (a changed or made-up
value names no session and is refused), a session ends at logout or restart for sure, and each
request re-checks the API key the session was opened with, so revoking or expiring that key
(``rehealth node apikey revoke``) ends its sessions at the next request. The identifier is 256
bits from :mod:`secrets`; sessions are kept under its SHA-256 so that the table itself holds no
usable cookie. A session lasts ``idle`` without a request and ``absolute`` at most.

The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page
sends it), ``Path=/hr`` and ``Secure`` when the request came over TLS. State-changing requests
are POSTs that must also carry the session's CSRF token and an ``Origin`` (or ``Referer``) of
this server (:func:`node.web.hr.same_origin`): SameSite alone does not stop another port on the
same host, which is the same *site*.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

COOKIE = "rehealth_hr"
IDLE_S = 30 * 60
ABSOLUTE_S = 8 * 3600
MAX_SESSIONS = 1000  # a flood of logins cannot grow memory without bound


@dataclass(frozen=True)
class Session:
    key_id: str  # the API key it was opened with (its id, never the key)
    csrf: str
    created: float
    seen: float


def _h(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class Sessions:
    """In-memory sessions (one node process serves the HR view)."""

    def __init__(
        self,
        *,
        idle_s: float = IDLE_S,
        absolute_s: float = ABSOLUTE_S,
        clock: Callable[[], float] = time.time,
    ):
        self.idle_s, self.absolute_s, self.clock = idle_s, absolute_s, clock
        self._by_hash: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, key_id: str) -> tuple[str, Session]:
        """A new session for ``key_id``: ``(cookie value, session)``."""
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        s = Session(key_id=key_id, csrf=secrets.token_urlsafe(32), created=now, seen=now)
        with self._lock:
            self._expire(now)
            if len(self._by_hash) >= MAX_SESSIONS:  # drop the oldest
                del self._by_hash[min(self._by_hash, key=lambda h: self._by_hash[h].created)]
            self._by_hash[_h(sid)] = s
        return sid, s

    def get(self, sid: str | None) -> Session | None:
        """The live session named by ``sid`` (its idle clock restarts), or None."""
        if not sid:
            return None
        now = self.clock()
        with self._lock:
            self._expire(now)
            s = self._by_hash.get(_h(sid))
            if s is None:
                return None
            s = replace(s, seen=now)
            self._by_hash[_h(sid)] = s
            return s

    def close(self, sid: str | None) -> None:
        if sid:
            with self._lock:
                self._by_hash.pop(_h(sid), None)

    def _expire(self, now: float) -> None:
        dead = [
            h
            for h, s in self._by_hash.items()
            if now - s.seen > self.idle_s or now - s.created > self.absolute_s
        ]
        for h in dead:
            del self._by_hash[h]

    def __len__(self) -> int:
        return len(self._by_hash)
