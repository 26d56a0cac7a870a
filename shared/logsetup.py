"""One logging set-up for every long-running process (``rehealth node serve``, ``node run``,
``coordinator run``): one line per event on stderr, as text or JSON, nothing else configured.

Both formats carry the same things — time (UTC, ISO 8601), level, logger, message, and the
structured fields a caller passes as ``extra={"fields": {...}}`` (the scoring API's audit line
puts who/what/status/duration there). Text is for a person at a terminal::

    2026-12-06T20:01:02.345Z INFO rehealth.api.audit: api call request_id=3f… method=POST …

JSON is one object per line for a log shipper (journald, Loki, a container runtime)::

    {"ts": "2026-12-06T20:01:02.345Z", "level": "INFO", "logger": "rehealth.api.audit",
     "msg": "api call", "request_id": "3f…", "method": "POST", …}

Notes:
    A log line is a trust boundary too: whatever a caller can put into one (a header, a path)
    could forge a second line or a terminal escape. Both formatters therefore escape every
    control character (``\\n`` becomes the two characters ``\\`` ``n``) in the message and in
    every field, so one event is always exactly one line. What goes *into* a line is the
    caller's business: the API logs route templates and key ids, never values (see
    :mod:`node.api.middleware`).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: The handler this module installs carries this name, so a second call replaces it.
HANDLER_NAME = "rehealth"
#: C0 controls, DEL, C1 controls and the Unicode line/paragraph separators (some viewers break there)
_BREAKING = [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]
_CONTROL = {c: f"\\u{c:04x}" for c in _BREAKING} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}


def clean(text: object) -> str:
    """``text`` as a string with every control character escaped: it cannot end a line."""
    return str(text).translate(_CONTROL)


def _text_value(value: object) -> str:
    """A field value for the text format: quoted (JSON) if a space, quote or ``=`` in it could
    make it read as more than one ``key=value`` pair."""
    s = clean(value)
    return json.dumps(s) if not s or any(c in s for c in ' "=') else s


def _ts(record: logging.LogRecord) -> str:
    t = datetime.fromtimestamp(record.created, tz=timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <message> key=value …`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_ts(record), record.levelname, f"{record.name}:", clean(record.getMessage())]
        parts += [f"{clean(k)}={_text_value(v)}" for k, v in _fields(record).items()]
        if record.exc_info:  # one line: the traceback's newlines escaped, like any other
            parts.append("exc=" + clean(self.formatException(record.exc_info)))
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg`` and the fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _ts(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": clean(record.getMessage()),
        }
        for k, v in _fields(record).items():
            key = clean(k)
            if key not in out:  # a field never overwrites the envelope
                out[key] = v if isinstance(v, (int, float, bool)) or v is None else clean(v)
        if record.exc_info:
            out["exc"] = clean(self.formatException(record.exc_info))
        # json.dumps escapes what clean() left (quotes, backslashes, non-ASCII): one line
        return json.dumps(out, ensure_ascii=True)


def setup_logging(fmt: str = "text", level: str = "INFO", *, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record at ``level`` or above to ``stream`` (default stderr) as ``fmt``.

    Replaces the handler a previous call installed (and any ``basicConfig`` handler), so a
    process has exactly one; uvicorn's and Flower's loggers propagate to it.

    Raises:
        ValueError: an unknown format or level (named, with the known ones).
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: one of {', '.join(FORMATS)}")
    lvl = level.upper()
    if lvl not in LEVELS:
        raise ValueError(f"log level {level!r}: one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.name = HANDLER_NAME
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(lvl)
    return handler
