r"""Whether a DP study goes on after describe: a stop rule fixed in advance, not tuned (issue #19).

The propensity fit's noise leaves a bias the CI carries (:mod:`shared.dp.fitnoise`): with
:math:`s` the noise's share of the noisy score's variance, the bound is
:math:`|crude - adjusted|\cdot s/(1 - s)`. At :math:`s = 1/2` that bound equals the whole
confounding adjustment the study observed: the adjusted estimate can then not be told apart from
the crude one, so the evidence the rest of the budget would buy is void. That point, not a
benchmark, fixes the rule: **stop iff the predicted s ≥ ½** (:data:`NOISE_SHARE_MAX`).

The prediction uses only public quantities: the plan's σ of the summed propensity release
(:math:`\sigma_{fit}`), describe's noisy counts :math:`N_T`, :math:`N`, and the number of
covariates :math:`d`, plus two assumptions stated here and in docs/PRIVACY.md:

* the covariates (scaled to [0, 1]) are uncorrelated with SD :data:`SD_Z_ASSUMED` = 1/√12
  each (a uniform over the public range), centred at the forms' centre;
* the true logit score has SD :data:`SD_SCORE_ASSUMED` = ½ (a weakly confounded study,
  c-statistic ≈ 0.64), and every row's :math:`p(1 - p)` is the arms' :math:`\bar p(1 - \bar p)`,
  :math:`\bar p = N_T/N`.

The Hessian the fit would reach is then :math:`N\bar p(1-\bar p)\,E[xx^\top]` (floored as
:func:`shared.dp.workflow.dp_ps_stats` floors the released one), the last Newton step's slope
noise is :func:`~shared.dp.fitnoise.slope_noise_covariance` of it, and its variance along the
score is weighed exactly as the realised bound weighs it (:func:`predicted_noise_share`). The
floor also damps the signal: each of the R Newton steps from slopes 0 moves the fit by
:math:`\kappa` = curvature ÷ floored curvature of the way, so the fitted score carries
:math:`(1 - (1 - \kappa)^R)^2` of the true score's variance.
Every input is public, so deciding costs no privacy.

Checked against the realised s (:func:`shared.dp.fitnoise.noise_share` of the study's own fit,
5 seeds per cell, the benchmark's baseline data, 16 covariates): predicted 0.14 / 0.15 vs
realised 0.019 / 0.027 at 1k treated over 5 nodes / 900 over 20 (ε = 2, secure aggregation);
0.23 / 0.49 vs 0.028 / 0.045 without it; 0.69 vs 0.041 at 1k treated, ε = 0.5 (this one stops);
0.014 / 0.066 vs 0.008 / 0.011 at 10k treated, ε = 1, with / without. The prediction errs on the
side of stopping, by the assumptions (the benchmark's score SD is ≈ 1.1 logits, not ½, and its
binary covariates spread more than uniforms); it is not fitted to them. Whatever the rule
decides, a study that goes on carries its realised bound in its CI; the rule only saves the
budget of a study whose evidence would be void.
"""

from __future__ import annotations

import math

import numpy as np

from shared.dp.fitnoise import noise_share, slope_noise_covariance
from shared.dp.forms import ps_from_release
from shared.dp.mechanisms import project_psd
from shared.dp.plan import NoisePlan
from shared.psm.estimator import Check

__all__ = [
    "NOISE_SHARE_MAX",
    "SD_SCORE_ASSUMED",
    "SD_Z_ASSUMED",
    "MIN_STRATA",
    "fit_resolution_check",
    "predicted_noise_share",
    "strata_resolution_check",
]

