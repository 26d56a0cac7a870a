"""The coverage grid of ``bench_privacy.py --grid``: DGP × node layout × noise mode at one ε.

Each cell runs the same seeded federations (:mod:`_layouts`, under a process of
:mod:`shared.synth.dgp`) through

* ``exact`` — the exact federated study (:func:`shared.psm.reference.estimate_att_federated`:
  the study driver over in-process nodes, caliper strata, converged fit);
* ``local`` — the DP study (:func:`shared.dp.study_sim.run_dp_study`, the shipped driver and
  node code with seeded noise), each node adding its own noise;
* ``secagg`` — the same under secure aggregation (each node adds σ/√K).

and reports per outcome: coverage of the true (capped, sample) ATT with its Wilson 95 % interval,
bias in SEs, the CI width ÷ the exact study's CI width on the same seed, ÷ the limit (the width
of one Gaussian release of the ATT at the same (ε, δ), see issue #19), and studies stopped.
Every DP study runs to its estimate (``unresolved_fit = "warn"`` where the spec still has it),
so coverage measures the statistics everywhere; "stopped" counts those the default rule would
end. One seed's cell work runs in one process (:func:`run_seed`), so seeds parallelise over a
pool; the noise of node ``i`` is drawn from ``[seed, dgp, layout, ε·1000, mode, i]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from _coverage import wilson_interval
from _layouts import LAYOUTS, NAMES, Node, build_nodes, uncapped_truth

from shared.dp.capquantile import CAP_QUANTILE
from shared.dp.capround import outcomes_at_caps
from shared.dp.study_sim import run_dp_study
from shared.errors import EstimationError
from shared.psm.reference import estimate_att_federated
from shared.study import Outcome, Privacy
from shared.synth.dgp import DGP_NAMES

__all__ = ["MODES", "Cell", "run_seed", "summarise_cell"]

MODES = ("exact", "local", "secagg")
DELTA = 1e-6


@dataclass(frozen=True)
class Cell:
    """One grid cell's settings (all seeds of it share them)."""

    dgp: str
    layout: str
    epsilon: float
    modes: tuple[str, ...]
    outcomes: tuple[Outcome, ...]
    #: run the study's large-loss cap round first (``privacy.large_loss_cap``,
    #: :mod:`shared.dp.capround`: its level is fixed, :data:`CAP_QUANTILE`); None keeps the
    #: spec's caps
    cap_quantile: float | None = None
    #: the DP studies' estimators (``stratified``, ``dr``; None: the spec's default); each DP
    #: mode runs once per estimator, on the same data and noise seeds (a paired comparison),
    #: labelled ``"secagg dr"`` etc. where more than the default is asked
    estimators: tuple[str | None, ...] = (None,)

    @property
    def runs(self) -> tuple[tuple[str, str, str | None], ...]:
        """``(label, mode, estimator)`` of every study a seed runs: the exact study once, each
        DP mode once per estimator."""
        out: list[tuple[str, str, str | None]] = []
        for mode in self.modes:
            for est in (None,) if mode == "exact" else self.estimators:
                out.append((mode if est is None else f"{mode} {est}", mode, est))
        return tuple(out)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label for label, _, _ in self.runs)

    def __post_init__(self) -> None:
        if self.cap_quantile is not None and self.cap_quantile != CAP_QUANTILE:
            raise ValueError(f"the cap round's level is fixed at {CAP_QUANTILE} (shared/dp/capquantile.py)")


def _privacy(epsilon: float, secagg: bool, cap_round: bool = False) -> Privacy:
    """The DP spec: run every study through (``warn``) where the spec still has a stop rule."""
    extra: dict[str, Any] = {"unresolved_fit": "warn"} if "unresolved_fit" in Privacy.model_fields else {}
    return Privacy(epsilon=epsilon, delta=DELTA, secure_aggregation=secagg, large_loss_cap=cap_round, **extra)


def _stopped(study: Any) -> bool:
    """Would the default rule have stopped this study after describe? (False without a rule.)"""
    check = getattr(study, "at_describe", None)
    return check is not None and not check.passed


