"""What the console's pages show, gathered from the kit, the Control API and the run folders.

Plain dicts (the templates and the JSON endpoints share them). What Flower 1.41 tells about a
node through the Control API (``ListNodes``): its id, the name it was registered under (our
site), its status (``registered``/``online``/``offline``/``unregistered``), when it was
registered, last activated and deactivated, ``online_until`` (last heartbeat + 2 heartbeat
intervals) and the heartbeat interval. It does **not** tell a node's software or protocol
version (the SuperNode sends its Flower version in request metadata, which the SuperLink does
not keep), nor its privacy budget. So:

- *last seen* is the last heartbeat, ``online_until − 2 × heartbeat_interval``;
- *protocol version*: a node refuses a query of another protocol version before reading it,
  so a site that answered the latest study speaks this coordinator's version — shown with the
  run it is known from, and "not known" for a site that has not answered one;
- *software version*: not reported by nodes (shown as such);
- *privacy budget*: the ε each node's ledger reported as spent in total in its last answer of
  the latest finished study (``result.privacy.ledger_total``), and what that study cost it
  (``per_site``); nodes report both with each DP answer, the console adds no release.
"""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from pathlib import Path

from coordinator.console.runs import ACTIVE, RunFolder, RunManager
from coordinator.federation.kit_files import CoordinatorKit
from shared.errors import ReHealthError

HEARTBEAT_PATIENCE = 2  # flwr.common.constant.HEARTBEAT_PATIENCE in 1.41


def _iso(ts: float | None) -> str | None:
    if not ts:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds")


def _utc(iso: str) -> dt.datetime | None:
    """An ISO time (``Z`` or an offset; none means UTC) as an aware UTC time, or None."""
    try:
        t = dt.datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def age(iso: str | None) -> str:
    """``42 s ago``, ``5 min ago``, ``3 h ago`` (blank when unknown)."""
    t = _utc(iso) if iso else None
    if t is None:
        return ""
    s = max(0, int((dt.datetime.now(dt.timezone.utc) - t).total_seconds()))
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 172800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"


def short_time(iso: str | None) -> str:
    """``2026-12-07 00:12:03 UTC`` from an ISO time (blank when unknown)."""
    if not iso:
        return ""
    t = _utc(iso)
    return str(iso) if t is None else t.strftime("%Y-%m-%d %H:%M:%S UTC")


def control_nodes(manager: RunManager) -> tuple[list[dict], str | None]:
    """The SuperLink's nodes as dicts, and an error text when it could not be asked."""
    from flwr.proto.control_pb2 import ListNodesRequest

    try:
        with manager.control() as c:
            res = c._call("list nodes", lambda: c.http.ListNodes(ListNodesRequest()))
    except ReHealthError as e:
        return [], str(e)
    out = []
    for n in res.nodes_info:
        last = n.online_until - HEARTBEAT_PATIENCE * n.heartbeat_interval if n.online_until else None
        out.append(
            {
                "node_id": int(n.node_id),
                "name": n.name,
                "status": n.status,
                "registered_at": n.registered_at or None,
                "last_activated_at": n.last_activated_at or None,
                "last_deactivated_at": n.last_deactivated_at or None,
                "last_seen": _iso(last),
                "heartbeat_interval_s": n.heartbeat_interval or None,
            }
        )
    return out, None


def latest_result(manager: RunManager) -> tuple[dict | None, RunFolder | None]:
    """The result of the newest completed console run (as JSON), and its run folder."""
    for run in manager.runs():
        path = run.file("result.json")
        if run.meta().get("state") == "completed" and path:
            try:
                return json.loads(path.read_text()), run
            except (OSError, ValueError):
                continue
    return None, None


