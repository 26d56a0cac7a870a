"""Flower ServerApp of the coordinator: runs one study and writes its result.

Run configuration (``flwr run … --run-config``): ``spec-path`` (the study TOML, on the
SuperLink's host), ``out-dir`` (where ``result.json`` and ``progress.jsonl`` are written),
``grant`` (the operator's signed grant, :mod:`shared.grant`: it travels with every query and
each node checks it against its pinned coordinator key; the ServerApp holds no key and cannot
sign one), ``expected-nodes`` (risk training).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.files import load_spec, write_result
from coordinator.flower.federation import GridFederation
from coordinator.study.assemble import assemble_result
from shared.driver import run_study
from shared.errors import FederationError, ReHealthError

log = logging.getLogger("rehealth.coordinator")
app = ServerApp()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    out_dir = Path(str(cfg["out-dir"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    progress_path = out_dir / "progress.jsonl"

    def progress(event: str, data: dict) -> None:
        with progress_path.open("a") as f:
            f.write(json.dumps({"t": time.time(), "event": event, **data}) + "\n")

    progress("started", {})  # before any message to a node: the runner's sign that the app ran
    try:
        if str(cfg.get("workflow", "study")) == "risk":
            train_one_model(grid, cfg, out_dir, progress)
        else:
            run_one(grid, cfg, out_dir, progress)
    except ReHealthError as e:
        error = {
            "error": type(e).__name__,
            "message": str(e),
            "node": getattr(e, "node", None),
            "round": getattr(e, "round_name", None),
        }
        (out_dir / "error.json").write_text(json.dumps(error, indent=2) + "\n")
        progress("failed", error)
        log.error("study failed: %s", e)
        raise


def run_one(grid: Grid, cfg, out_dir: Path, progress) -> None:
    started = time.perf_counter()
    started_at = _now()
    spec = load_spec(str(cfg["spec-path"]))
    fed = GridFederation(
        grid,
        timeout_s=spec.federation.round_timeout_s,
        min_nodes=spec.federation.min_nodes,
        # the console shows a drop when it happens, not only the result at the end
        on_drop=lambda site, round_name, reason: progress(
            "dropped", {"site": site, "round": round_name, "reason": reason}
        ),
    )
    expected = len(spec.sites) or int(cfg.get("expected-nodes", 0))
    if expected < 1:
        raise FederationError("the spec lists no sites and expected-nodes is not set", round_name="connect")
    fed.wait_for_nodes(expected, timeout_s=float(cfg.get("connect-timeout", 60.0)))
    progress("connected", {"nodes": expected})
    run = run_study(spec, fed, progress, grant=_grant(cfg))
    result = assemble_result(
        run,
        dropped=fed.dropped,
        started_at=started_at,
        finished_at=_now(),
        total_s=time.perf_counter() - started,
    )
    write_result(result, out_dir / "result.json")
    progress("done", {"result": str(out_dir / "result.json")})


def _grant(cfg):
    from shared.grant import SignedGrant

    if not cfg.get("grant"):
        raise FederationError(
            "the run carries no signed grant: nodes answer only studies signed "
            "by the operator's key (rehealth study run signs them)",
            round_name="connect",
        )
    return SignedGrant.model_validate_json(str(cfg["grant"]))


def train_one_model(grid: Grid, cfg, out_dir: Path, progress) -> None:
    from coordinator.flower.risk_workflow import train_risk_model
    from shared.protocol import RiskJob

    job = RiskJob.model_validate_json(str(cfg["risk-job"]))
    expected = int(cfg.get("expected-nodes", 0))
    if expected < 1:
        raise FederationError("expected-nodes must be set for risk training", round_name="connect")
    train_risk_model(
        grid, job, expected_nodes=expected, out_dir=out_dir, progress=progress, grant=_grant(cfg)
    )
    progress("done", {"result": str(out_dir / "risk_result.json")})
