"""Progress, result and errors of a run, carried in its Flower log stream.

The ServerApp runs on the SuperLink's host and the operator may sit elsewhere, sharing no
files with it. Flower already ships one channel from a ServerApp to whoever started its run:
everything the ServerApp process writes to stdout/stderr is pushed to the SuperLink
(``PushLogs``, ``flwr/supercore/logger.py``) and streamed back over the Control API
(``StreamLogs``, what ``flwr log`` reads). So each event is one line of that log::

    \\x1erehealth-event {"t": 1765050000.1, "event": "round_end", ...}

The first character is ASCII RS (record separator), which no text we print contains; the JSON
is written with ``ensure_ascii`` (no raw newline or RS inside). A reader keeps only lines that
*start* with the marker (:class:`EventParser`), so Flower's own log lines around them do not
matter.

Forgery. The log also carries text that others chose: a node's error reason, logged by
:mod:`coordinator.flower.federation` when it drops the node, or an exception message. A reason
holding ``"\\n\\x1erehealth-event {...done, result...}"`` would otherwise become a line the
reader takes for the ServerApp's own result. :func:`install_output_guard` (called first thing
in the ServerApp) wraps the process's stdout/stderr so that every RS in ordinary output becomes
U+FFFD; only :func:`emit` writes past the guard. With no RS in anything else, no sequence of
writes can start a line with the marker, however the writes are split.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Callable, TextIO

RS = "\x1e"
MARKER = RS + "rehealth-event "
REPLACEMENT = "\ufffd"

_lock = threading.Lock()
_raw_write: Callable[[str], Any] | None = None  # stdout's write before the guard


def event(name: str, data: dict | None = None, *, t: float | None = None) -> dict:
    """An event: its time, its name, its data."""
    return {"t": time.time() if t is None else t, "event": name, **(data or {})}


def encode(ev: dict) -> str:
    """One event as its log line, newline-framed on both sides (a ``print`` of someone else's
    may have left its line open: the leading newline closes it). Not ``str.strip``-safe: RS
    counts as whitespace in Python; split on ``"\\n"`` only (``splitlines`` splits on RS)."""
    return "\n" + MARKER + json.dumps(ev, ensure_ascii=True, separators=(",", ":")) + "\n"


class EventParser:
    """Incremental reader of a run's log: feed chunks as they arrive, get the events.

    Log chunks need not end at a line boundary: the unfinished tail is kept for the next
    chunk. A marked line that is not a JSON object is a bug or an attack: it is returned as
    a ``malformed`` event (never dropped silently, never trusted)."""

    def __init__(self) -> None:
        self._tail = ""
        self.text: list[str] = []  # the log without the event lines, for humans

    def feed(self, chunk: str) -> list[dict]:
        lines = (self._tail + chunk).split("\n")
        self._tail = lines.pop()
        return self._parse(lines)

    def close(self) -> list[dict]:
        """Events in an unterminated last line (a log cut short)."""
        tail, self._tail = self._tail, ""
        return self._parse([tail]) if tail else []

    def _parse(self, lines: list[str]) -> list[dict]:
        events = []
        for line in lines:
            if not line.startswith(MARKER):
                if line:
                    self.text.append(line)
                continue
            try:
                ev = json.loads(line[len(MARKER) :])
            except json.JSONDecodeError:
                ev = None
            if isinstance(ev, dict) and isinstance(ev.get("event"), str):
                events.append(ev)
            else:
                events.append({"event": "malformed", "line": line[len(MARKER) : len(MARKER) + 200]})
        return events


def parse(text: str) -> list[dict]:
    """Every event in a whole log."""
    p = EventParser()
    return p.feed(text) + p.close()


def _guarded(write: Callable[[str], Any]) -> Callable[[str], Any]:
    def guarded_write(s: str) -> Any:
        return write(s.replace(RS, REPLACEMENT) if RS in s else s)

    guarded_write.__rehealth_guard__ = True  # type: ignore[attr-defined]
    return guarded_write


def install_output_guard(stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
    """Neutralise RS in everything this process writes to ``stdout``/``stderr`` from now on
    (Flower's log mirror wraps ``write`` of these very objects; we wrap it once more), keeping
    the unguarded stdout ``write`` for :func:`emit`. Idempotent."""
    global _raw_write
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    with _lock:
        for stream in (out, err):
            if not getattr(stream.write, "__rehealth_guard__", False):
                raw = stream.write
                if stream is out:
                    _raw_write = raw
                stream.write = _guarded(raw)  # type: ignore[method-assign]


def emit(name: str, data: dict | None = None) -> dict:
    """Write one event to the run's log (past the guard, in one ``write``: Flower queues each
    write whole, so the line reaches the log uninterrupted). Returns the event as sent."""
    ev = event(name, data)
    line = encode(ev)
    with _lock:
        write = _raw_write or sys.stdout.write
        write(line)
    return ev