def sites(manager: RunManager) -> dict:
    """Every site the kit knows (registered or revoked) with what the SuperLink and the latest
    study say about it."""
    from shared.protocol import PROTOCOL_VERSION

    kit = manager.kit
    nodes, error = control_nodes(manager)
    by_name: dict[str, dict] = {}
    for n in nodes:  # the newest registration of a name wins (a re-keyed site)
        if n["name"] not in by_name or n["node_id"] == max(n["node_id"], by_name[n["name"]]["node_id"]):
            by_name[n["name"]] = n
    result, run = latest_result(manager)
    answered = {s["name"]: s for s in (result or {}).get("sites", [])}
    privacy = (result or {}).get("privacy", {})
    manifest = _manifest(kit)
    added = {h["added"]: h["at"] for h in manifest.get("history", []) if "added" in h}
    revoked_at = {h["revoked"]: h["at"] for h in manifest.get("history", []) if "revoked" in h}
    registered = kit.registered_sites()
    names = sorted(set(registered) | set(revoked_at) | set(by_name))
    rows = []
    for name in names:
        node = by_name.get(name)
        summary = answered.get(name)
        ok = summary is not None and summary.get("status") == "ok"
        rows.append(
            {
                "name": name,
                "kit": "revoked" if name not in registered and name in revoked_at else "registered",
                "kit_added": added.get(name),
                "revoked_at": revoked_at.get(name) if name not in registered else None,
                "status": node["status"] if node else ("unknown" if error else "not connected"),
                "last_seen": node["last_seen"] if node else None,
                "connected_since": node["last_activated_at"] if node else None,
                "node_id": node["node_id"] if node else None,
                "time_zone": _site_toml(manager, name).get("time_zone"),
                "protocol": f"v{PROTOCOL_VERSION}" if ok else None,
                "software": None,  # nodes do not report it (see the module docstring)
                "last_study": (
                    {
                        "run": run.key if run else None,
                        "study": (result or {}).get("study"),
                        "status": summary.get("status"),
                        "error": summary.get("error"),
                    }
                    if summary
                    else None
                ),
                # the node's ledger total (all studies and views on its data); older results
                # carry only per_site, which then was that total
                "epsilon_spent": (privacy.get("ledger_total") or privacy.get("per_site") or {}).get(name),
            }
        )
    return {
        "federation": manifest.get("name"),
        "superlink": manager.address,
        "superlink_error": error,
        "sites": rows,
        "privacy": {
            "from_run": run.key if run else None,
            "study": (result or {}).get("study"),
            "finished_at": (result or {}).get("finished_at"),
            "enabled": privacy.get("enabled"),
            "study_epsilon": privacy.get("epsilon"),
            "delta": privacy.get("delta"),
            "accountant": privacy.get("accountant"),
        },
        "protocol_version": PROTOCOL_VERSION,
    }


def _manifest(kit: CoordinatorKit) -> dict:
    try:
        return kit.manifest()
    except ReHealthError:
        return {}


def _site_toml(manager: RunManager, name: str) -> dict:
    path = manager.kit.root.parent / "sites" / name / "node.toml"
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}


# -- runs ------------------------------------------------------------------------------------


def _failure(kind: str, site: object, round_name: object, message: object, at: object) -> dict:
    """One row of a run's failure table (a dropped site, a failed or stopped study)."""
    return {"kind": kind, "site": site, "round": round_name, "message": message, "at": at}


def run_progress(manager: RunManager, run: RunFolder, *, superlink_status: str | None = None) -> dict:
    """A run's state, rounds, failures and result summary, from its recorded events."""
    meta = run.meta()
    events = run.events()
    rounds: list[dict] = []
    failures: list[dict] = []
    for ev in events:
        kind = ev.get("event")
        if kind == "round_start":
            rounds.append(
                {
                    "round": str(ev.get("round")),
                    "ops": [str(o) for o in ev.get("ops", [])],
                    "state": "running",
                    "started": _iso(ev.get("t")),
                    "seconds": None,
                    "sites": [],
                }
            )
        elif kind == "round_end":
            match = next((r for r in reversed(rounds) if r["round"] == str(ev.get("round"))), None)
            if match is None:
                match = {"round": str(ev.get("round")), "ops": [], "started": None}
                rounds.append(match)
            match.update(state="done", seconds=ev.get("seconds"), sites=[str(s) for s in ev.get("sites", [])])
        elif kind == "dropped":
            why, at = str(ev.get("reason", ""))[:300], _iso(ev.get("t"))
            failures.append(_failure("site dropped", ev.get("site"), ev.get("round"), why, at))
        elif kind == "failed":
            why, at = str(ev.get("message", ""))[:2000], _iso(ev.get("t"))
            failures.append(_failure("study failed", ev.get("node"), ev.get("round"), why, at))
    state = meta.get("state", "unknown")
    if state in ACTIVE and not manager.alive(run.key):
        state = "detached"  # started by a console process that is gone
    error = meta.get("error")
    if error and not any(f["kind"] == "study failed" for f in failures) and state in ("failed", "stopped"):
        ended = "study stopped" if state == "stopped" else "study failed"
        why, at = error.get("message"), meta.get("finished_at")
        failures.append(_failure(ended, error.get("site"), error.get("round"), why, at))
    failed_rounds = {str(f["round"]) for f in failures if f.get("round")}
    for r in rounds:
        if state not in ACTIVE and r["state"] == "running":
            r["state"] = "failed" if r["round"] in failed_rounds else "interrupted"
    summary = None
    path = run.file("result.json")
    if path:
        try:
            result = json.loads(path.read_text())
            summary = {
                "outcomes": [
                    {
                        "name": o["name"],
                        "att": o["att"],
                        "ci": o["ci"],
                        "n_treated": o["n_treated"],
                        "n_control": o["n_control"],
                    }
                    for o in result.get("outcomes", [])
                ],
                "sites": result.get("sites", []),
                "privacy": result.get("privacy", {}),
            }
        except (OSError, ValueError, KeyError, TypeError):
            summary = None
    return {
        "key": run.key,
        "study": meta.get("study"),
        # text: Flower's run ids are uint64, beyond a JavaScript number's exact integers
        "run_id": str(meta["run_id"]) if meta.get("run_id") is not None else None,
        "state": state,
        "superlink_status": superlink_status,
        "started_by": meta.get("started_by"),
        "created": meta.get("created"),
        "finished_at": meta.get("finished_at"),
        "rerun_of": meta.get("rerun_of"),
        "active": state in ACTIVE,
        "rounds": rounds,
        "rounds_done": sum(1 for r in rounds if r["state"] == "done"),
        "last_event": events[-1].get("event") if events else None,
        "failures": failures,
        "result": summary,
        "report": run.file("report.json") is not None,
    }


