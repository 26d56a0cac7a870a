"""The employer's gateway in tests: a real threaded HTTP server on 127.0.0.1 that verifies the
webhook's HMAC, stores each plan once per Idempotency-Key and fails on cue (500, or a slow answer
that outlasts the node's timeout after the plan was stored)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from node.plans.signing import IDEMPOTENCY, SIGNATURE, TIMESTAMP, verify


class Receiver:
    """The employer's gateway: verifies the HMAC, dedups by Idempotency-Key, fails on cue."""

    def __init__(self, *, secret: bytes, script=()):
        self.script = list(script)  # per request: 200, 500 or "slow" (answers after the timeout)
        self.requests = 0
        self.bad_signatures = 0
        self.applied: dict[str, dict] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests += 1
                    action = receiver.script.pop(0) if receiver.script else 200
                ts = int(self.headers[TIMESTAMP])
                if not verify(secret, ts, body, self.headers[IDEMPOTENCY], self.headers[SIGNATURE]):
                    receiver.bad_signatures += 1
                    return self._answer(401)
                if action == 500:
                    return self._answer(500)
                with receiver.lock:  # stored before answering: a lost answer is retried
                    receiver.applied.setdefault(self.headers[IDEMPOTENCY], json.loads(body))
                if action == "slow":
                    time.sleep(0.4)
                self._answer(200)

            def _answer(self, status):
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/plans"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
