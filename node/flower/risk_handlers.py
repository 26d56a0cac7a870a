"""The node's side of federated risk-model training: DP-SGD on its own rows, charged to its
ledger before the new weights leave; evaluation as one Gaussian release of an additive aggregate,
charged before any row is read (no per-person score leaves the node).

A node not among the job's ``sites`` declines both message types before anything is read or
charged. A model a coordinator sends is stored as a *candidate* only: the node serves it after
its operator approves it (``rehealth node model approve``), which checks its calibration on the
node's own rows first.

Torch and Opacus are imported here only, so study queries stay light.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from node.runtime import NodeRuntime, NotInStudy
from shared.errors import DataError, QueryRefused, SpecError
from shared.features import FEATURE_NAMES
from shared.protocol import RISK_ARRAYS_KEY, RISK_EVAL_KEY, RiskJob

log = logging.getLogger("rehealth.node.risk")


def decode_job_and_grant(content: RecordDict):
    """The message's risk job (JSON, not yet validated) and signed grant: the wire contract's
    ``RiskRequest`` (:func:`protos.codec.decode_risk`)."""
    from protos.codec import ContractError, decode_risk

    try:
        return decode_risk(content)
    except ContractError as e:
        raise QueryRefused(f"training message carries no risk job: {e}") from None


def decode_job(content: RecordDict) -> RiskJob:
    return RiskJob.model_validate_json(decode_job_and_grant(content)[0])


def _job_for_site(content: RecordDict, runtime: NodeRuntime) -> RiskJob:
    """The job, if this node is one of its sites (else :class:`NotInStudy`: nothing is read,
    charged or stored)."""
    job = decode_job(content)
    if runtime.site not in job.sites:
        raise NotInStudy(f"site {runtime.site} is not among the risk job's sites")
    return job


def _model_arrays(content: RecordDict, job: RiskJob) -> list[np.ndarray]:
    """The sent weights, checked against the job's architecture (no data involved)."""
    from shared.risk.arch import RiskArch, check_arrays

    try:
        return check_arrays(arch=RiskArch(kind=job.kind, hidden=job.hidden), arrays=_arrays(content))
    except SpecError as e:
        raise QueryRefused(f"the sent model does not fit the job: {e}") from None


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
    X = frame[list(FEATURE_NAMES)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    y = pd.to_numeric(frame[job.outcome], errors="coerce").to_numpy(dtype=float)
    return X, y  # unparsable values are NaN: left out by the handlers, never echoed


def _within_bounds(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Features clipped to their public bounds, rows with a missing feature left out
    (:func:`shared.features.clip_to_bounds`): nothing about a row may become an error."""
    from shared.features import FEATURES, clip_to_bounds

    out, keep, changed = clip_to_bounds(X, FEATURES)
    return out, y[keep], changed


def train(msg: Message, runtime: NodeRuntime) -> Message:
    """One federated round: local DP-SGD from the received weights."""
    from node.risk.train import local_train, plan_noise
    from shared.risk.arch import RiskArch

    job = _job_for_site(msg.content, runtime)
    X, y = _xy(runtime, job)
    X, y, fixed = _within_bounds(X, y)
    keep = (y == 0) | (y == 1)
    X, y = X[keep], y[keep]
    if fixed or not keep.all():
        log.warning(
            "site %s, risk job %s: %d feature values clipped or rows without features "
            "left out, %d rows without a 0/1 outcome left out of training",
            runtime.site,
            job.job_id,
            fixed,
            int((~keep).sum()),
        )
    sigma = plan_noise(
        n=len(y),
        batch_size=job.batch_size,
        epochs=job.epochs,
        rounds=job.rounds,
        target_epsilon=job.target_epsilon,
        delta=job.delta,
    )
    ledger = runtime.ledger()
    # charge first (the spend is fixed by σ, q and steps before any training happens)
    from node.risk.train import sample_rate_for, steps_per_epoch

    q = sample_rate_for(n=len(y), batch_size=job.batch_size)
    steps = job.epochs * steps_per_epoch(n=len(y), batch_size=job.batch_size)
    charge = ledger.charge_sgd(
        dataset=runtime.dataset,
        study_id=job.job_id,
        query="risk_train",
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
    )
    weight, count_charge = _noisy_count(runtime, job, n=len(y))  # charged before training too
    res = local_train(
        arrays=_model_arrays(msg.content, job),
        X=X,
        y=y,
        arch=RiskArch(kind=job.kind, hidden=job.hidden),
        epochs=job.epochs,
        batch_size=job.batch_size,
        lr=job.lr,
        noise_multiplier=sigma,
        max_grad_norm=job.max_grad_norm,
        delta=job.delta,
    )
    # only the noisy count, FedAvg's weight: the exact row count (and the ledger's running
    # total, which other releases of this node move) would leave uncharged
    metrics = MetricRecord({"num-examples": weight})
    reply = Message(
        RecordDict({RISK_ARRAYS_KEY: ArrayRecord([np.asarray(a) for a in res.arrays]), "metrics": metrics}),
        reply_to=msg,
    )
    # the reply is built: handing it to Flower is all that is left
    ledger.mark_sent([charge.id] + ([count_charge.id] if count_charge is not None else []))
    return reply


#: The ledger's name for the noisy row count a node releases once per risk job.
COUNT_QUERY = "risk_count"


def _noisy_count(runtime: NodeRuntime, job: RiskJob, *, n: int):
    """The node's FedAvg weight for ``job``: one Gaussian release of its training row count,
    charged once per job and served again to the job's later rounds (a fresh draw per round
    would average out). Returns ``(weight, charge)``; the charge is None when re-served."""
    import json

    from shared.dp.mechanisms import secure_rng
    from shared.risk.fedavg import COUNT_SENSITIVITY, count_sigma, fedavg_weight

    sigma = count_sigma(delta=job.delta)
    body, charge = runtime.ledger().release_once(
        key=f"{COUNT_QUERY}:{runtime.dataset}:{job.job_id}",
        study_id=job.job_id,
        query=COUNT_QUERY,
        sigma=sigma,
        sensitivity=COUNT_SENSITIVITY,
        make=lambda: json.dumps({"count": n + float(secure_rng().normal(0.0, sigma))}),
    )
    return fedavg_weight(json.loads(body)["count"]), charge


#: The ledger's name for the evaluation release (one per job: a replay gets nothing).
EVAL_QUERY = "risk_evaluate"


def evaluate(msg: Message, runtime: NodeRuntime, *, rng: np.random.Generator | None = None) -> Message:
    """One Gaussian release of the sent model's evaluation aggregate on the node's rows.

    Order (the node's promise): the job and the node's place in its sites, the sent weights'
    shapes, σ from the job's public ``eval_epsilon`` and ``delta`` — then the ledger charge
    (at most once per job) — and only then are the rows read, scored, binned on the job's
    public grid (values clipped, never an error about a row) and noised. Whatever fails after
    the charge has been paid for. The model is then kept as a candidate, never served.

    Args:
        rng: the noise generator; None in production (:func:`shared.dp.mechanisms.secure_rng`,
            seeded from the OS CSPRNG). Tests inject a seeded one.
    """
    from shared.dp.mechanisms import secure_rng
    from shared.features import FEATURES, scale
    from shared.risk.arch import RiskArch, predict_proba
    from shared.risk.metrics import (
        EVAL_SENSITIVITY,
        clean_scores,
        eval_aggregate,
        eval_noise_sigma,
        noisy_aggregate,
    )

    job = _job_for_site(msg.content, runtime)
    arrays = _model_arrays(msg.content, job)
    sigma = eval_noise_sigma(epsilon=job.eval_epsilon, delta=job.delta)
    ledger = runtime.ledger()
    charge = ledger.charge(
        dataset=runtime.dataset,
        study_id=job.job_id,
        query=EVAL_QUERY,
        sigma=sigma,
        sensitivity=EVAL_SENSITIVITY,
        limit=1,
    )
    # --- paid: from here on the node's rows are read ---
    X, y = _xy(runtime, job)
    X, y, fixed = _within_bounds(X, y)
    prob = predict_proba(arch=RiskArch(kind=job.kind, hidden=job.hidden), arrays=arrays, z=scale(X, FEATURES))
    _, _, clipped, dropped = clean_scores(prob=prob, y=y)
    if fixed or clipped or dropped:
        log.warning(
            "site %s, risk job %s: %d feature values clipped or rows without features "
            "left out, %d probabilities clipped, %d rows without a 0/1 outcome left out",
            runtime.site,
            job.job_id,
            fixed,
            clipped,
            dropped,
        )
    agg = eval_aggregate(prob=prob, y=y, n_bins=job.eval_bins)
    noisy = noisy_aggregate(agg, sigma=sigma, rng=rng if rng is not None else secure_rng())
    ledger.mark_sent(charge.id)
    _store_candidate(runtime, job, arrays)
    metrics = MetricRecord(
        {
            "eval-epsilon": float(job.eval_epsilon),
            "eval-sigma": float(sigma),
        }
    )
    return Message(
        RecordDict({RISK_EVAL_KEY: ArrayRecord(noisy.to_arrays()), "metrics": metrics}), reply_to=msg
    )


def _store_candidate(runtime: NodeRuntime, job: RiskJob, arrays: list[np.ndarray]) -> None:
    """Keep the model the coordinator sent as a candidate (never served until the operator
    approves it after a calibration check on local data), versioned with its training record."""
    if runtime.models is None:
        log.warning(
            "site %s keeps no risk model: its node config has neither model-dir nor state-dir", runtime.site
        )
        return
    from node.risk.model_store import ModelStore, TrainingRecord

    record = TrainingRecord(
        kind=job.kind,
        hidden=job.hidden,
        rounds=job.rounds,
        nodes=len(job.sites),
        epsilon=job.target_epsilon,
        delta=job.delta,
        source="federated",
        metrics={"job_id": job.job_id},
    )
    stored = ModelStore(runtime.models).save_candidate(arrays=arrays, record=record)
    log.info(
        "site %s stored candidate risk model %s in %s (approve it with `rehealth node model approve %s`)",
        runtime.site,
        stored.version,
        runtime.models,
        stored.version,
    )
