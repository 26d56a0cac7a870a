"""A realistic StudyResult for the evidence-report tests: 5 sites, 3 outcomes, 16 balance rows,
20 logit-score strata with unbounded outer edges; with and without differential privacy.

Counts are internally consistent (strata sum to the sites, outcomes count the used strata), so
the report's checks and value figures can be computed by hand from these numbers.
"""

from __future__ import annotations

import math

import numpy as np

from shared.features import FEATURES
from shared.result import (
    BalanceRow,
    Diagnostic,
    OutcomeEstimate,
    PrivacySpent,
    Propensity,
    RoundLog,
    SiteSummary,
    StratumCounts,
    StudyResult,
)
from shared.study import StudySpec

SITE_NAMES = ("insurer_large", "insurer_mid_a", "insurer_mid_b", "company_small_a", "company_small_b")
SITE_SHARES = (0.40, 0.20, 0.18, 0.12, 0.10)
COST_PER_PERSON = 350.0
ISSUED_AT = "2026-11-23T20:00:00+00:00"


def make_spec(*, privacy: bool) -> StudySpec:
    return StudySpec.from_dict(
        {
            "study": {
                "name": "cv-prevention-2026",
                "seed": 7,
                "description": "Lifestyle and BP programme for high-risk employees",
            },
            "treatment": {
                "column": "treated",
                "intervention": "LIFESTYLE_BP",
                "cost_per_person": COST_PER_PERSON,
            },
            "outcomes": [
                {"name": "claims_cost", "cap": 50000.0, "kind": "continuous"},
                {"name": "cv_event", "cap": 1.0, "kind": "binary"},
                {"name": "absence_days", "cap": 60.0, "kind": "continuous"},
            ],
            "privacy": {"enabled": privacy, "epsilon": 3.0, "delta": 1e-6},
            "sites": [{"name": n, "data": f"/data/{n}.parquet"} for n in SITE_NAMES],
        }
    )


def _strata() -> tuple[StratumCounts, ...]:
    edges = [-math.inf, *np.round(np.linspace(-3.4, 1.4, 19), 4).tolist(), math.inf]
    treated = [0, 2, 5, 9, 14, 20, 27, 34, 40, 45, 48, 50, 49, 46, 42, 36, 29, 22, 15, 12]
    control = [310, 420, 465, 470, 452, 418, 372, 320, 266, 214, 168, 128, 94, 66, 44, 28, 16, 8, 3, 0]
    return tuple(
        StratumCounts(lo=edges[i], hi=edges[i + 1], n_treated=t, n_control=c, used=t > 0 and c > 0)
        for i, (t, c) in enumerate(zip(treated, control))
    )


def _outcome(name, kind, att, se_sampling, se_privacy, treated_mean, strata, **extra):
    se = math.hypot(se_sampling, se_privacy)
    if se_privacy > 0:  # a DP study states its physical limit (shared.dp.limit): σ_limit = se_privacy / 2
        limit = 2 * 1.96 * math.hypot(se_sampling, se_privacy / 2)
        extra |= {
            "limit_width": limit,
            "ratio_limit": 2 * 1.96 * se / limit,
            "ratio_exact_est": se / se_sampling,
        }
    n_t = sum(s.n_treated for s in strata if s.used)
    return OutcomeEstimate(
        name=name,
        kind=kind,
        att=att,
        se=se,
        ci=(att - 1.96 * se, att + 1.96 * se),
        n_treated=n_t,
        n_control=sum(s.n_control for s in strata if s.used),
        n_treated_dropped=sum(s.n_treated for s in strata if not s.used),
        treated_mean=treated_mean,
        control_mean=treated_mean - att,
        se_sampling=se_sampling,
        se_privacy=se_privacy,
        privacy_share_of_ci=(se - se_sampling) / se,
        **extra,
    )


