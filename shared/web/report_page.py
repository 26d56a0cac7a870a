"""The report page: one self-contained HTML file that verifies a signed ``report.json`` in the
browser (RFC 8785 by the vendored ``canonicalize`` package, Ed25519 by WebCrypto) and shows it.

One file, everything inline, so it works served by a node (``/report``) or the coordinator, and
saved to disk and opened offline (Chromium refuses ES module scripts from ``file://``, so the
vendored module is inlined as a classic script, see ``report/VENDOR.md``). :func:`csp` gives the
Content-Security-Policy a server sends with it: only these exact inline scripts and style run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from functools import lru_cache

from shared.web import HERE, base_css, environment

__all__ = ["CANONICALIZE_VERSION", "page", "csp"]

REPORT = HERE / "report"
_EXPORT = "export default function canonicalize ("


def _lock_version() -> str:
    lock = json.loads((REPORT / "package-lock.json").read_text(encoding="utf-8"))
    return str(lock["packages"]["node_modules/canonicalize"]["version"])


CANONICALIZE_VERSION = _lock_version()


def classic_canonicalize() -> str:
    """The vendored module as a classic script defining the global ``canonicalize``: the word
    ``export default`` is the one change; a file with any other import/export is refused."""
    src = (REPORT / "vendor" / "canonicalize" / "canonicalize.js").read_text(encoding="utf-8")
    if src.count(_EXPORT) != 1 or re.search(r"^\s*(import|export)\b", src.replace(_EXPORT, ""), re.M):
        raise RuntimeError("vendored canonicalize.js changed shape: one `export default function` expected")
    return src.replace(_EXPORT, "function canonicalize (")


@lru_cache(maxsize=1)
def page() -> str:
    """The page's HTML (built once per process)."""
    env = environment(REPORT)
    return env.get_template("report.html").render(
        inline_css=base_css(),
        canonicalize_js=classic_canonicalize(),
        canonicalize_version=CANONICALIZE_VERSION,
        report_js=(REPORT / "report.js").read_text(encoding="utf-8"),
    )


def _hashes(html: str, tag: str) -> list[str]:
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies]


@lru_cache(maxsize=1)
def csp() -> str:
    """Content-Security-Policy for :func:`page`: its inline scripts and style by hash, nothing
    else (no network fetch at all: ``connect-src 'none'``)."""
    html = page()
    return (
        "default-src 'none'; "
        f"script-src {' '.join(_hashes(html, 'script'))}; "
        f"style-src {' '.join(_hashes(html, 'style'))}; "
        "img-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
