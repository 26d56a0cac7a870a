"""The node's side of federated risk-model training: DP-SGD on its own rows, charged to its
ledger before the new weights leave; evaluation as an additive aggregate (no per-person score
leaves the node).

Torch and Opacus are imported here only, so study queries stay light.
"""

from __future__ import annotations

import json
import logging

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from node.runtime import NodeRuntime
from shared.errors import DataError, QueryRefused
from shared.features import FEATURE_NAMES
from shared.protocol import RISK_ARRAYS_KEY, RISK_EVAL_KEY, RISK_JOB_KEY, RiskJob

log = logging.getLogger("rehealth.node.risk")


def decode_job(content: RecordDict) -> RiskJob:
    rec = content.config_records.get("config")
    if rec is None or RISK_JOB_KEY not in rec:
        raise QueryRefused("training message carries no risk job")
    return RiskJob.model_validate_json(str(rec[RISK_JOB_KEY]))


def _arrays(content: RecordDict) -> list[np.ndarray]:
    rec = content.array_records.get(RISK_ARRAYS_KEY)
    if rec is None:
        raise QueryRefused(f"message carries no {RISK_ARRAYS_KEY!r} array record")
    return rec.to_numpy_ndarrays()


def _xy(runtime: NodeRuntime, job: RiskJob) -> tuple[np.ndarray, np.ndarray]:
    from node.study_service import read_cohort

    if runtime.data_path is None:
        raise QueryRefused(f"site {runtime.site} has no training data configured (data-path)")
    frame = read_cohort(runtime.data_path)
    missing = [c for c in (*FEATURE_NAMES, job.outcome) if c not in frame.columns]
    if missing:
        raise DataError(f"training table lacks column(s): {', '.join(missing)}", field=missing[0])
    return frame[list(FEATURE_NAMES)].to_numpy(dtype=float), frame[job.outcome].to_numpy(dtype=float)


def train(msg: Message, runtime: NodeRuntime) -> Message:
    """One federated round: local DP-SGD from the received weights."""
    from node.risk.train import local_train, plan_noise
    from shared.risk.arch import RiskArch

    job = decode_job(msg.content)
    X, y = _xy(runtime, job)
    sigma = plan_noise(n=len(y), batch_size=job.batch_size, epochs=job.epochs, rounds=job.rounds,
                       target_epsilon=job.target_epsilon, delta=job.delta)
    ledger = runtime.ledger()
    # charge first (the spend is fixed by σ, q and steps before any training happens)
    from node.risk.train import sample_rate_for, steps_per_epoch

    q = sample_rate_for(n=len(y), batch_size=job.batch_size)
    steps = job.epochs * steps_per_epoch(n=len(y), batch_size=job.batch_size)
    ledger.charge_sgd(dataset=runtime.dataset, study_id=job.job_id, query="risk_train",
                      noise_multiplier=sigma, sample_rate=q, steps=steps)
    res = local_train(arrays=_arrays(msg.content), X=X, y=y,
                      arch=RiskArch(kind=job.kind, hidden=job.hidden), epochs=job.epochs,
                      batch_size=job.batch_size, lr=job.lr, noise_multiplier=sigma,
                      max_grad_norm=job.max_grad_norm, delta=job.delta)
    metrics = MetricRecord({"num-examples": int(res.n), "epsilon-spent": ledger.spent(runtime.dataset),
                            "loss": float(res.metrics.get("loss", 0.0))})
    return Message(RecordDict({RISK_ARRAYS_KEY: ArrayRecord([np.asarray(a) for a in res.arrays]),
                               "metrics": metrics}), reply_to=msg)


def evaluate(msg: Message, runtime: NodeRuntime) -> Message:
    """Additive evaluation aggregate of the received model on the node's rows."""
    from shared.features import FEATURES, scale
    from shared.risk.arch import RiskArch, predict_proba
    from shared.risk.metrics import eval_aggregate

    job = decode_job(msg.content)
    X, y = _xy(runtime, job)
    prob = predict_proba(arch=RiskArch(kind=job.kind, hidden=job.hidden), arrays=_arrays(msg.content),
                         z=scale(X, FEATURES, row_offset=1))
    agg = eval_aggregate(prob=prob, y=y)
    _store_model(runtime, job, _arrays(msg.content))
    return Message(RecordDict({RISK_EVAL_KEY: ArrayRecord(agg.to_arrays()),
                               "metrics": MetricRecord({"num-examples": int(len(y))})}), reply_to=msg)


def _store_model(runtime: NodeRuntime, job: RiskJob, arrays: list[np.ndarray]) -> None:
    """Keep the model the coordinator sent for evaluation (the node scores with the model it
    was sent), versioned with its training record."""
    if runtime.models is None:
        log.warning("site %s keeps no risk model: its node config has neither model-dir nor "
                    "state-dir", runtime.site)
        return
    from node.risk.model_store import ModelStore, TrainingRecord

    record = TrainingRecord(kind=job.kind, hidden=job.hidden, rounds=job.rounds,
                            epsilon=job.target_epsilon, delta=job.delta, source="federated",
                            metrics={"job_id": job.job_id})
    stored = ModelStore(runtime.models).save(arrays=arrays, record=record)
    log.info("site %s stored risk model %s in %s", runtime.site, stored.version, runtime.models)
