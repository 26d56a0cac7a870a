"""Correlated draws of the 16 clinical features for one site's people.

One latent adiposity factor drives BMI, waist, blood pressure, triglycerides, glucose, diabetes
and (inversely) HDL and physical activity; age drives blood pressure, lipids and glucose; job
types shift sex, smoking, body weight and activity. LDL is Friedewald-consistent:
``total = LDL + HDL + TG / 2.2`` (mmol/L), up to rounding. Values are clipped to the public
bounds of :data:`shared.features.FEATURES` and rounded to the precision a lab or a nurse reports.
Clipping here is synthesis, not ingestion: ingestion never clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.features import FEATURE_NAMES, FEATURES_BY_NAME
from shared.synth.sites import RETIRED, SiteProfile

#: Decimals each feature is reported with (0 for integers and binaries).
PRECISION: dict[str, int] = {
    "age": 0,
    "sbp": 0,
    "dbp": 0,
    "total_chol": 2,
    "hdl": 2,
    "ldl": 2,
    "triglycerides": 2,
    "glucose": 1,
    "bmi": 1,
    "waist": 0,
    "physical_activity": 1,
}
_BINARY = frozenset(n for n in FEATURE_NAMES if FEATURES_BY_NAME[n].kind == "binary")


@dataclass(frozen=True)
class Population:
    """One site's people: department, job type and the 16 features (one array per name)."""

    department: np.ndarray
    job_type: np.ndarray
    features: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return len(self.department)

    def matrix(self) -> np.ndarray:
        """``(n, 16)`` features in :data:`FEATURE_NAMES` order."""
        return np.column_stack([self.features[n] for n in FEATURE_NAMES]).astype(float)


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _finish(name: str, x: np.ndarray) -> np.ndarray:
    """Clip to the feature's public bounds and round to its reporting precision."""
    f = FEATURES_BY_NAME[name]
    if name in _BINARY:
        return x.astype(np.int64)
    x = np.round(np.clip(x, f.lo, f.hi), PRECISION[name])
    return x.astype(np.int64) if PRECISION[name] == 0 else x


def _draw_jobs(
    rng: np.random.Generator, profile: SiteProfile, n: int, age: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Department and job-type indices; insurers' members past retirement age are retired."""
    shares = np.array([d.share for d in profile.departments])
    dept = rng.choice(len(shares), size=n, p=shares)
    cum = np.cumsum(profile.job_matrix(), axis=1)[dept]
    job = (rng.random(n)[:, None] > cum).sum(axis=1)
    job = np.minimum(job, len(profile.job_names) - 1)
    if profile.retire_age is not None:
        job = np.where(age >= profile.retire_age, profile.job_names.index(RETIRED), job)
    return dept, job


def draw_population(rng: np.random.Generator, *, profile: SiteProfile, n: int) -> Population:
    """Draw ``n`` people of ``profile``'s case mix.

    Args:
        rng: the site's generator (its draws are consumed in a fixed order).
        profile: the site's size-independent case mix.
        n: number of people.

    Returns:
        A :class:`Population` whose features all lie within their public bounds.
    """
    lo, hi = profile.age_range
    age = lo + (hi - lo) * rng.beta(*profile.age_beta, size=n)
    dept, job = _draw_jobs(rng, profile, n, age)
    attr = {a: profile.job_attribute(a)[job] for a in ("male_share", "smoke_shift", "bmi_shift", "activity")}
    male = (rng.random(n) < attr["male_share"]).astype(float)
    a = rng.standard_normal(n)  # latent adiposity
    e = rng.standard_normal((6, n))  # bp, glucose, hdl, tg, ldl, waist residuals
    da = age - 45.0

    activity = rng.gamma(1.6, 1.0 / 1.6, size=n) * attr["activity"] * np.exp(-0.3 * a - 0.008 * da)
    activity = _finish("physical_activity", activity)
    bmi = _finish(
        "bmi", 26.0 + attr["bmi_shift"] + 0.07 * da + 0.6 * male + 4.0 * a - 0.03 * (activity - 18.0)
    )
    waist = _finish("waist", 20.0 + 2.55 * bmi + 8.5 * male + 0.08 * da + 4.5 * e[5])
    smoker = rng.random(n) < _expit(profile.smoke_logit + attr["smoke_shift"] - 0.025 * da + 0.2 * male)
    family = rng.random(n) < 0.16
    diabetes = rng.random(n) < _expit(-3.4 + 0.055 * da + 0.13 * (bmi - 26.0) + 0.3 * family)

    sbp_untreated = 119.0 + 0.55 * da + 5.0 * male + 0.9 * (bmi - 26.0) + 3.0 * diabetes + 14.0 * e[0]
    bp_treated = rng.random(n) < _expit(-2.0 + 0.07 * (sbp_untreated - 140.0) + 0.06 * da + 0.6 * diabetes)
    sbp = _finish("sbp", sbp_untreated - 10.0 * bp_treated)
    dbp = 20.0 + 0.43 * sbp + 0.15 * (bmi - 26.0) - 0.06 * da + 6.0 * rng.standard_normal(n)
    dbp = _finish("dbp", np.minimum(dbp, sbp - 15.0))

    glucose_normal = 5.1 + 0.01 * da + 0.04 * (bmi - 26.0) + 0.45 * e[1]
    glucose_diabetic = 6.8 + rng.gamma(2.0, 1.0, size=n)
    glucose = _finish("glucose", np.where(diabetes, glucose_diabetic, glucose_normal))

    hdl = _finish(
        "hdl",
        np.exp(
            np.log(1.5)
            - 0.2 * male
            - 0.015 * (bmi - 26.0)
            + 0.004 * (activity - 18.0)
            - 0.06 * smoker
            + 0.22 * e[2]
        ),
    )
    tg = _finish(
        "triglycerides",
        np.exp(np.log(1.25) + 0.035 * (bmi - 26.0) + 0.15 * male + 0.25 * diabetes + 0.45 * e[3]),
    )
    ldl_latent = np.clip(3.1 + 0.02 * da + 0.03 * (bmi - 26.0) + 0.85 * e[4], 0.5, 9.0)
    total = _finish("total_chol", ldl_latent + hdl + tg / 2.2)
    ldl = _finish("ldl", total - hdl - tg / 2.2)  # Friedewald, recomputed after rounding

    features = {
        "age": _finish("age", age),
        "sex": _finish("sex", male),
        "sbp": sbp,
        "dbp": dbp,
        "bp_treated": _finish("bp_treated", bp_treated),
        "total_chol": total,
        "hdl": hdl,
        "ldl": ldl,
        "triglycerides": tg,
        "glucose": glucose,
        "diabetes": _finish("diabetes", diabetes),
        "smoker": _finish("smoker", smoker),
        "bmi": bmi,
        "waist": waist,
        "family_history": _finish("family_history", family),
        "physical_activity": activity,
    }
    departments = np.array([d.name for d in profile.departments], dtype=object)[dept]
    jobs = np.array(profile.job_names, dtype=object)[job]
    return Population(department=departments, job_type=jobs, features=features)
