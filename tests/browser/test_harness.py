"""The browser harness itself: Chromium starts, serves a page, runs WebCrypto Ed25519.

The report page verifies signatures in the browser with WebCrypto's Ed25519 (no hand-rolled
crypto in the page); this checks that the Chromium the tests (and users) run has it, against a
signature made by the Python side, and that a changed byte is rejected.
"""

from __future__ import annotations

import base64
import http.server
import threading

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PAGE = b"""<!doctype html><html lang="en"><head><title>harness</title></head><body><main>
<h1>harness</h1><script>
async function verify(pub, sig, msg) {
  const b = s => Uint8Array.from(atob(s), c => c.charCodeAt(0));
  const key = await crypto.subtle.importKey("raw", b(pub), {name: "Ed25519"}, false, ["verify"]);
  return crypto.subtle.verify({name: "Ed25519"}, key, b(sig), new TextEncoder().encode(msg));
}
</script></main></body></html>"""


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, *args) -> None:
        pass


def test_chromium_verifies_a_python_ed25519_signature(page, shot) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        key = Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        message = '{"att":-615.2,"outcome":"claims_cost"}'
        sig = key.sign(message.encode())
        b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
        page.goto(f"http://127.0.0.1:{server.server_port}/")
        verify = "([p, s, m]) => verify(p, s, m)"
        assert page.evaluate(verify, [b64(pub), b64(sig), message]) is True
        assert page.evaluate(verify, [b64(pub), b64(sig), message.replace("615", "616")]) is False
        assert shot(page, "harness").stat().st_size > 0
        assert page.console_errors == []
    finally:
        server.shutdown()
