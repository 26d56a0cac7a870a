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

#: Uptake probabilities are kept in this range (positivity / overlap).
PROPENSITY_RANGE = (0.01, 0.95)


def uptake_probability(
    *, features: dict[str, np.ndarray], site_logit: float, department_shift: np.ndarray
) -> np.ndarray:
    """The true propensity ``pi`` of the formula above.

    Args:
        features: the 16 feature arrays.
        site_logit: the site's baseline uptake log-odds.
        department_shift: per-person uptake log-odds shift of their department.

    Returns:
        Probabilities in :data:`PROPENSITY_RANGE`.
    """
    f = features
    logit = (
        site_logit
        + department_shift
        + 0.045 * (f["age"] - 50.0)
        + 0.02 * (f["sbp"] - 125.0)
        + 0.08 * (f["bmi"] - 26.0)
        + 0.25 * (f["total_chol"] - 5.2)
        + 0.7 * f["diabetes"]
        + 0.4 * f["family_history"]
        + 0.3 * f["bp_treated"]
        - 0.3 * f["smoker"]
    )
    return np.clip(1.0 / (1.0 + np.exp(-logit)), *PROPENSITY_RANGE)