def make_result(*, privacy: bool = False, truth: bool = True) -> StudyResult:
    spec = make_spec(privacy=privacy)
    strata = _strata()
    noise = 0.35 if privacy else 0.0
    outcomes = (
        _outcome(
            "claims_cost",
            "continuous",
            -412.5,
            118.7,
            118.7 * noise,
            2890.25,
            strata,
            reference={"att": -398.2, "se": 131.4},
            control_sd=4870.0,
        ),
        _outcome(
            "cv_event",
            "binary",
            -0.0213,
            0.0081,
            0.0081 * noise,
            0.118,
            strata,
            risk_difference=-0.0213,
            relative_risk=0.847,
            relative_risk_ci=(0.74, 0.97),
        ),
        _outcome("absence_days", "continuous", -1.84, 0.52, 0.52 * noise, 9.6, strata, control_sd=8.3),
    )
    rng = np.random.default_rng(11)
    before = rng.uniform(-0.45, 0.6, len(FEATURES))
    after = rng.uniform(-0.06, 0.06, len(FEATURES))
    balance = tuple(
        BalanceRow(
            covariate=f.name,
            smd_before=float(b),
            smd_after=float(a),
            var_ratio_before=float(rng.uniform(0.6, 1.6)),
            var_ratio_after=float(rng.uniform(0.85, 1.15)),
        )
        for f, b, a in zip(FEATURES, before, after)
    )
    n_t = sum(s.n_treated for s in strata)
    n_c = sum(s.n_control for s in strata)
    t_parts = _split(n_t)
    c_parts = _split(n_c)
    sites = tuple(
        SiteSummary(name=n, n=t + c, n_treated=t, n_control=c)
        for n, t, c in zip(SITE_NAMES, t_parts, c_parts)
    )
    return StudyResult(
        study=spec.study.name,
        spec_hash=spec.spec_hash(),
        spec=spec.public().model_dump(mode="json"),
        software_version="0.1.0",
        started_at="2026-11-23T19:40:00+00:00",
        finished_at="2026-11-23T19:41:12+00:00",
        sites=sites,
        outcomes=outcomes,
        balance=balance,
        strata_method="quantile" if privacy else "caliper",
        strata=strata,
        propensity=Propensity(
            beta=tuple(float(x) for x in rng.normal(0, 0.8, 17)), iterations=7, converged=True, loglik=-4123.7
        ),
        diagnostics=(
            Diagnostic(
                name="min_stratum_cells",
                passed=True,
                value=2.0,
                threshold=1.0,
                message="every used stratum holds both arms",
            ),
        ),
        warnings=("1 stratum has treated but no controls; its 12 treated are dropped",),
        privacy=(
            PrivacySpent(
                enabled=True, epsilon=3.0, delta=1e-6, accountant="rdp", per_site={n: 3.0 for n in SITE_NAMES}
            )
            if privacy
            else PrivacySpent(enabled=False)
        ),
        rounds=(RoundLog(name="describe", seconds=0.4, nodes=SITE_NAMES),),
        timings={"total": 72.0},
        truth={"claims_cost": -450.0, "cv_event": -0.019, "absence_days": -1.8} if truth else None,
    )


def _split(total: int) -> list[int]:
    parts = [int(total * s) for s in SITE_SHARES]
    parts[0] += total - sum(parts)
    return parts


def make_small_result() -> StudyResult:
    """The smallest honest result: 1 site, 1 outcome, 2 covariates, 2 strata (for exhaustive
    byte-flip tests)."""
    spec = StudySpec.from_dict(
        {
            "study": {"name": "s"},
            "covariates": [{"name": "age", "lo": 18, "hi": 90}, {"name": "sbp", "lo": 80, "hi": 220}],
            "outcomes": [{"name": "claims_cost", "cap": 1000.0}],
            "treatment": {"cost_per_person": 10.0},
        }
    )
    strata = (
        StratumCounts(lo=-math.inf, hi=0.5, n_treated=120, n_control=400, used=True),
        StratumCounts(lo=0.5, hi=math.inf, n_treated=3, n_control=0, used=False),
    )
    return StudyResult(
        study="s",
        spec_hash=spec.spec_hash(),
        spec=spec.public().model_dump(mode="json"),
        software_version="0.1.0",
        started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:01:00+00:00",
        sites=(SiteSummary(name="a", n=523, n_treated=123, n_control=400),),
        outcomes=(_outcome("claims_cost", "continuous", -25.0, 8.0, 0.0, 300.0, strata),),
        balance=(
            BalanceRow(covariate="age", smd_before=0.3, smd_after=0.02),
            BalanceRow(covariate="sbp", smd_before=-0.2, smd_after=0.05),
        ),
        strata_method="caliper",
        strata=strata,
        propensity=Propensity(beta=(0.1, 0.2, 0.3), iterations=5, converged=True),
    )


def make_registration(result: StudyResult, *, at: str = "2026-11-23T18:00:00Z"):
    """A registration of ``result``'s spec, signed with a fresh key before the study started,
    so the ``pre_registration`` gate passes."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from coordinator.report.registration import register

    return register(study=result.study, spec_hash=result.spec_hash, key=Ed25519PrivateKey.generate(), at=at)
