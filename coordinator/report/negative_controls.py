"""Negative controls in the report: the fitted systematic error, EASE (a gate), calibrated p and
CI next to the uncalibrated ones, and each outcome's minimum detectable effect (information).

The statistics are :mod:`shared.psm.calibration` (pure); this module turns the study result's
estimates into the report's section and checks.

**Scale.** Every estimate is read on the log ratio of means (the log relative risk for a 0/1
outcome), where one systematic-error distribution can serve outcomes of different units and
CohortMethod's thresholds hold as they are (see :mod:`shared.psm.calibration`). A calibrated
interval on that scale is mapped back to a difference by ``ATT = ȳ_T (1 − e^{−θ})``, monotone in
θ, so the calibrated CI in the outcome's units holds exactly the effects the log-scale CI holds.

**EASE gate** (``ease``): EASE ≤ :data:`shared.thresholds.EASE_MAX` = 0.25 on the log scale,
CohortMethod's ``easeThreshold``: a systematic error of 0.25 is a factor e^0.25 = 1.28, larger
than the effect (18–25 % lower claims) the study is meant to show. Fewer than
:data:`MIN_CONTROLS` usable controls: the null cannot be fitted and the gate fails (a spec that
declares negative controls asks for this gate; a study without any shows no such check).

**MDRR** (one information line per outcome, not a gate): CohortMethod blinds a result whose
MDRR exceeds 10. Here power is not validity: an underpowered study's CI is wide and says so,
and a saving is claimed only when the CI excludes zero (:mod:`coordinator.report.value`), so a
power gate would only withhold honest, inconclusive evidence; and 10 would be decorative (a
study at 1,000 treated has a claims MDRR near 1.2). The report states each MDRR with
CohortMethod's 10 beside it for the reader.
"""

from __future__ import annotations

import math

from coordinator.report.document import CalibratedRow, Check, NegativeControlRow, NegativeControlSection
from shared import thresholds as th
from shared.psm.calibration import (
    Z_95,
    calibrated_ci,
    calibrated_p,
    ease,
    fit_null,
    log_ratio,
    mdrr,
    min_detectable_multiple,
)
from shared.result import OutcomeEstimate, StudyResult

#: The fewest negative controls on the log scale the null is fitted from.
MIN_CONTROLS = 5

ASSUMPTION = (
    "Systematic error is taken as constant in the true effect (Schuemie et al. 2018, error model "
    "without positive controls): the bias the negative controls show on the log ratio of means "
    "is the bias of every outcome of this design, whatever its effect. An outcome whose "
    "confounding differs from the controls' (another mechanism, another size) is not corrected by it."
)
SCALE = "log ratio of means (treated mean / counterfactual mean; log relative risk for 0/1 outcomes)"


def _to_difference(theta: float, treated_mean: float) -> float:
    return treated_mean * (1.0 - math.exp(-theta))


def _p(theta: float, se: float) -> float:
    return math.erfc(abs(theta / se) / math.sqrt(2))


def negative_control_section(result: StudyResult) -> NegativeControlSection | None:
    """The section for a study that declared negative controls (None otherwise)."""
    ncs = result.negative_controls
    if not ncs:
        return None
    rows, thetas, ses, excluded = [], [], [], []
    for o in ncs:
        lr = log_ratio(se=o.se, treated_mean=o.treated_mean, control_mean=o.control_mean)
        if lr is None:
            excluded.append(o.name)
        else:
            thetas.append(lr[0])
            ses.append(lr[1])
        rows.append(
            NegativeControlRow(
                name=o.name,
                kind=o.kind,
                att=o.att,
                ci=o.ci,
                log_ratio=None if lr is None else lr[0],
                log_ratio_ci=None if lr is None else (lr[0] - Z_95 * lr[1], lr[0] + Z_95 * lr[1]),
            )
        )
    null = fit_null(thetas, ses) if len(thetas) >= MIN_CONTROLS else None
    return NegativeControlSection(
        scale=SCALE,
        n=len(ncs),
        n_used=len(thetas),
        excluded=tuple(excluded),
        null_mean=None if null is None else null.mean,
        null_sd=None if null is None else null.sd,
        ease=None if null is None else ease(null),
        ease_threshold=th.EASE_MAX,
        controls=tuple(rows),
        calibrated=tuple(_calibrated(o, null) for o in result.outcomes),
        assumption=ASSUMPTION,
    )


