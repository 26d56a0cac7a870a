"""Named data-generating processes: the baseline and variants the estimator was never tuned on.

The coverage benchmark must not only run on the process the estimator was built around: its
uptake is logistic-linear in the features, exactly the propensity model the study fits. Each
:class:`Dgp` changes one thing and keeps the rest, drawing the *same* random numbers in the same
order, so for one seed the people (features) are identical across processes and only uptake or
outcomes differ (common random numbers):

============================  ===============================================================
``baseline``                  today's generator, bit-identical for every seed
``misspecified``              uptake logit with ``age²``, ``BMI·smoker`` and ``SBP·age`` terms:
                              a propensity the logistic-linear fit cannot represent
``threshold_uptake``          uptake logit + a step at age 60, a hinge in BMI above 30, a
                              saturating rise in glucose and a diabetes·family-history
                              interaction: shapes no square of a feature reproduces (added
                              after the squares basis of :mod:`shared.psm.terms`, to validate
                              it on a process it was not chosen on)
``smooth_uptake``             uptake logit + a smooth step in age centred at 57, a log in
                              triglycerides and a step in waist at 102 cm for men: written
                              before hinge terms were measured, to validate them (none of its
                              shapes sits on a hinge's knot)
``weak_confounding``          the features' uptake log-odds × 0.35
``strong_confounding``        the features' uptake log-odds × 2 (thin overlap at the top)
``heavy_tail``                claims lognormal with log-sd 1.9 (routine) and 1.2 (event cost),
                              same means, clipped at the public cap (100,000)
``heterogeneous``             the effect scales with a per-person modifier of diabetes, smoking
                              and age (harm for the young and healthy), so ATT ≠ ATE
``null``                      no effect at all: ``y1 = y0``, the true ATT is exactly 0
``unmeasured_confounding``    a latent care-seeking ``u`` (not a column) raises uptake
                              (log-odds + 1.5 u) and the routine claims and absence days
                              (× exp(0.5 u), mean kept) and every negative control: bias no
                              model of the 16 features removes (:mod:`.negative_controls`)
============================  ===============================================================

The truth is always the *sample* ATT of the generated people (mean of ``y1 − y0`` over the
treated, capped as the estimator caps), from :mod:`shared.synth.truth`: no process states its
effect as a formula the sample could miss.

>>> dgp("misspecified").nonlinear_uptake
True
>>> sorted(DGPS) == sorted(DGP_NAMES)
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.errors import SpecError

__all__ = [
    "BASELINE",
    "DGPS",
    "DGP_NAMES",
    "Dgp",
    "dgp",
    "effect_modifier",
    "nonlinear_uptake_terms",
    "smooth_uptake_terms",
    "threshold_uptake_terms",
]


@dataclass(frozen=True)
class Dgp:
    """One data-generating process: what it changes against the baseline.

    Args:
        name: the process's name (as the benchmark and ``generate_cohort(dgp=...)`` take it).
        about: one line for tables.
        confounding: multiplies the features' part of the uptake log-odds (1 = baseline).
        uptake_offset: added to the uptake log-odds, so uptake stays near the baseline's
            (~15 % at the large insurer) when the feature part changes.
        nonlinear_uptake: add :func:`nonlinear_uptake_terms` to the uptake log-odds.
        threshold_uptake: add :func:`threshold_uptake_terms` to the uptake log-odds.
        smooth_uptake: add :func:`smooth_uptake_terms` to the uptake log-odds.
        claims_log_sd: ``(routine, event cost)`` log-sd of the claims lognormals (None: the
            baseline's 1.1 and 0.6); the means are kept, so only the tail grows.
        claims_clip: clip claims at this value at generation (a heavy tail passes the public cap
            often; the data then hold the cap, as an insurer's large-loss layer would).
        heterogeneity: the effect's per-person multiplier (see :func:`effect_modifier`):
            ``"none"`` (baseline), ``"covariates"`` or ``"zero"`` (no effect).
        unmeasured: the latent care-seeking ``u``'s coefficient in the uptake log-odds (0: ``u``
            only moves the negative controls and is no confounder); when not 0, ``u`` also
            multiplies routine claims and absence days by ``exp(UNMEASURED_OUTCOME u)`` (mean kept).
    """

    name: str
    about: str
    confounding: float = 1.0
    uptake_offset: float = 0.0
    nonlinear_uptake: bool = False
    threshold_uptake: bool = False
    smooth_uptake: bool = False
    claims_log_sd: tuple[float, float] | None = None
    claims_clip: float | None = None
    heterogeneity: str = "none"
    unmeasured: float = 0.0

    @property
    def is_baseline(self) -> bool:
        """True when uptake and outcomes follow the baseline's formulas (bit-identical)."""
        return self == BASELINE

    @property
    def changes_uptake(self) -> bool:
        return (
            self.confounding != 1.0
            or self.uptake_offset != 0.0
            or self.nonlinear_uptake
            or self.threshold_uptake
            or self.smooth_uptake
            or self.unmeasured != 0.0
        )


#: ``smooth_uptake``'s offset: its uptake over the 8 sites of seed 0 is then 16.3 %, the
#: baseline's 16.1 % (−0.65: 17.6 %, −0.75: 16.8 %); set on uptake alone, before any estimate.
OFFSET_SMOOTH = -0.8

#: The claims cap of the default study (``shared.study.DEFAULT_OUTCOMES``), repeated here only
#: as the heavy-tail process's clip; a test checks that the two agree.
CLAIMS_CAP = 100_000.0
#: ``unmeasured_confounding``: log-multiplier of routine claims and absence days per unit of the
#: latent care-seeking ``u`` (a care seeker claims and reports more: ≈ +65 % at +1 SD).
UNMEASURED_OUTCOME = 0.5

BASELINE = Dgp("baseline", "logistic-linear uptake, lognormal claims, effect rising with risk")
DGPS: dict[str, Dgp] = {
    d.name: d
    for d in (
        BASELINE,
        Dgp(
            "misspecified",
            "uptake logit + age², BMI·smoker, SBP·age (the linear-logit fit is misspecified)",
            nonlinear_uptake=True,
            uptake_offset=-0.45,
        ),
        Dgp(
            "threshold_uptake",
            "uptake logit + step at age 60, BMI hinge at 30, saturating glucose, diabetes·family",
            threshold_uptake=True,
            uptake_offset=-0.55,
        ),
        Dgp(
            "smooth_uptake",
            "uptake logit + smooth step in age at 57, log triglycerides, men's waist ≥ 102 cm",
            smooth_uptake=True,
            uptake_offset=OFFSET_SMOOTH,
        ),
        Dgp("weak_confounding", "feature uptake log-odds × 0.35", confounding=0.35, uptake_offset=0.38),
        Dgp("strong_confounding", "feature uptake log-odds × 2", confounding=2.0, uptake_offset=-0.45),
        Dgp(
            "heavy_tail",
            "claims log-sd 1.9 / 1.2 (same means), clipped at the 100,000 cap",
            claims_log_sd=(1.9, 1.2),
            claims_clip=CLAIMS_CAP,
        ),
        Dgp(
            "heterogeneous",
            "effect × m(diabetes, smoking, age) in [−0.5, 2.5]: harm for the young, ATT ≠ ATE",
            heterogeneity="covariates",
        ),
        Dgp("null", "no effect: y1 = y0, true ATT exactly 0", heterogeneity="zero"),
        Dgp(
            "unmeasured_confounding",
            "latent care-seeking u: uptake log-odds + 1.5 u, routine claims and absence × exp(0.5 u)",
            unmeasured=1.5,
            uptake_offset=-0.7,
        ),
    )
}
DGP_NAMES: tuple[str, ...] = tuple(DGPS)


def dgp(name: str | Dgp) -> Dgp:
    """The process called ``name`` (a :class:`Dgp` passes through).

    Raises:
        SpecError: unknown name.
    """
    if isinstance(name, Dgp):
        return name
    if name not in DGPS:
        raise SpecError(f"unknown data-generating process {name!r}; known: {', '.join(DGPS)}")
    return DGPS[name]


def nonlinear_uptake_terms(f: dict[str, np.ndarray]) -> np.ndarray:
    """Log-odds the logistic-linear propensity model cannot represent.

    A U-shape in age (outreach reaches the young through onboarding and the old through
    check-ups), heavier smokers enrolling more (a smoking-cessation track) and old hypertensives
    enrolling less (already in a physician's care):

    .. math:: 0.002 (age - 50)^2 + 0.2 (BMI - 26)\\,smoker - 0.0015 (SBP - 125)(age - 50)
    """
    da = f["age"] - 50.0
    return 0.002 * da**2 + 0.2 * (f["bmi"] - 26.0) * f["smoker"] - 0.0015 * (f["sbp"] - 125.0) * da


def threshold_uptake_terms(f: dict[str, np.ndarray]) -> np.ndarray:
    r"""Log-odds of step, hinge and saturating shapes, for validating a propensity basis of squares.

    A checkup campaign for everyone from 60 on, a weight-loss track only above obesity (BMI 30),
    outreach that rises with glucose through the prediabetic range and then levels off, and
    people with both diabetes and a family history already in a specialist's programme:

    .. math:: 0.9\,[age \ge 60] + 0.15 \max(BMI - 30, 0) + 0.8 (1 - e^{-\max(glucose - 5.6, 0)})
        - 0.8\,diabetes \cdot family

    Fixed before the squares basis was measured on it (docs/benchmarks/misspec.md).
    """
    step = (f["age"] >= 60.0).astype(float)
    hinge = np.maximum(f["bmi"] - 30.0, 0.0)
    sat = 1.0 - np.exp(-np.maximum(f["glucose"] - 5.6, 0.0))
    return 0.9 * step + 0.15 * hinge + 0.8 * sat - 0.8 * f["diabetes"] * f["family_history"]


def smooth_uptake_terms(f: dict[str, np.ndarray]) -> np.ndarray:
    r"""Log-odds for validating a propensity basis of hinges at fixed points of the public
    ranges, written before any hinge basis was measured.

    A campaign that ramps up over a few years around age 57 (a logistic, not a step), outreach
    that rises with the logarithm of triglycerides (concave, no threshold), and men with a waist
    of 102 cm or more (the ATP III cut-off) invited to a metabolic track:

    .. math:: 1.1\,\sigma\!\left(\frac{age - 57}{2.5}\right) + 0.5 \ln\frac{TG}{1.5}
        + 0.7\,sex \cdot [waist \ge 102]

    None of the shapes is a second-order term, and none sits on a knot at a tenth of its public
    range (age 54 and 61.2; waist 94 and 105 cm; triglycerides 1.38 and 2.56 mmol/L).
    """
    ramp = 1.0 / (1.0 + np.exp(-(f["age"] - 57.0) / 2.5))
    log_tg = np.log(np.maximum(f["triglycerides"], 0.2) / 1.5)
    waist = f["sex"] * (f["waist"] >= 102.0).astype(float)
    return 1.1 * ramp + 0.5 * log_tg + 0.7 * waist


def effect_modifier(process: Dgp, f: dict[str, np.ndarray]) -> np.ndarray | None:
    """The per-person multiplier ``m`` of the programme's effect (None: the baseline's effect).

    With ``m`` the cuts become ``m × (baseline cut)`` (hazard, claims, absence), so ``m = 0`` is no
    effect and ``m < 0`` harm. ``"covariates"``:

    .. math:: m = \\operatorname{clip}(0.2 + 1.2\\,diabetes + 0.8\\,smoker + 0.035 (age - 50), -0.5, 2.5)

    Uptake rises with age and diabetes, so the treated benefit more than the average person:
    the ATT differs from the ATE, and an estimator that targets the ATE would miss.
    """
    if process.heterogeneity == "none":
        return None
    n = len(f["age"])
    if process.heterogeneity == "zero":
        return np.zeros(n)
    if process.heterogeneity == "covariates":
        m = 0.2 + 1.2 * f["diabetes"] + 0.8 * f["smoker"] + 0.035 * (f["age"] - 50.0)
        return np.clip(m, -0.5, 2.5)
    raise SpecError(f"unknown heterogeneity {process.heterogeneity!r}")
