"""Who starts the prevention programme: uptake confounded by risk, site and department.

Outreach targets people at higher risk (and people with obesity), smokers enrol less, and sites
and departments push the programme unequally:

.. math::
    \\operatorname{logit} \\pi = \\alpha_{site} + \\alpha_{dept} + 0.8 \\ln\\frac{p_0}{0.03}
        + 0.35 [BMI \\ge 30] - 0.3\\,smoker, \\qquad \\pi \\in [0.02, 0.9]

Because treated people are at higher risk, their untreated outcomes are worse than the
controls': a naive treated-minus-control difference is biased upwards against the true ATT.
Outcomes depend on the 16 features only, so uptake is ignorable given them and a correct
estimator can recover the truth. Clipping ``pi`` keeps every person's chance of either arm
away from 0 and 1 (overlap).
"""

from __future__ import annotations

import numpy as np

#: Uptake probabilities are kept in this range (positivity / overlap).
PROPENSITY_RANGE = (0.02, 0.9)


def uptake_probability(*, p0: np.ndarray, features: dict[str, np.ndarray], site_logit: float,
                       department_shift: np.ndarray) -> np.ndarray:
    """The true propensity ``pi`` of the formula above.

    Args:
        p0: baseline 1-year event probability per person.
        features: the 16 feature arrays (``bmi`` and ``smoker`` are read).
        site_logit: the site's baseline uptake log-odds.
        department_shift: per-person uptake log-odds shift of their department.

    Returns:
        Probabilities in :data:`PROPENSITY_RANGE`.
    """
    logit = (site_logit + department_shift + 0.8 * np.log(p0 / 0.03)
             + 0.35 * (features["bmi"] >= 30.0) - 0.3 * features["smoker"])
    return np.clip(1.0 / (1.0 + np.exp(-logit)), *PROPENSITY_RANGE)
