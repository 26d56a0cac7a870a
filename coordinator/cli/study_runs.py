"""`rehealth study list|status|logs|stop`: the runs of a SuperLink, from the operator's machine.

All four talk to the SuperLink's Control API in this process (:mod:`coordinator.federation.
control`), over TLS pinned to ``--root-certificates``. A run's progress is read from its log,
where the ServerApp writes it as events (:mod:`coordinator.federation.run_events`).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared.errors import ReHealthError

SUPERLINK_HELP = "SuperLink address, host:port (its Control API)."
CA_HELP = "CA certificate the SuperLink's TLS certificate is checked against (default: system roots)."


KEY_HELP = (
    "The operator's study-signing key (its passphrase from REHEALTH_KEY_PASSPHRASE[_FILE]): "
    "it signs the short-lived token each Control API call carries."
)


def _control(superlink: str, root_certificates: Path | None, timeout: float, key: Path):
    from coordinator.federation.control import ControlClient
    from coordinator.federation.control_auth import OperatorCredential
    from coordinator.federation.provision import load_signing_key

    credential = OperatorCredential(load_signing_key(key))
    return ControlClient(
        superlink, root_certificates=root_certificates, timeout_s=timeout, credential=credential
    )


def _fail(console: Console, e: ReHealthError) -> typer.Exit:
    console.print(f"[red]error:[/red] {escape(str(e))}")
    return typer.Exit(1)


def list_runs(
    superlink: str = typer.Option(..., "--superlink", help=SUPERLINK_HELP),
    root_certificates: Path = typer.Option(None, "--root-certificates", help=CA_HELP),
    key: Path = typer.Option(..., "--key", help=KEY_HELP),
    limit: int = typer.Option(20, "--limit", min=1, help="Newest runs to show."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="Seconds to wait for the SuperLink."),
    fmt: str = typer.Option("text", "--format", help="text or json"),
) -> None:
    """The SuperLink's runs, newest first."""
    console = Console(stderr=fmt == "json")
    try:
        with _control(superlink, root_certificates, timeout, key) as c:
            runs = c.runs(limit=limit)
    except ReHealthError as e:
        raise _fail(console, e) from None
    if fmt == "json":
        typer.echo(json.dumps({"runs": [r.as_dict() for r in runs]}))
        return
    t = Table(title=f"Runs on {superlink}")
    for col in ("run", "status", "app", "started", "finished"):
        t.add_column(col)
    for r in runs:
        t.add_row(str(r.run_id), r.status, r.fab, r.pending_at, r.finished_at)
    console.print(t)


def _log_now(c, run_id: int, *, quiet_s: float = 1.0, limit_s: float = 10.0) -> str:
    """The run's log so far: the stream sends all it has at once, then waits for more (or
    ends, once the run has finished); stop after ``quiet_s`` without a chunk."""
    chunks: queue.SimpleQueue = queue.SimpleQueue()

    def pump() -> None:
        try:
            for text, _ts in c.stream_logs(run_id):
                chunks.put(text)
        except ReHealthError as e:
            chunks.put(e)
        chunks.put(None)

    threading.Thread(target=pump, daemon=True).start()
    out: list[str] = []
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            item = chunks.get(timeout=quiet_s)
        except queue.Empty:
            break
        if item is None:
            break
        if isinstance(item, ReHealthError):
            raise item
        out.append(item)
    return "".join(out)


def status(
    run_id: int = typer.Argument(..., help="The run's id (study list)."),
    superlink: str = typer.Option(..., "--superlink", help=SUPERLINK_HELP),
    root_certificates: Path = typer.Option(None, "--root-certificates", help=CA_HELP),
    key: Path = typer.Option(..., "--key", help=KEY_HELP),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="Seconds to wait for the SuperLink."),
    fmt: str = typer.Option("text", "--format", help="text or json"),
) -> None:
    """One run's status and its latest progress event."""
    from coordinator.federation.run_events import parse

    console = Console(stderr=fmt == "json")
    try:
        with _control(superlink, root_certificates, timeout, key) as c:
            run = c.run(run_id)
            events = parse(_log_now(c, run_id))
    except ReHealthError as e:
        raise _fail(console, e) from None
    last = next((e for e in reversed(events) if e.get("event") != "malformed"), None)
    failed = next((e for e in reversed(events) if e.get("event") == "failed"), None)
    if fmt == "json":
        typer.echo(
            json.dumps(
                {
                    **run.as_dict(),
                    "last-event": _short(last) if last else None,
                    "error": failed.get("message") if failed else None,
                }
            )
        )
        return
    console.print(f"run {run.run_id}: {run.status}", markup=False)
    if run.details:
        console.print(f"details: {run.details}", markup=False)
    if last:
        console.print(f"last event: {_describe(last)}", markup=False)
    if failed:
        console.print(f"[red]error:[/red] {escape(str(failed.get('message')))}")


