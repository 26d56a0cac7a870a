"""A tiny synthetic study with known potential outcomes, for the PSM tests and benchmark.

Six covariates already on [0, 1] (four continuous, two binary, correlated through a latent
risk), treatment uptake confounded by risk (a correctly specified logistic model), and three
outcomes with known effects: claims cost (heavy-tailed, about −20 %), a CV event (risk × 0.75)
and absence days (about −1.8). The truth is the *sample* ATT of the clipped potential
outcomes over the treated: ``mean(Y1 - Y0 | T = 1)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.study import Outcome

COVARIATES = ("age", "sbp", "bmi", "chol", "smoker", "diabetes")
OUTCOMES = (
    Outcome(name="claims_cost", cap=40_000.0),
    Outcome(name="cv_event", cap=1.0, kind="binary"),
    Outcome(name="absence_days", cap=60.0),
)
PS_BETA = np.array([-3.4, 2.2, 1.4, -0.8, 0.6, 0.7, 0.9])


@dataclass(frozen=True)
class Study:
    z: np.ndarray  # (n, 6) in [0, 1]
    t: np.ndarray  # (n,) 0/1
    y: np.ndarray  # (n, 3) observed outcomes, original units (may exceed caps)
    truth: dict[str, float]  # sample ATT of the clipped potential outcomes


def _expit(x):
    return 1.0 / (1.0 + np.exp(-x))


def make_study(*, n: int, seed: int, beta: np.ndarray = PS_BETA) -> Study:
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    age = np.clip(_expit(0.8 * risk + rng.normal(0, 0.8, n)), 0, 1)
    sbp = rng.beta(2 + np.exp(0.3 * risk), 3)
    bmi = rng.beta(3, 3, n)
    chol = np.clip(0.5 + 0.15 * risk + rng.normal(0, 0.12, n), 0, 1)
    smoker = (rng.uniform(size=n) < _expit(-1.0 + 0.5 * risk)).astype(float)
    diabetes = (rng.uniform(size=n) < _expit(-1.8 + 0.6 * risk + 1.5 * bmi)).astype(float)
    z = np.column_stack([age, sbp, bmi, chol, smoker, diabetes])
    t = (rng.uniform(size=n) < _expit(beta[0] + z @ beta[1:])).astype(float)

    base_cost = 1500 + 6000 * age + 4000 * sbp + 3000 * diabetes + 1500 * smoker
    cost0 = base_cost * rng.gamma(2.0, 0.5, n)
    cost1 = cost0 * rng.uniform(0.65, 0.95, n)  # ≈ −20 % per person, heterogeneous
    p0 = _expit(-3.2 + 2.0 * age + 1.5 * sbp + 0.8 * smoker + 0.6 * diabetes)
    u = rng.uniform(size=n)
    ev0, ev1 = (u < p0).astype(float), (u < 0.75 * p0).astype(float)
    days0 = rng.poisson(2 + 8 * age + 4 * smoker + 3 * diabetes).astype(float)
    days1 = np.maximum(days0 - rng.poisson(1.9, n), 0.0)

    y0 = np.column_stack([cost0, ev0, days0])
    y1 = np.column_stack([cost1, ev1, days1])
    y = np.where(t[:, None] == 1, y1, y0)
    caps = np.array([o.cap for o in OUTCOMES])
    eff = np.clip(y1, 0, caps) - np.clip(y0, 0, caps)
    truth = {o.name: float(eff[t == 1, k].mean()) for k, o in enumerate(OUTCOMES)}
    return Study(z=z, t=t, y=y, truth=truth)


def partition(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Split row indices 0..n-1 into ``k`` non-empty parts of unequal sizes."""
    cuts = np.sort(rng.choice(np.arange(1, n), size=k - 1, replace=False))
    perm = rng.permutation(n)
    return np.split(perm, cuts)
