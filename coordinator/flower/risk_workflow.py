"""Federated DP training of the cardiovascular risk model with Flower's FedAvg strategy.

Each round every node runs local DP-SGD (Opacus) from the global weights, charged to its own
ledger, and FedAvg averages the returned weights by each node's noisy row count (one charged
release per job, :data:`shared.risk.fedavg.COUNT_EPSILON`: the exact count would leave
uncharged). A final evaluation message sends the trained model to every node, which stores it as
a *candidate* (served only after its operator approves it) and answers with one Gaussian release
of its additive evaluation aggregate at the job's ``eval_epsilon``, charged to its ledger. The
pooled AUC, Brier score and decile calibration come from the merged noisy aggregates (clamped
where a metric needs non-negative counts: :func:`shared.risk.metrics.evaluate`), and the result
says the evaluation is DP and at what noise. No per-person score leaves a node.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from coordinator.flower.federation import GridFederation
from protos.codec import encode_risk
from shared.errors import FederationError
from shared.protocol import RISK_ARRAYS_KEY, RISK_EVAL_KEY, RiskJob
from shared.risk.arch import RiskArch
from shared.risk.metrics import EvalAggregate, evaluate, merge_aggregates

log = logging.getLogger("rehealth.coordinator.risk")


def initial_arrays(arch: RiskArch) -> list[np.ndarray]:
    """Zero weights: a public, data-free start (logistic: the 50% model)."""
    return [np.zeros(s) for s in arch.shapes()]


def train_risk_model(
    grid: Grid,
    job: RiskJob,
    *,
    expected_nodes: int,
    timeout_s: float = 600.0,
    progress=lambda event, data: None,
    grant=None,
) -> tuple[dict, list[np.ndarray]]:
    """Run ``job.rounds`` FedAvg rounds and a federated evaluation; return the result summary
    and the model's weights (the caller sends them back through the run's log: a ServerApp
    writes no file on the SuperLink's host)."""
    started = time.perf_counter()
    if expected_nodes != len(job.sites):
        raise FederationError(
            f"the risk job names {len(job.sites)} site(s) but {expected_nodes} "
            "node(s) are expected: every node trains, so they must agree "
            "(a node not named declines)",
            round_name="connect",
        )
    fed = GridFederation(grid, timeout_s=timeout_s)
    fed.wait_for_nodes(expected_nodes)
    arch = RiskArch(kind=job.kind, hidden=job.hidden)
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=expected_nodes,
        min_available_nodes=expected_nodes,
    )
    config = encode_risk(job, grant)  # the wire contract's RiskRequest
    progress("risk_training", {"rounds": job.rounds, "nodes": expected_nodes})
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_arrays(arch)),
        num_rounds=job.rounds,
        timeout=timeout_s,
        train_config=config,
    )
    arrays = result.arrays.to_numpy_ndarrays()
    train_metrics = {int(r): dict(m) for r, m in result.train_metrics_clientapp.items()}
    if len(train_metrics) < job.rounds:
        raise FederationError(
            f"risk training completed {len(train_metrics)} of {job.rounds} rounds "
            "(a node failed; see the SuperNode logs)",
            round_name="risk-train",
        )
    report = _federated_evaluation(grid, fed, arrays, config)
    summary = {
        "job": json.loads(job.model_dump_json()),
        "arch": arch.to_dict(),
        "rounds": job.rounds,
        "nodes": expected_nodes,
        "evaluation": report.to_dict(),
        "evaluation_privacy": evaluation_privacy(job, expected_nodes),
        "weight_privacy": weight_privacy(job),
        "train_metrics": train_metrics,
        "seconds": time.perf_counter() - started,
    }
    progress("risk_done", {"auc": report.auc, "brier": report.brier})
    return summary, arrays


def evaluation_privacy(job: RiskJob, nodes: int) -> dict:
    """What the evaluation cost and how noisy it is: each node released its aggregate once,
    (ε, δ) = (``eval_epsilon``, ``delta``)-DP for its rows, with σ per entry; the pooled
    aggregate carries σ√K."""
    import math

    from shared.risk.metrics import EVAL_SENSITIVITY, eval_noise_sigma

    sigma = eval_noise_sigma(epsilon=job.eval_epsilon, delta=job.delta)
    return {
        "dp": True,
        "epsilon": job.eval_epsilon,
        "delta": job.delta,
        "sensitivity": EVAL_SENSITIVITY,
        "sigma_per_node": sigma,
        "sigma_pooled": sigma * math.sqrt(nodes),
        "bins": job.eval_bins,
        "note": "each node's evaluation aggregate is one Gaussian release charged to its "
        "ledger on top of training; metrics are computed from the noisy sums",
    }


def weight_privacy(job: RiskJob) -> dict:
    """What FedAvg's weights cost: each node released its training row count once per job."""
    from shared.risk.fedavg import COUNT_EPSILON, COUNT_SENSITIVITY, count_sigma

    return {
        "dp": True,
        "epsilon": COUNT_EPSILON,
        "delta": job.delta,
        "sensitivity": COUNT_SENSITIVITY,
        "sigma_per_node": count_sigma(delta=job.delta),
        "note": "each node's FedAvg weight is one Gaussian release of its row count, charged "
        "to its ledger once per job on top of training; later rounds re-use it",
    }


def _federated_evaluation(grid: Grid, fed: GridFederation, arrays: list[np.ndarray], config: ConfigRecord):
    msgs = [
        Message(
            RecordDict({RISK_ARRAYS_KEY: ArrayRecord(arrays), "config": config}),
            dst_node_id=nid,
            message_type="evaluate",
            group_id="risk-evaluate",
        )
        for nid in fed.active
    ]
    sent = list(grid.push_messages(msgs))
    replies = fed.collect(dict(zip(sent, fed.active)))
    aggs = []
    for msg_id in sent:
        reply = replies.get(msg_id)
        if reply is None or reply.has_error():
            reason = reply.error.reason if reply is not None else "no answer"
            raise FederationError(f"risk evaluation: {reason}", round_name="risk-evaluate")
        aggs.append(EvalAggregate.from_arrays(reply.content.array_records[RISK_EVAL_KEY].to_numpy_ndarrays()))
    return evaluate(merge_aggregates(aggs))