def _limit_width(study: Any, outcome: str) -> float | None:
    """The limit CI width of ``outcome`` for the weights ``study`` used, or None.

    ``shared.dp.limit.with_limit`` (helper "lim", issue #19) attaches ``limit_width`` to each
    outcome of a DP estimate, from the study's own strata counts, used mask, spans, (ε, δ),
    accountant and sampling SE; it is read here when the shipped workflow sets it, so the
    ÷ limit column fills itself once that code is on main and shows "—" before.
    TODO(lead): after merging "lim", check the column is filled (no seed should show "—").
    """
    value = getattr(study.estimate.outcome(outcome), "limit_width", None)
    return None if value is None else float(value)


def _exact(nodes: Sequence[Node], outcomes: tuple[Outcome, ...]) -> dict[str, Any]:
    est = estimate_att_federated(
        nodes=[(n.arrays.z, n.arrays.t, n.y_raw) for n in nodes], outcomes=outcomes, covariates=NAMES
    ).estimate
    return {
        "stopped": False,
        "outcomes": {o.name: _interval(est.outcome(o.name), None) for o in outcomes},
        **_clipping(nodes, outcomes),
    }


def _dp(
    nodes: Sequence[Node], cell: Cell, seed: int, mode: str, estimator: str | None = None
) -> dict[str, Any]:
    noise_key = [
        seed,
        DGP_NAMES.index(cell.dgp),
        list(LAYOUTS).index(cell.layout),
        int(round(cell.epsilon * 1000)),
        MODES.index(mode),
    ]
    study = run_dp_study(
        sites=[n.arrays for n in nodes],
        outcomes=cell.outcomes,
        covariates=NAMES,
        privacy=_privacy(cell.epsilon, mode == "secagg", cap_round=cell.cap_quantile is not None),
        rngs=[np.random.default_rng([*noise_key, i]) for i in range(len(nodes))],
        estimator=estimator,  # type: ignore[arg-type]
    )
    extra: dict[str, Any] = {}
    if study.caps is not None:  # the estimand: the ATT at the caps the study's round released
        extra = capped_estimand(cell, seed, study.caps)
    return {
        "stopped": _stopped(study),
        "outcomes": {
            o.name: _interval(study.estimate.outcome(o.name), _limit_width(study, o.name))
            for o in cell.outcomes
        },
        **extra,
    }


def capped_estimand(cell: Cell, seed: int, caps: Any) -> dict[str, Any]:
    """What a study with a cap round estimates, from the seed's potential outcomes: the true ATT
    on outcomes capped at the released caps (``truth``), the caps, the rows above them and the
    uncapped truth; and the cap round's own account (noisy clipped share, caps' share of ρ)."""
    outcomes = outcomes_at_caps(cell.outcomes, caps)
    nodes, truth = build_nodes(layout=LAYOUTS[cell.layout], dgp=cell.dgp, seed=seed, outcomes=outcomes)
    return {
        "truth": truth,
        **_clipping(nodes, outcomes),
        "clipped_dp": {n: caps.clipped_share(n) for n in caps.names},
    }


def _clipping(nodes: Sequence[Node], outcomes: tuple[Outcome, ...]) -> dict[str, Any]:
    """The caps in force, the share of rows above them, and the uncapped truth."""
    y = np.vstack([n.y_raw for n in nodes])
    return {
        "caps": {o.name: o.cap for o in outcomes},
        "clipped": {o.name: float(np.mean(y[:, j] > o.cap)) for j, o in enumerate(outcomes)},
        "truth_raw": uncapped_truth(list(nodes), outcomes),
    }


def _interval(a: Any, limit_width: float | None) -> dict[str, float | None]:
    return {"att": a.att, "se": a.se, "lo": a.ci[0], "hi": a.ci[1], "limit_width": limit_width}


