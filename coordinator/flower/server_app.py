"""Flower ServerApp of the coordinator: runs one study and sends its result back through Flower.

Run configuration (``--run-config`` / the Control API's ``override_config``): ``spec`` (the
study spec as JSON: it travels with the run, the SuperLink's host needs no copy), ``grant``
(the operator's signed grant, :mod:`shared.grant`: it travels with every query and each node
checks it against its pinned coordinator key; the ServerApp holds no key and cannot sign one),
``workflow`` (``study`` or ``risk``), ``risk-job`` and ``expected-nodes`` (risk training),
``connect-timeout``.

It writes no file. Progress, the result and any error are events in the run's log
(:mod:`coordinator.federation.run_events`), which the SuperLink stores and streams to whoever
watches the run over its Control API — the operator's workstation included.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
import time

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from coordinator.federation import run_events
from coordinator.federation.supernode import DETECTION_BOUND_S
from coordinator.flower.federation import GridFederation
from coordinator.study.assemble import assemble_result
from shared.driver import run_study
from shared.errors import FederationError, ReHealthError, SpecError
from shared.flower_pull import configure_object_pull
from shared.study import StudySpec

log = logging.getLogger("rehealth.coordinator")
app = ServerApp()


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def progress(event: str, data: dict) -> None:
    run_events.emit(event, data)


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_events.install_output_guard()  # before anything a node said can reach our output
    # replies' objects may still be on their way to the SuperLink; a node silent for the
    # heartbeat bound mid-upload is gone (its reply becomes an error, the node is dropped)
    configure_object_pull(max_time_s=DETECTION_BOUND_S)
    cfg = context.run_config
    progress("started", {})  # before any message to a node: the runner's sign that the app ran
    try:
        if str(cfg.get("workflow", "study")) == "risk":
            train_one_model(grid, cfg)
        else:
            run_one(grid, cfg)
    except ReHealthError as e:
        error = {
            "error": type(e).__name__,
            "message": str(e),
            "node": getattr(e, "node", None),
            "round": getattr(e, "round_name", None),
        }
        progress("failed", error)
        log.error("study failed: %s", e)
        raise


def study_spec(cfg) -> StudySpec:
    """The spec the run carries (JSON); an error naming the key when it is missing or bad."""
    text = str(cfg.get("spec", ""))
    if not text:
        raise SpecError("the run carries no study spec (run config key 'spec')")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"run config 'spec': not JSON ({e.msg} at {e.pos})") from None
    return StudySpec.from_dict(data)


def run_one(grid: Grid, cfg) -> None:
    started = time.perf_counter()
    started_at = _now()
    spec = study_spec(cfg)
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
    progress("done", {"result": result.model_dump(mode="json")})


def _grant(cfg):
    from shared.grant import SignedGrant

    if not cfg.get("grant"):
        raise FederationError(
            "the run carries no signed grant: nodes answer only studies signed "
            "by the operator's key (rehealth study run signs them)",
            round_name="connect",
        )
    return SignedGrant.model_validate_json(str(cfg["grant"]))


def train_one_model(grid: Grid, cfg) -> None:
    import numpy as np

    from coordinator.flower.risk_workflow import train_risk_model
    from shared.protocol import RiskJob

    job = RiskJob.model_validate_json(str(cfg["risk-job"]))
    expected = int(cfg.get("expected-nodes", 0))
    if expected < 1:
        raise FederationError("expected-nodes must be set for risk training", round_name="connect")
    summary, arrays = train_risk_model(
        grid, job, expected_nodes=expected, progress=progress, grant=_grant(cfg)
    )
    buf = io.BytesIO()
    np.savez(buf, *arrays)  # the trained weights: public, as the nodes' candidate model is
    progress("done", {"result": summary, "model_npz": base64.b64encode(buf.getvalue()).decode()})
