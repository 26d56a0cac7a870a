"""The true 1-year cardiovascular event probability: a Framingham-style proportional hazard.

The log-hazard ratios follow the published general-CVD Framingham equation (D'Agostino et al.,
Circulation 2008; log age, log total and HDL cholesterol, log SBP, smoking, diabetes; close to
its women's coefficients), with sex, BP treatment, family history, BMI and activity added as in
SCORE2/QRISK-type models.
Log ratios of lab values make the equation unit-free (mmol/L or mg/dL alike):

.. math::
    \\eta = 3.0 \\ln\\frac{age}{50} + 1.1 \\ln\\frac{TC}{5.2} - 0.9 \\ln\\frac{HDL}{1.3}
          + 2.0 \\ln\\frac{SBP}{125} + 0.3\\,bp\\_treated + 0.65\\,smoker + 0.6\\,diabetes
          + 0.45\\,family + 0.4\\,male + 0.6 \\ln\\frac{BMI}{26} - 0.008 (PA - 18)

    p_0 = 1 - \\exp(-h_0 e^{\\eta})

``h0`` is calibrated (a constant, so no site depends on another) such that people whose 1-year
risk is at least :data:`HIGH_RISK` (the design's *high* and *very high* tiers) have a baseline
event rate of about 15 %/yr, as in the seeds, and the whole population about 2-5 %/yr.
"""

from __future__ import annotations

import numpy as np

#: Baseline 1-year hazard at the reference person (age 50, TC 5.2, HDL 1.3, SBP 125, ...).
H0 = 0.016
#: Lower bound of the high-risk group (1-year risk), the design's *high* tier cut-off.
HIGH_RISK = 0.10


def log_hazard_ratio(f: dict[str, np.ndarray]) -> np.ndarray:
    """Linear predictor ``eta`` of the equation above from raw feature arrays."""
    return (
        2.4 * np.log(f["age"] / 50.0)
        + 0.9 * np.log(f["total_chol"] / 5.2)
        - 0.75 * np.log(f["hdl"] / 1.3)
        + 1.6 * np.log(f["sbp"] / 125.0)
        + 0.2 * f["bp_treated"]
        + 0.55 * f["smoker"]
        + 0.5 * f["diabetes"]
        + 0.35 * f["family_history"]
        + 0.35 * f["sex"]
        + 0.45 * np.log(f["bmi"] / 26.0)
        - 0.006 * (f["physical_activity"] - 18.0)
    )


def baseline_hazard(f: dict[str, np.ndarray]) -> np.ndarray:
    """1-year cumulative hazard without the programme, ``h0 * exp(eta)``."""
    return H0 * np.exp(log_hazard_ratio(f))


def event_probability(hazard: np.ndarray) -> np.ndarray:
    """``1 - exp(-hazard)``: the probability of at least one event in the year."""
    return -np.expm1(-hazard)
