"""Diagnostics with pass/fail against the thresholds the report states.

Thresholds (defined once, in :mod:`shared.thresholds`, which the estimator's diagnostics read
too; docs/STATISTICS.md, "Diagnostics"; Austin 2009 for SMD; Rubin 2001 for variance ratios):

* balance: max |SMD| after weighting < 0.1 over all covariates, read under DP with the noise
  each SMD carries (:func:`shared.psm.balance.balance_verdict`: balanced, imbalanced or not shown);
* variance ratio after weighting within [0.5, 2] for every covariate where it is known;
* size gate: ≥ 100 treated, and a control pool ≥ 3 × the treated;
* overlap: ≥ 95% of the treated lie in strata that also hold controls (common support);
* the propensity fit converged (under DP: its fixed noisy rounds ran);
* under DP, the study's own ``dp_fit_resolution``: the stop rule fixed in advance, the fit
  noise's predicted share of the score's variance below ½ (:func:`shared.dp.stoprule.fit_resolution_check`).
"""

from __future__ import annotations

import math

from coordinator.report.document import Check, StratumRow
from shared import thresholds as th
from shared.psm.balance import balance_verdict
from shared.result import BalanceRow, Diagnostic, SiteSummary


def balance_check(rows: tuple[BalanceRow, ...]) -> Check:
    """Passes only when balance is shown: every covariate below the threshold, with the noise
    margin under DP. "Not shown" (the noise hides the answer) fails like "imbalanced" — a report
    cannot claim a balance it could not see — and the detail says which of the two it is."""
    verdict = balance_verdict(rows, th.SMD_MAX)
    rule = f"max |SMD| after weighting < {th.SMD_MAX:g}" + (
        f", each with {verdict.z:.2f} privacy-noise SDs of margin" if verdict.z > 0 else ""
    )
    worst = f"largest |SMD| after weighting: {verdict.worst}; " if verdict.worst else ""
    return Check(
        name="balance_smd",
        label="Covariate balance",
        rule=rule,
        passed=verdict.state == "balanced",
        value=verdict.max_abs_smd,
        threshold=th.SMD_MAX,
        source="report",
        detail=worst + verdict.reads,
    )


def variance_ratio_check(rows: tuple[BalanceRow, ...]) -> Check | None:
    known = [(r, r.var_ratio_after) for r in rows if r.var_ratio_after is not None and r.var_ratio_after > 0]
    if not known:
        return None
    worst, value = max(known, key=lambda rv: abs(math.log(rv[1])))
    return Check(
        name="variance_ratio",
        label="Variance ratios",
        rule=f"variance ratio after weighting within [{th.VAR_RATIO_LO:g}, {th.VAR_RATIO_HI:g}]",
        passed=th.VAR_RATIO_LO <= value <= th.VAR_RATIO_HI,
        value=value,
        threshold=th.VAR_RATIO_HI,
        source="report",
        detail=f"furthest from 1: {worst.covariate}",
    )


def arm_totals(sites: tuple[SiteSummary, ...], strata: tuple[StratumRow, ...]) -> tuple[int, int, str]:
    """Treated and control totals: the sites' released counts when all are known, else strata."""
    ok = [s for s in sites if s.status == "ok"]
    treated = [s.n_treated for s in ok if s.n_treated is not None]
    control = [s.n_control for s in ok if s.n_control is not None]
    if ok and len(treated) == len(control) == len(ok):
        return sum(treated), sum(control), "sites' released counts"
    return (sum(s.n_treated for s in strata), sum(s.n_control for s in strata), "stratum counts")


def size_checks(treated: int, control: int, source: str) -> tuple[Check, Check]:
    ratio = control / treated if treated > 0 else 0.0
    return (
        Check(
            name="size_treated",
            label="Size gate: treated",
            rule=f"treated ≥ {th.MIN_TREATED}",
            passed=treated >= th.MIN_TREATED,
            value=float(treated),
            threshold=float(th.MIN_TREATED),
            source="report",
            detail=f"{treated} treated ({source})",
        ),
        Check(
            name="size_control_pool",
            label="Size gate: control pool",
            rule=f"controls ≥ {th.MIN_CONTROL_RATIO:g} × treated",
            passed=ratio >= th.MIN_CONTROL_RATIO,
            value=ratio,
            threshold=th.MIN_CONTROL_RATIO,
            source="report",
            detail=f"{control} controls for {treated} treated ({source})",
        ),
    )


def overlap_check(*, treated_in_support: int, treated_dropped: int) -> Check:
    total = treated_in_support + treated_dropped
    share = treated_in_support / total if total else 0.0
    return Check(
        name="overlap",
        label="Propensity-score overlap",
        rule=f"share of treated in common support ≥ {th.MIN_SUPPORT:.0%}",
        passed=share >= th.MIN_SUPPORT,
        value=share,
        threshold=th.MIN_SUPPORT,
        source="report",
        detail=f"{treated_dropped} of {total} treated outside common support",
    )


def convergence_check(*, converged: bool, iterations: int, private: bool = False) -> Check:
    """Converged Newton fit; under DP the plan's fixed number of noisy rounds (the
    log-likelihood is not released, so convergence cannot be tested — shared.dp.plan)."""
    if private:
        return Check(
            name="propensity_converged",
            label="Propensity model fit",
            rule="DP: the plan's fixed number of noisy Newton rounds ran",
            passed=iterations >= 1,
            value=float(iterations),
            threshold=None,
            source="report",
            detail=f"{iterations} noisy rounds (convergence is not tested under DP)",
        )
    return Check(
        name="propensity_converged",
        label="Propensity model fit",
        rule="Newton iterations converged",
        passed=converged,
        value=float(iterations),
        threshold=None,
        source="report",
        detail=f"{iterations} iterations",
    )


# study diagnostics that state the same thing as a report check, by name
STUDY_ALIASES = {
    "size_gate_treated": "size_treated",
    "size_gate_control_ratio": "size_control_pool",
    "balance_after": "balance_smd",
    "common_support": "overlap",
}


def is_restatement(d: Diagnostic, own: dict[str, Check]) -> bool:
    """True if the study's diagnostic repeats a report check with the same value and verdict
    (then it is not shown twice); a disagreement is kept so the reader sees both."""
    mine = own.get(STUDY_ALIASES.get(d.name, ""))
    if mine is None or mine.passed != d.passed or (d.value is None) != (mine.value is None):
        return False
    if d.value is None or mine.value is None:  # both None (the line above)
        return True
    return math.isclose(d.value, mine.value, rel_tol=1e-9, abs_tol=1e-12)


# study diagnostics whose name does not read well as a label
STUDY_LABELS = {
    "dp_fit_resolution": "Propensity fit noise share, predicted (DP stop rule)",
    "dp_fit_bias": "Propensity fit noise: bias bound held by the CI (DP)",
    "dp_strata_resolution": "Propensity strata the count noise allows (DP stop rule)",
}


def study_check(d: Diagnostic) -> Check:
    """A diagnostic the study run reported, carried over as stated."""
    rule = d.message or d.name
    label = STUDY_LABELS.get(d.name, d.name.replace("_", " ").capitalize())
    return Check(
        name=d.name,
        label=label,
        rule=rule,
        passed=d.passed,
        value=d.value,
        threshold=d.threshold,
        source="study",
        detail=d.message,
    )
