"""Sessions, CSRF tokens and the lockout of repeated failed logins, for the console.

- **Session:** a random 256-bit id kept in this process's memory, sent to the browser as
  ``<id>.<HMAC-SHA256(secret, id)>`` in an HttpOnly, SameSite=Strict cookie (Secure when the
  console serves TLS). The secret is drawn at start and never written: a forged or altered cookie
  fails the HMAC, and an id not in memory (logged out, expired, or from before a restart) is no
  session. Sessions end after :data:`IDLE_S` without a request or :data:`MAX_AGE_S` in all.
- **CSRF:** every session has its own random token; every POST form carries it and is refused
  unless it matches (constant-time). The login form, before any session, uses a signed
  double-submit token bound to a pre-login cookie (login CSRF would log the victim into the
  attacker's account).
- **Lockout:** :data:`MAX_FAILURES` failed logins for one user name within :data:`WINDOW_S`
  lock that name for :data:`LOCKOUT_S` (the right password is refused too, and the message is
  the same whether the name exists); one client address gets at most :data:`MAX_PER_ADDRESS`
  attempts per :data:`WINDOW_S` whatever names it tries.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

IDLE_S = 30 * 60.0
MAX_AGE_S = 12 * 3600.0
MAX_FAILURES = 5
WINDOW_S = 15 * 60.0
LOCKOUT_S = 15 * 60.0
MAX_PER_ADDRESS = 20


@dataclass
class Session:
    sid: str
    user: str
    csrf: str
    created: float
    seen: float
    flashes: list = field(default_factory=list)  # (kind, text) shown on the next page


@dataclass
class _Failures:
    times: deque = field(default_factory=deque)
    locked_until: float = 0.0


class Sessions:
    """The console's sessions and login throttling (one instance per app, thread-safe)."""

    def __init__(self, *, clock=time.monotonic, secret: bytes | None = None):
        self._secret = secret or secrets.token_bytes(32)
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._failures: dict[str, _Failures] = {}
        self._addresses: dict[str, deque] = {}

    # -- cookies -------------------------------------------------------------------------

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def cookie_value(self, session: Session) -> str:
        return f"{session.sid}.{self._mac('session', session.sid)}"

    def create(self, user: str) -> Session:
        now = self._clock()
        s = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now)
        with self._lock:
            for sid in [k for k, old in self._sessions.items() if self._expired(old, now)]:
                del self._sessions[sid]  # sessions nobody came back for
            self._sessions[s.sid] = s
        return s

    @staticmethod
    def _expired(s: Session, now: float) -> bool:
        return now - s.seen > IDLE_S or now - s.created > MAX_AGE_S

    def lookup(self, cookie: str | None) -> Session | None:
        """The live session a cookie names, or None (unsigned, altered, unknown or expired)."""
        if not cookie or "." not in cookie:
            return None
        sid, mac = cookie.rsplit(".", 1)
        if not hmac.compare_digest(mac, self._mac("session", sid)):
            return None
        now = self._clock()
        with self._lock:
            s = self._sessions.get(sid)
            if s is None:
                return None
            if self._expired(s, now):
                del self._sessions[sid]
                return None
            s.seen = now
            return s

    def end(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.sid, None)

    def end_user(self, user: str) -> None:
        with self._lock:
            for sid in [k for k, s in self._sessions.items() if s.user == user]:
                del self._sessions[sid]

    # -- CSRF ------------------------------------------------------------------------------

    @staticmethod
    def csrf_ok(session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(session.csrf, str(token))

    def login_token(self, pre_cookie: str) -> str:
        """The login form's CSRF token for the pre-login cookie ``pre_cookie``."""
        return self._mac("login", pre_cookie)

    def login_token_ok(self, pre_cookie: str | None, token: str | None) -> bool:
        if not pre_cookie or not token:
            return False
        return hmac.compare_digest(self.login_token(pre_cookie), token)

    # -- throttling ------------------------------------------------------------------------

    def login_allowed(self, user: str, address: str) -> float:
        """0 if a login attempt for ``user`` from ``address`` may be checked now, else the
        seconds until it may. Counts the attempt against the address."""
        now = self._clock()
        with self._lock:
            f = self._failures.get(user)
            if f and f.locked_until > now:
                return f.locked_until - now
            seen = self._addresses.setdefault(address, deque())
            while seen and now - seen[0] > WINDOW_S:
                seen.popleft()
            if len(seen) >= MAX_PER_ADDRESS:
                return WINDOW_S - (now - seen[0])
            seen.append(now)
            return 0.0

    def failed(self, user: str) -> None:
        now = self._clock()
        with self._lock:
            f = self._failures.setdefault(user, _Failures())
            while f.times and now - f.times[0] > WINDOW_S:
                f.times.popleft()
            f.times.append(now)
            if len(f.times) >= MAX_FAILURES:
                f.locked_until = now + LOCKOUT_S
                f.times.clear()

    def succeeded(self, user: str) -> None:
        with self._lock:
            self._failures.pop(user, None)
