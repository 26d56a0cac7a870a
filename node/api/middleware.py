"""The scoring API's hardening and its audit trail, as ASGI middleware (outermost first)::

    RequestContext   request id (X-Request-ID, echoed), timing, one audit line and the
                     metrics per request — whatever answered it, a 413 as well as a 200
    CORS             only if ``[api] cors_origins`` names origins (default: none)
    BodyGate         body size and content type, before anything reads or parses the body
                     and before the API key is looked at
    (the app)        routing, the key check (a dependency), validation, the endpoint

Why the gate sits in front of the key check: FastAPI reads and parses a request's body before
it resolves the dependencies that check the key, so without the gate anyone — no key needed —
could make the node read and parse a body of any size. The gate refuses a declared
``Content-Length`` over the limit without reading a byte, and reads a body without one
(chunked) only up to the limit, then answers 413; the endpoint sees the body only once it is
whole and within the limit.

The audit line (logger ``rehealth.api.audit``) says who (key id and role, never the key),
what (method, route *template*, status), when (the line's time), the request id and the
duration. Nothing from the body, the query or a raw path is logged: they carry persons' values
and refs, and a path or a header is the caller's choice (a forged log line). The request id is
taken from the caller only if it is a plain token (``[A-Za-z0-9._:-]``, ≤ 128); otherwise a
fresh one replaces it (logged as replaced, without the refused value).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import Headers
from starlette.routing import Match, Router

from node.api.errors import error_body
from node.api.metrics import ApiMetrics

REQUEST_ID = "X-Request-ID"
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
#: methods counted under their name in the metrics; any other is "OTHER" (a caller picks it)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
FORM = "application/x-www-form-urlencoded"
UNMATCHED = "<unmatched>"
CLIENT_GONE = 499
#: where the key check leaves the caller's key (an ApiKey) for the audit line
STATE_KEY = "api_key"
audit_log = logging.getLogger("rehealth.api.audit")
log = logging.getLogger("rehealth.api")


def request_id(presented: str | None) -> tuple[str, bool]:
    """The caller's request id if it is a plain token, else a fresh one; and whether it was
    replaced (a caller's header that was present but refused)."""
    if presented is not None and REQUEST_ID_RE.fullmatch(presented):
        return presented, False
    return uuid.uuid4().hex, presented is not None


async def _send_error(
    send, status: int, error: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(error_body(error, None)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BodyGate:
    """413 for a body over ``max_bytes`` (declared or streamed), 415 for a body-carrying
    request (POST, PUT, PATCH) that is not JSON (or, under ``form_prefixes``, an HTML form),
    400 for a malformed Content-Length.

    A request within the limit is read whole here and handed on, so nothing downstream ever
    holds more than ``max_bytes`` of one request's body.
    """

    def __init__(self, app, *, max_bytes: int, form_prefixes: tuple[str, ...] = ()):
        self.app, self.max_bytes = app, max_bytes
        # paths whose POSTs are HTML forms (the HR view's login, logout and release buttons)
        self.form_prefixes = form_prefixes

    def _is_form(self, path: str, content_type: str | None) -> bool:
        media = (content_type or "").split(";", 1)[0].strip().lower()
        return media == FORM and any(path.startswith(p) for p in self.form_prefixes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        close = [(b"connection", b"close")]  # the unread rest of the body is not worth reading
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                return await _send_error(send, 400, "malformed Content-Length header", close)
            if int(declared) > self.max_bytes:
                return await _send_error(send, 413, self._too_large(), close)
        if (
            scope["method"] in BODY_METHODS
            and not _is_json(headers.get("content-type"))
            and not self._is_form(scope["path"], headers.get("content-type"))
        ):
            return await _send_error(
                send, 415, "unsupported media type: send the body as application/json (Content-Type header)"
            )
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the caller left: nothing to answer
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await _send_error(send, 413, self._too_large(), close)
            if not message.get("more_body", False):
                break
        handed = False

        async def replay():
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return f"request body larger than {self.max_bytes} bytes (api.max_body_bytes)"


class RequestContext:
    """Request id in and out, and per request one audit line and one metrics observation."""

    def __init__(self, app, *, router: Router, metrics: ApiMetrics):
        self.app, self.router, self.metrics = app, router, metrics

    def _route(self, scope) -> str:
        route = scope.get("route")
        if route is None:  # answered before routing (413, 415, a CORS preflight, 405)
            matches = {r.matches(scope)[0]: r for r in reversed(self.router.routes)}  # first wins
            route = matches.get(Match.FULL) or matches.get(Match.PARTIAL)
        return str(getattr(route, "path", UNMATCHED))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        rid, replaced = request_id(Headers(scope=scope).get(REQUEST_ID))
        if replaced:
            log.warning(
                "X-Request-ID refused (not a plain token), replaced", extra={"fields": {"request_id": rid}}
            )
        scope.setdefault("state", {})
        scope["state"]["request_id"] = rid
        status: int | None = None

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())],
                }
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            status = status or 500  # the server's error handler answers 500
            raise
        finally:
            # no answer and no error: the caller left before its body was in (nginx's 499)
            self._record(scope, rid, status or CLIENT_GONE, time.perf_counter() - t0)

    def _record(self, scope, rid: str, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        route = self._route(scope)
        key: Any = scope.get("state", {}).get(STATE_KEY)
        self.metrics.observe(method=method, route=route, status=status, seconds=seconds)
        audit_log.info(
            "api call",
            extra={
                "fields": {
                    "request_id": rid,
                    "key_id": getattr(key, "key_id", "-"),
                    "role": getattr(key, "role", "-"),
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1e3, 3),
                }
            },
        )