#: Stop iff the predicted noise share reaches this: there the bias bound |D|·s/(1 − s) equals
#: the whole observed adjustment |D| (derived, not tuned; module docstring).
NOISE_SHARE_MAX = 0.5
#: Fewest propensity strata a DP study estimates on. Cochran (1968, Biometrics 24, Table 2):
#: stratifying a normally distributed confounder into 2 / 3 / 4 / 5 / 6 classes removes about
#: 64 / 79 / 86 / 90 / 92 % of its bias; Rosenbaum & Rubin (1984) adopt five. Below five, more
#: than a tenth of the confounding would stay in the estimate, a bias no term of the CI carries.
#: Fixed from that literature in advance, not from the benchmark.
MIN_STRATA = 5
#: Assumed SD of each covariate scaled to [0, 1]: a uniform over its public range.
SD_Z_ASSUMED = 1.0 / math.sqrt(12.0)
#: Assumed SD of the true logit propensity score: weak confounding (c-statistic ≈ 0.64).
SD_SCORE_ASSUMED = 0.5


def predicted_noise_share(
    *,
    n_treated: float,
    n_total: float,
    n_covariates: int,
    sigma_fit: float,
    n_rounds: int,
    sd_z: float = SD_Z_ASSUMED,
    sd_score: float = SD_SCORE_ASSUMED,
) -> float:
    """The share of the noisy score's variance the fit's noise is predicted to take, from public
    quantities and the stated assumptions (module docstring); 1.0 when the counts carry no
    information (no rows, or one arm empty)."""
    n, nt = float(n_total), float(n_treated)
    if not (n > 0 and 0 < nt < n):
        return 1.0
    if not sigma_fit > 0:
        return 0.0
    d = int(n_covariates)
    p = nt / n
    # the Hessian the fit would reach, in the release's centred basis [1, z − c] (covariates
    # centred at c, uncorrelated, SD sd_z), floored as dp_ps_stats floors the released one
    centred = n * p * (1.0 - p) * np.diag([1.0] + [sd_z**2] * d)
    floored = project_psd(centred, floor=math.sqrt(2.0 * (d + 1)) * sigma_fit)
    _, H = ps_from_release(g=np.zeros(d + 1), H=floored)
    cov = slope_noise_covariance(H=H, sigma_fit=sigma_fit)
    var_u = float(np.sum(sd_z**2 * np.abs(cov)))  # as noise_share weighs it
    # the floor damps each Newton step by curvature ÷ floored curvature along the slopes, so
    # after R rounds from slopes 0 the fit has reached the part 1 − (1 − κ)^R of the score
    curvature = centred[1, 1] if d else 1.0
    kappa = curvature / max(curvature, math.sqrt(2.0 * (d + 1)) * sigma_fit)
    reached = 1.0 - (1.0 - kappa) ** int(n_rounds)
    signal = (reached * sd_score) ** 2
    return noise_share(noise_cov=cov, var_score=signal + var_u, sd_z=np.full(d, sd_z))


