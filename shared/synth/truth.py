"""The ground truth written next to the data: sample ATTs from the simulated potential outcomes.

``ATT = mean over treated of (y1 - y0)``, raw and on outcomes clipped to the study's public
``[lo, cap]`` (what an estimator on capped outcomes targets), per site and pooled. The naive
treated-minus-control difference of observed outcomes is written too, to show the confounding.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from shared.study import Outcome
from shared.synth.hazard import HIGH_RISK
from shared.synth.outcomes import OUTCOMES


def _mean(x: np.ndarray) -> float | None:
    """Mean as a JSON-ready float, None for an empty selection (never a NaN)."""
    return float(np.mean(x)) if len(x) else None


def _clip(y: np.ndarray, o: Outcome) -> np.ndarray:
    return np.clip(y, o.lo, o.cap)


def att(*, y0: np.ndarray, y1: np.ndarray, treated: np.ndarray) -> float | None:
    """Sample ATT, ``mean_{t=1}(y1 - y0)``; None when nobody is treated."""
    t = np.asarray(treated, dtype=bool)
    return _mean(y1[t] - y0[t])


def outcome_truth(
    *,
    y0: dict[str, np.ndarray],
    y1: dict[str, np.ndarray],
    treated: np.ndarray,
    p0: np.ndarray,
    outcomes: Sequence[Outcome] = OUTCOMES,
) -> dict:
    """Truth figures for one group of people (a site, or the pooled federation).

    Args:
        y0, y1: potential outcomes per outcome name.
        treated: 0/1 per person.
        p0: baseline 1-year event probability per person (defines the high-risk group).
        outcomes: outcome specs with their caps.

    Returns:
        A JSON-ready dict: counts, event rates, ``att``, ``att_capped``, ``att_high_risk``,
        ``att_relative_high_risk`` (ATT over the treated high-risk people's mean ``y0``),
        ``mean_y0_treated`` and ``naive_difference``.
    """
    t = np.asarray(treated, dtype=bool)
    high = p0 >= HIGH_RISK
    obs = {o.name: np.where(t, y1[o.name], y0[o.name]) for o in outcomes}
    out: dict = {
        "n": int(len(t)),
        "n_treated": int(t.sum()),
        "uptake": _mean(t.astype(float)),
        "n_high_risk": int(high.sum()),
        "n_treated_high_risk": int((t & high).sum()),
        "risk_mean": _mean(p0),
        "risk_mean_treated": _mean(p0[t]),
        "risk_mean_control": _mean(p0[~t]),
    }
    if "cv_event" in obs:
        out["event_rate"] = _mean(obs["cv_event"])
        out["event_rate_untreated_all"] = _mean(y0["cv_event"])
        out["event_rate_high_risk_baseline"] = _mean(y0["cv_event"][high])
    out["att"] = {o.name: att(y0=y0[o.name], y1=y1[o.name], treated=t) for o in outcomes}
    out["att_capped"] = {
        o.name: att(y0=_clip(y0[o.name], o), y1=_clip(y1[o.name], o), treated=t) for o in outcomes
    }
    out["att_high_risk"] = {o.name: att(y0=y0[o.name], y1=y1[o.name], treated=t & high) for o in outcomes}
    base_high = {o.name: _mean(y0[o.name][t & high]) for o in outcomes}
    out["att_relative_high_risk"] = {
        k: (v / base_high[k] if v is not None and base_high[k] else None)
        for k, v in out["att_high_risk"].items()
    }
    out["mean_y0_treated"] = {o.name: _mean(y0[o.name][t]) for o in outcomes}
    out["naive_difference"] = {
        o.name: (float(obs[o.name][t].mean() - obs[o.name][~t].mean()) if t.any() and (~t).any() else None)
        for o in outcomes
    }
    return out
