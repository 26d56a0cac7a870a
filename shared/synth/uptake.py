"""Who starts the prevention programme: uptake confounded by risk, site and department.

Outreach works from a simple points score of the features that drive risk (older, higher blood
pressure, heavier, diabetic, family history, already on BP treatment; smokers enrol less), and
sites and departments push the programme unequally:

.. math::
    \\operatorname{logit} \\pi = \\alpha_{site} + \\alpha_{dept} + 0.045 (age - 50)
        + 0.02 (SBP - 125) + 0.08 (BMI - 26) + 0.25 (TC - 5.2) + 0.7\\,diabetes
        + 0.4\\,family + 0.3\\,bp\\_treated - 0.3\\,smoker, \\qquad \\pi \\in [0.01, 0.95]

Because treated people are at higher risk, their untreated outcomes are worse than the
controls': a naive treated-minus-control difference is biased upwards against the true ATT.
Outcomes depend on the 16 features only, so uptake is ignorable given them and a correct
estimator can recover the truth; the score is linear in the features, so a logistic propensity
model on them is close to well specified (site and department shifts are not covariates).
Clipping ``pi`` keeps every person's chance of either arm away from 0 and 1 (overlap).
"""

from __future__ import annotations

import numpy as np

from shared.synth.dgp import (
    BASELINE,
    Dgp,
    nonlinear_uptake_terms,
    smooth_uptake_terms,
    threshold_uptake_terms,
)

#: Uptake probabilities are kept in this range (positivity / overlap).
PROPENSITY_RANGE = (0.01, 0.95)


def _linear_terms(f: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The features' log-odds terms of the formula above, in its order."""
    return (
        0.045 * (f["age"] - 50.0),
        0.02 * (f["sbp"] - 125.0),
        0.08 * (f["bmi"] - 26.0),
        0.25 * (f["total_chol"] - 5.2),
        0.7 * f["diabetes"],
        0.4 * f["family_history"],
        0.3 * f["bp_treated"],
        -0.3 * f["smoker"],
    )


def uptake_probability(
    *,
    features: dict[str, np.ndarray],
    site_logit: float,
    department_shift: np.ndarray,
    process: Dgp = BASELINE,
    care: np.ndarray | None = None,
) -> np.ndarray:
    """The true propensity ``pi`` of the formula above (or of ``process``'s variant of it).

    Args:
        features: the 16 feature arrays.
        site_logit: the site's baseline uptake log-odds.
        department_shift: per-person uptake log-odds shift of their department.
        process: the data-generating process (:mod:`shared.synth.dgp`): the feature terms are
            multiplied by its ``confounding``, its ``uptake_offset`` and, if it says so, the
            non-linear terms are added.
        care: the latent care-seeking ``u`` (:mod:`shared.synth.negative_controls`); enters
            with ``process.unmeasured`` (needed when that is not 0).

    Returns:
        Probabilities in :data:`PROPENSITY_RANGE`.
    """
    logit = site_logit + department_shift
    if not process.changes_uptake:
        # summed term by term, left to right, exactly as the baseline always was (bit-identical)
        for term in _linear_terms(features):
            logit = logit + term
    else:
        linear = sum(_linear_terms(features), np.zeros_like(logit))
        logit = logit + process.uptake_offset + process.confounding * linear
        if process.nonlinear_uptake:
            logit = logit + nonlinear_uptake_terms(features)
        if process.threshold_uptake:
            logit = logit + threshold_uptake_terms(features)
        if process.smooth_uptake:
            logit = logit + smooth_uptake_terms(features)
        if process.unmeasured != 0.0:
            assert care is not None, "an unmeasured confounder needs its values"
            logit = logit + process.unmeasured * care
    return np.clip(1.0 / (1.0 + np.exp(-logit)), *PROPENSITY_RANGE)