def fit_resolution_check(
    *,
    n_treated: float,
    n_total: float,
    n_covariates: int,
    plan: NoisePlan,
    n_nodes: int,
    secure_aggregation: bool = False,
) -> Check:
    """``dp_fit_resolution``: whether the fit's noise is predicted to leave the adjustment
    distinguishable from the crude difference (predicted s < ½, a rule fixed in advance from
    the bias bound, module docstring). Value: the predicted s; threshold: ½."""
    sa = {"secure_aggregation": secure_aggregation}
    sigma = plan.release("ps_fit").total_sigma(n_nodes, **sa)

    def share(sigma_fit: float) -> float:
        return predicted_noise_share(
            n_treated=n_treated,
            n_total=n_total,
            n_covariates=n_covariates,
            sigma_fit=sigma_fit,
            n_rounds=plan.n_ps_rounds,
        )

    s = share(sigma)
    said = (
        f"the propensity fit's noise is predicted to take {s:.2f} of the score's variance (rule "
        f"fixed in advance, not tuned: stop iff ≥ {NOISE_SHARE_MAX:g}, where the bias bound "
        "|crude − adjusted|·s/(1 − s) equals the whole adjustment; predicted from the plan's σ, "
        "describe's noisy counts and d, assuming covariates spread as uniforms and a score SD "
        f"of {SD_SCORE_ASSUMED:g} logits): "
    )
    if s < NOISE_SHARE_MAX:
        return Check(
            name="dp_fit_resolution",
            passed=True,
            value=s,
            threshold=NOISE_SHARE_MAX,
            message=said + "the fit can resolve the confounding; its residual bias is carried in the CI",
        )
    if share(0.0) >= NOISE_SHARE_MAX:  # no ε helps: the counts themselves carry no information
        return Check(
            name="dp_fit_resolution",
            passed=False,
            value=s,
            threshold=NOISE_SHARE_MAX,
            message=said + "describe's noisy counts show an arm empty, so no propensity fit can "
            "resolve the confounding at any ε",
        )
    # s falls with σ²: the σ at which the prediction reaches the rule, and the ε that buys it
    lo, hi = 0.0, sigma
    for _ in range(60):
        mid = (lo + hi) / 2
        below = share(mid) < NOISE_SHARE_MAX
        lo, hi = (mid, hi) if below else (lo, mid)
    per_node = lo if secure_aggregation or n_nodes < 2 else lo / math.sqrt(n_nodes)
    needed = plan.epsilon_for_sigma("ps_fit", per_node) if per_node > 0 else math.inf
    secure = (
        ""
        if secure_aggregation or n_nodes < 2
        else f"; ε ≥ {plan.epsilon_for_sigma('ps_fit', lo):.2g} with secure aggregation"
    )
    return Check(
        name="dp_fit_resolution",
        passed=False,
        value=s,
        threshold=NOISE_SHARE_MAX,
        message=said
        + "the adjusted estimate could not be told from the crude one, so the rest of the budget "
        f"would buy void evidence; these treated would need ε ≥ {needed:.2g} (same split and δ{secure})",
    )


def strata_resolution_check(
    *,
    n_strata: int,
    n_treated: float,
    plan: NoisePlan,
    n_nodes: int,
    secure_aggregation: bool = False,
    realised: bool = False,
) -> Check:
    """``dp_strata_resolution``: whether the count noise leaves at least :data:`MIN_STRATA`
    strata (Cochran's 90 %; :data:`MIN_STRATA`'s comment). After describe ``n_strata`` is what
    :func:`shared.dp.strata.dp_n_strata` allows at the plan's σ and describe's noisy treated
    count (public); in the result (``realised``) the strata the estimate used."""
    from shared.dp.strata import CELL_NOISE_RATIO  # the strata rule's own ratio

    what = "the estimate used" if realised else "the count noise allows"
    said = (
        f"{n_strata} propensity strata {what} (rule fixed in advance from Cochran 1968: at least "
        f"{MIN_STRATA}, which remove about 90 % of a confounder's bias): "
    )
    if n_strata >= MIN_STRATA:
        return Check(
            name="dp_strata_resolution",
            passed=True,
            value=float(n_strata),
            threshold=float(MIN_STRATA),
            message=said + "enough to remove most of the confounding",
        )
    # dp_n_strata gives each stratum CELL_NOISE_RATIO noise SDs of treated: the summed count's
    # σ that allows MIN_STRATA strata, and the ε that buys it (per node: ÷√K without SecAgg)
    total = max(float(n_treated), 0.0) / (CELL_NOISE_RATIO * MIN_STRATA)
    k = 1.0 if secure_aggregation or n_nodes < 2 else math.sqrt(n_nodes)
    if total > 0:
        needed = plan.epsilon_for_sigma("psm_main", total / k)
        secure = (
            ""
            if k == 1.0
            else f"; ε ≥ {plan.epsilon_for_sigma('psm_main', total):.2g} with secure aggregation"
        )
    else:  # no treated: no ε gives strata
        needed, secure = math.inf, ""
    return Check(
        name="dp_strata_resolution",
        passed=False,
        value=float(n_strata),
        threshold=float(MIN_STRATA),
        message=said
        + "more than a tenth of the confounding could stay in the estimate, a bias the CI does not "
        f"carry; these treated would need ε ≥ {needed:.2g} (same split and δ{secure})",
    )