def _calibrated(o: OutcomeEstimate, null) -> CalibratedRow:
    lr = log_ratio(se=o.se, treated_mean=o.treated_mean, control_mean=o.control_mean)
    if lr is None or null is None:
        return CalibratedRow(outcome=o.name, p=_p(o.att, o.se) if o.se > 0 else None, ci=o.ci)
    theta, se = lr
    point, lo, hi = calibrated_ci(theta, se, null)
    return CalibratedRow(
        outcome=o.name,
        p=_p(o.att, o.se) if o.se > 0 else None,
        ci=o.ci,
        log_ratio=theta,
        log_ratio_se=se,
        calibrated_p=calibrated_p(theta, se, null),
        calibrated_log_ratio_ci=(lo, hi),
        calibrated_att=_to_difference(point, o.treated_mean),
        calibrated_ci=(_to_difference(lo, o.treated_mean), _to_difference(hi, o.treated_mean)),
    )


def ease_check(section: NegativeControlSection) -> Check:
    """The EASE gate (module docstring); fails when the null could not be fitted."""
    rule = f"EASE ≤ {th.EASE_MAX:g} on the log ratio of means, from ≥ {MIN_CONTROLS} negative controls"
    if section.ease is None:
        return Check(
            name="ease",
            label="Systematic error (EASE, negative controls)",
            rule=rule,
            kind="gate",
            passed=False,
            value=None,
            threshold=th.EASE_MAX,
            source="report",
            detail=f"only {section.n_used} of {section.n} negative controls have a log ratio "
            f"(both arm means positive): the systematic error cannot be fitted",
        )
    assert section.null_mean is not None and section.null_sd is not None
    return Check(
        name="ease",
        label="Systematic error (EASE, negative controls)",
        rule=rule,
        kind="gate",
        passed=section.ease <= th.EASE_MAX,
        value=section.ease,
        threshold=th.EASE_MAX,
        source="report",
        detail=f"fitted systematic error N({section.null_mean:.3f}, {section.null_sd:.3f}²) from "
        f"{section.n_used} of {section.n} negative controls (true effect 0); EASE "
        f"{section.ease:.3f} is a factor e^EASE = {math.exp(section.ease):.2f} on the ratio of means",
    )


def mdrr_checks(outcomes: tuple[OutcomeEstimate, ...]) -> tuple[Check, ...]:
    """One information line per outcome: its MDRR and minimum detectable difference."""
    k = min_detectable_multiple()
    out = []
    for o in outcomes:
        lr = log_ratio(se=o.se, treated_mean=o.treated_mean, control_mean=o.control_mean)
        value = None if lr is None else mdrr(lr[1])
        ratio = "n/a (an arm's mean is not positive)" if value is None else f"{value:.3g}"
        out.append(
            Check(
                name=f"mdrr_{o.name}",
                label=f"Minimum detectable effect: {o.name}",
                rule=f"information (α = 0.05 two-sided, power 0.8: {k:.2f} SEs); CohortMethod "
                f"blinds above an MDRR of {th.MDRR_COHORTMETHOD:g}",
                kind="info",
                passed=None,
                value=value,
                threshold=None,
                source="report",
                detail=f"MDRR {ratio}; minimum detectable difference ±{k * o.se:.4g} in the "
                f"outcome's units (SE {o.se:.4g}, privacy noise included)",
            )
        )
    return tuple(out)