def run_seed(cell: Cell, seed: int) -> dict[str, Any]:
    """Every mode of ``cell`` on one seeded federation (picklable in and out, for a pool)."""
    t0 = time.process_time()
    nodes, truth = build_nodes(layout=LAYOUTS[cell.layout], dgp=cell.dgp, seed=seed, outcomes=cell.outcomes)
    out: dict[str, Any] = {
        "seed": seed,
        "n_treated": sum(n.n_treated for n in nodes),
        "n_people": sum(len(n.y_raw) for n in nodes),
        "truth": truth,
        "time": {"data": time.process_time() - t0},
        "modes": {},
    }
    for label, mode, estimator in cell.runs:
        t0 = time.process_time()
        try:
            res = _exact(nodes, cell.outcomes) if mode == "exact" else _dp(nodes, cell, seed, mode, estimator)
            if mode != "exact" and "caps" not in res:
                res.update(_clipping(nodes, cell.outcomes))
        except EstimationError as e:  # no estimate at all: counted, named by type only
            res = {"error": type(e).__name__}
        out["modes"][label] = res
        out["time"][label] = time.process_time() - t0
    return out


def _exact_width(r: dict[str, Any], outcome: str) -> float | None:
    ex = r["modes"].get("exact", {})
    if "outcomes" not in ex:
        return None
    return ex["outcomes"][outcome]["hi"] - ex["outcomes"][outcome]["lo"]


def summarise_cell(cell: Cell, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per mode and outcome: coverage (Wilson 95 %), bias/SE, width ratios, stopped."""
    rows = []
    for mode in cell.labels:
        done = [r for r in results if "outcomes" in r["modes"][mode]]
        errors = len(results) - len(done)
        stopped = sum(bool(r["modes"][mode]["stopped"]) for r in done)
        for o in cell.outcomes:
            est = [r["modes"][mode]["outcomes"][o.name] for r in done]
            # a DP study on proposed caps has its own (capped) truth; else the cell's
            truth = np.array([r["modes"][mode].get("truth", r["truth"])[o.name] for r in done])
            raw = np.array([r["modes"][mode]["truth_raw"][o.name] for r in done])
            caps = [r["modes"][mode]["caps"][o.name] for r in done]
            clipped = [r["modes"][mode]["clipped"][o.name] for r in done]
            att = np.array([e["att"] for e in est])
            se = np.array([e["se"] for e in est])
            lo, hi = np.array([e["lo"] for e in est]), np.array([e["hi"] for e in est])
            covered = int(((lo <= truth) & (truth <= hi)).sum())
            ci_lo, ci_hi = wilson_interval(covered, len(est))
            exact_w = [_exact_width(r, o.name) for r in done]
            by_exact = [(h - lw) / w for h, lw, w in zip(hi, lo, exact_w) if w]
            limits = [e["limit_width"] for e in est]
            by_limit = [(h - lw) / w for h, lw, w in zip(hi, lo, limits) if w]
            rows.append(
                {
                    "dgp": cell.dgp,
                    "layout": cell.layout,
                    "mode": mode,
                    "epsilon": None if mode == "exact" else cell.epsilon,
                    "outcome": o.name,
                    "seeds": len(results),
                    "n": len(est),
                    "coverage": covered / len(est) if est else None,
                    "wilson": (ci_lo, ci_hi),
                    "bias": float(np.mean(att - truth)) if est else None,
                    "bias_in_se": float(np.mean(att - truth) / np.mean(se)) if est else None,
                    "bias_raw_in_se": float(np.mean(att - raw) / np.mean(se)) if est else None,
                    "cap": float(np.median(caps)) if est else None,
                    "clipped": float(np.mean(clipped)) if est else None,
                    "clipped_dp": _mean_or_none(
                        r["modes"][mode].get("clipped_dp", {}).get(o.name) for r in done
                    ),
                    "width_by_exact": None if mode == "exact" or not by_exact else float(np.median(by_exact)),
                    "width_by_limit": float(np.median(by_limit)) if by_limit else None,
                    "stopped": stopped,
                    "errors": errors,
                }
            )
    return rows


def _mean_or_none(values) -> float | None:
    got = [v for v in values if v is not None]
    return float(np.mean(got)) if got else None