def superlink_runs(manager: RunManager) -> tuple[dict[int, str], list[dict], str | None]:
    """Status per run id from the SuperLink, its run list, and an error text."""
    try:
        with manager.control() as c:
            runs = c.runs(limit=50)
    except ReHealthError as e:
        return {}, [], str(e)
    return {r.run_id: r.status for r in runs}, [r.as_dict() for r in runs], None


# -- reports ---------------------------------------------------------------------------------


def verify_report(path: Path, ca_cert: Path) -> dict:
    """The verification state of a signed report against the federation's CA: ``verified``
    (signature, certificate from this CA, issuer bound), ``unsigned`` (no signature) or
    ``failed`` (with the reason)."""
    from coordinator.report.certify import verify_with_ca
    from coordinator.report.errors import ReportError, ReportVerificationError

    try:
        data = path.read_bytes()
    except OSError as e:
        return {"state": "failed", "reason": "unreadable", "detail": e.strerror}
    try:
        doc = json.loads(data)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and "report" in doc and "signature" not in doc:
        return {
            "state": "unsigned",
            "reason": "signature-missing",
            "detail": "the report carries no signature",
        }
    try:
        certified = verify_with_ca(data, ca_cert.read_bytes())
    except ReportVerificationError as e:
        reason = getattr(e, "reason", "")
        state = "unsigned" if reason == "signature-missing" else "failed"
        return {"state": state, "reason": reason, "detail": str(e)[:400]}
    except (ReportError, OSError) as e:
        return {"state": "failed", "reason": "ca", "detail": str(e)[:400]}
    report = certified.verified.report
    return {
        "state": "verified",
        "reason": None,
        "detail": f"signed by {certified.subject}, certified by {certified.ca_subject}",
        "issuer": report.issuer,
        "issued_at": report.issued_at,
        "key_id": certified.verified.key_id,
        "sha256": certified.verified.sha256,
        "study": report.study.name,
        "billable": report.billable,
        "failed_gates": [c.label for c in report.checks if c.failed],
        "registered": report.registration is not None,
    }


def report_title(path: Path) -> dict:
    """Study name and issue time read from a report file without trusting it (for listing)."""
    try:
        doc = json.loads(path.read_text())
        rep = doc.get("report", {}) if isinstance(doc, dict) else {}
        study = rep.get("study") if isinstance(rep, dict) else None
        if isinstance(study, dict):
            study = study.get("name")
        return {"study": str(study) if study else None, "issued_at": rep.get("issued_at")}
    except (OSError, ValueError, AttributeError):
        return {"study": None, "issued_at": None}


def reports(manager: RunManager, extra_dir: Path) -> list[dict]:
    """Every report the console knows: the console's runs', and files in ``reports/``."""
    out = []
    for run in manager.runs():
        path = run.file("report.json")
        if path:
            out.append(
                {
                    "source": "runs",
                    "name": run.key,
                    "path": path,
                    "run": run.key,
                    "has_html": run.file("report.html") is not None,
                    "has_pdf": run.file("report.pdf") is not None,
                    **report_title(path),
                    "verification": verify_report(path, manager.kit.ca_cert),
                }
            )
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.json")):
            out.append(
                {
                    "source": "files",
                    "name": path.name,
                    "path": path,
                    "run": None,
                    "has_html": False,
                    "has_pdf": False,
                    **report_title(path),
                    "verification": verify_report(path, manager.kit.ca_cert),
                }
            )
    return out
