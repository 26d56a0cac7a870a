"""A small seeded cohort for the risk-model tests: realistic marginals, a known event logit."""

import numpy as np


def cohort(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)``: raw features within public bounds (``FEATURE_NAMES`` order), 0/1 event."""
    rng = np.random.default_rng(seed)
    age = np.clip(rng.normal(48, 12, n), 18, 90)
    sex = (rng.uniform(size=n) < 0.5).astype(float)
    sbp = np.clip(rng.normal(120 + 0.5 * (age - 48), 16, n), 80, 220)
    dbp = np.clip(0.5 * sbp + rng.normal(15, 8, n), 40, 130)
    bp_treated = (rng.uniform(size=n) < 1 / (1 + np.exp(-(sbp - 150) / 8))).astype(float)
    chol = np.clip(rng.normal(5.3, 1.0, n), 2, 12)
    hdl = np.clip(rng.normal(1.4 - 0.2 * sex, 0.35, n), 0.3, 3.5)
    ldl = np.clip(chol - hdl - 0.6 + rng.normal(0, 0.3, n), 0.5, 9)
    tg = np.clip(rng.lognormal(0.3, 0.45, n), 0.2, 12)
    bmi = np.clip(rng.normal(27, 4.5, n), 14, 60)
    glucose = np.clip(rng.normal(5.0 + 0.06 * (bmi - 27), 0.8, n), 2.5, 25)
    diabetes = (glucose > 6.9).astype(float)
    smoker = (rng.uniform(size=n) < 0.22).astype(float)
    waist = np.clip(bmi * 3.3 + rng.normal(5, 6, n), 50, 160)
    family = (rng.uniform(size=n) < 0.15).astype(float)
    activity = np.clip(rng.gamma(2.0, 8.0, n), 0, 100)
    X = np.column_stack(
        [
            age,
            sex,
            sbp,
            dbp,
            bp_treated,
            chol,
            hdl,
            ldl,
            tg,
            glucose,
            diabetes,
            smoker,
            bmi,
            waist,
            family,
            activity,
        ]
    )
    logit = (
        -3.2
        + 0.07 * (age - 48)
        + 0.4 * sex
        + 0.02 * (sbp - 120)
        + 0.3 * bp_treated
        + 0.25 * (chol - 5.3)
        - 0.7 * (hdl - 1.4)
        + 0.6 * diabetes
        + 0.6 * smoker
        + 0.03 * (bmi - 27)
        + 0.4 * family
        - 0.01 * (activity - 16)
    )
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(float)
    return X, y