def logs(
    run_id: int = typer.Argument(..., help="The run's id (study list)."),
    superlink: str = typer.Option(..., "--superlink", help=SUPERLINK_HELP),
    root_certificates: Path = typer.Option(None, "--root-certificates", help=CA_HELP),
    key: Path = typer.Option(..., "--key", help=KEY_HELP),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the run finishes."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="Seconds to wait for the SuperLink."),
    fmt: str = typer.Option("text", "--format", help="text or json"),
) -> None:
    """A run's log: Flower's lines as they are, the study's events one line each."""
    from coordinator.federation.run_events import EventParser

    console = Console(stderr=fmt == "json")
    parser = EventParser()
    events: list[dict] = []
    try:
        with _control(superlink, root_certificates, timeout, key) as c:
            c.run(run_id)  # an unknown run fails here, not as an empty log
            if follow and fmt != "json":
                for text, _ts in c.stream_logs(run_id):
                    for line in _render(parser, text):
                        typer.echo(line)
                for line in _render(parser, "\n"):
                    typer.echo(line)
                return
            text = "".join(t for t, _ in c.stream_logs(run_id)) if follow else _log_now(c, run_id)
    except ReHealthError as e:
        raise _fail(console, e) from None
    if fmt == "json":
        events = parser.feed(text) + parser.close()
        typer.echo(json.dumps({"run-id": run_id, "events": events, "log": parser.text}))
        return
    for line in _render(parser, text + "\n"):
        typer.echo(line)


def _render(parser, text: str) -> list[str]:
    """Lines to print for a chunk: the log's own lines, then each event described."""
    before = len(parser.text)
    events = parser.feed(text)
    return parser.text[before:] + [f"» {_describe(ev)}" for ev in events]


def _short(ev: dict) -> dict:
    """An event without its bulk (a result is shown by its size)."""
    out = {k: v for k, v in ev.items() if k not in ("result", "model_npz")}
    if "result" in ev:
        out["result"] = f"<{len(json.dumps(ev['result']))} bytes>"
    return out


def _describe(ev: dict) -> str:
    body = {k: v for k, v in _short(ev).items() if k not in ("t", "event")}
    when = time.strftime("%H:%M:%S", time.gmtime(ev["t"])) if isinstance(ev.get("t"), (int, float)) else "?"
    text = f"{when} {ev.get('event')}"
    if body:
        text += " " + json.dumps(body, ensure_ascii=False)
    return text[:400]


def stop(
    run_id: int = typer.Argument(..., help="The run's id (study list)."),
    superlink: str = typer.Option(..., "--superlink", help=SUPERLINK_HELP),
    root_certificates: Path = typer.Option(None, "--root-certificates", help=CA_HELP),
    key: Path = typer.Option(..., "--key", help=KEY_HELP),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="Seconds to wait for the SuperLink."),
    fmt: str = typer.Option("text", "--format", help="text or json"),
) -> None:
    """Stop a run (its ServerApp is told to end; nodes answer nothing more for it)."""
    console = Console(stderr=fmt == "json")
    try:
        with _control(superlink, root_certificates, timeout, key) as c:
            stopped = c.stop(run_id)
            run = c.run(run_id)
    except ReHealthError as e:
        raise _fail(console, e) from None
    if fmt == "json":
        typer.echo(json.dumps({"run-id": run_id, "stopped": stopped, "status": run.status}))
        return
    console.print(
        f"run {run_id}: " + ("stopped" if stopped else "was not running") + f" (status {run.status})",
        markup=False,
    )
