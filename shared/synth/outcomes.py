"""Potential outcomes under both arms for every person, drawn with common random numbers.

For each person the year after the index date is simulated twice, without (``y0``) and with
(``y1``) the programme, from the same random numbers, so ``y1 - y0`` is the programme's effect
on that person and the true ATT is its mean over the treated. Everything depends on the 16
features (through the baseline risk ``p0``) and independent noise only.

The effect grows with risk through a weight ``w = clip((p0 - 0.02) / (0.10 - 0.02), 0, 1)``:

- ``cv_event``: the hazard is multiplied by ``0.8 - 0.1 w`` (hazard ratio 0.7 for high risk);
  one uniform ``u`` gives ``y0 = [u < p0]``, ``y1 = [u < p1]``, so ``y1 <= y0``.
- ``claims_cost``: heavy-tailed routine claims (zero for some people, else lognormal, rising with
  risk) cut by ``6 % + 12 % w``, plus a lognormal event cost (mean ≈ 18k) in the years with an
  event. For treated high-risk people this totals ≈ 18–25 % lower claims, as in the seeds.
- ``absence_days``: a gamma-mixed count rising with risk, cut by ``16 % + 16 % w``, plus about
  four weeks after an event; zero for retired people. On average ≈ 1.8 fewer days for the
  treated, as in the seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.study import DEFAULT_OUTCOMES, Outcome
from shared.synth.hazard import HIGH_RISK, event_probability

#: The default study's outcomes with their public caps (claims are rarely near the cap).
OUTCOMES: tuple[Outcome, ...] = DEFAULT_OUTCOMES
OUTCOME_NAMES: tuple[str, ...] = tuple(o.name for o in OUTCOMES)


@dataclass(frozen=True)
class PotentialOutcomes:
    """``y0[name]`` and ``y1[name]``: each outcome without and with the programme."""

    y0: dict[str, np.ndarray]
    y1: dict[str, np.ndarray]

    def observed(self, treated: np.ndarray) -> dict[str, np.ndarray]:
        """``y1`` for the treated, ``y0`` for the others (the consistency assumption)."""
        t = np.asarray(treated, dtype=bool)
        return {k: np.where(t, self.y1[k], self.y0[k]) for k in self.y0}


def risk_weight(p0: np.ndarray) -> np.ndarray:
    """``w`` in [0, 1]: 0 below 2 % baseline risk, 1 from the high-risk cut-off on."""
    return np.clip((p0 - 0.02) / (HIGH_RISK - 0.02), 0.0, 1.0)


def draw_potential_outcomes(
    rng: np.random.Generator,
    *,
    hazard0: np.ndarray,
    working: np.ndarray,
    modifier: np.ndarray | None = None,
    claims_log_sd: tuple[float, float] | None = None,
    claims_clip: float | None = None,
    hidden: np.ndarray | None = None,
) -> PotentialOutcomes:
    """Simulate one year per person under both arms.

    The keyword arguments after ``working`` are the variants of :mod:`shared.synth.dgp`; left at
    None the draws and formulas are the baseline's, bit for bit. Variants draw the same random
    numbers in the same order (common random numbers across processes).

    Args:
        rng: the site's generator.
        hazard0: baseline 1-year cumulative hazard per person (see :mod:`.hazard`).
        working: False for retired people (no absence days).
        modifier: per-person multiplier ``m`` of every cut (hazard, claims, absence): the
            treated hazard becomes ``hazard0 (1 - (0.2 + 0.1 w) m)``; 0 = no effect, < 0 harm.
        claims_log_sd: ``(routine, event cost)`` log-sd of the claims lognormals; the
            log-means move so the means stay the baseline's.
        claims_clip: clip both arms' claims at this value.
        hidden: per-person log-multiplier of routine claims and absence days in both arms (an
            unmeasured confounder's effect, :mod:`shared.synth.dgp`); its mean factor is kept at 1
            by the caller.

    Returns:
        Both arms' ``claims_cost`` (currency units, cents), ``cv_event`` (0/1) and
        ``absence_days`` (whole days in [0, 365]).
    """
    n = len(hazard0)
    p0 = event_probability(hazard0)
    w = risk_weight(p0)
    rel = np.log(p0 / 0.03)  # risk relative to a typical person
    m = modifier

    u_event = rng.random(n)
    event0 = u_event < p0
    if m is None:
        event1 = u_event < event_probability(hazard0 * (0.8 - 0.1 * w))
    else:
        event1 = u_event < event_probability(hazard0 * (1.0 - (0.2 + 0.1 * w) * m))

    sd_routine, sd_event = (1.1, 0.6) if claims_log_sd is None else claims_log_sd
    # a lognormal's mean is exp(mu + sd²/2): a wider spread at the same mean moves mu down
    mu_routine = np.log(1200.0) - (0.5 * (sd_routine**2 - 1.1**2) if claims_log_sd else 0.0)
    mu_event = np.log(15_000.0) - (0.5 * (sd_event**2 - 0.6**2) if claims_log_sd else 0.0)
    any_claim = rng.random(n) < 1.0 / (1.0 + np.exp(-(1.0 + 0.45 * rel)))
    routine = any_claim * np.exp(mu_routine + 0.55 * rel + sd_routine * rng.standard_normal(n))
    if hidden is not None:
        routine = routine * np.exp(hidden)
    event_cost = np.exp(mu_event + sd_event * rng.standard_normal(n))
    claims_cut = 0.06 + 0.12 * w if m is None else (0.06 + 0.12 * w) * m
    cost0 = routine + event0 * event_cost
    cost1 = routine * (1.0 - claims_cut) + event1 * event_cost
    if claims_clip is not None:
        cost0, cost1 = np.minimum(cost0, claims_clip), np.minimum(cost1, claims_clip)

    frailty = rng.gamma(0.8, 1.0 / 0.8, size=n)
    mean_days = 9.0 * np.exp(0.35 * rel) * frailty
    if hidden is not None:
        mean_days = mean_days * np.exp(hidden)
    event_days = np.round(np.exp(np.log(28.0) + 0.5 * rng.standard_normal(n)))
    days_cut = 0.16 + 0.16 * w if m is None else (0.16 + 0.16 * w) * m
    days0 = working * (np.round(mean_days) + event0 * event_days)
    days1 = working * (np.round(mean_days * (1.0 - days_cut)) + event1 * event_days)

    def days(x: np.ndarray) -> np.ndarray:
        return np.clip(x, 0, 365).astype(np.int64)

    return PotentialOutcomes(
        y0={
            "claims_cost": np.round(cost0, 2),
            "cv_event": event0.astype(np.int64),
            "absence_days": days(days0),
        },
        y1={
            "claims_cost": np.round(cost1, 2),
            "cv_event": event1.astype(np.int64),
            "absence_days": days(days1),
        },
    )
