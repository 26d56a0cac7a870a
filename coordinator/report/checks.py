"""Diagnostics: gates with pass/fail against the thresholds the report states, and information.

A *gate* has a threshold and passes or fails; a failed gate makes the report not billable
(:class:`coordinator.report.document.EvidenceReport`). An *info* check has no threshold (the
overlap coefficient, the DP fit's planned rounds, a variance ratio the noise hides): it is shown
and never counted as a pass. Defaults follow OHDSI CohortMethod's
``createCmDiagnosticThresholds`` where one applies (max |SMD| 0.1, equipoise ≥ 0.2).

Thresholds (defined once, in :mod:`shared.thresholds`, which the estimator's diagnostics read
too; docs/STATISTICS.md, "Diagnostics"; Austin 2009 for SMD; Rubin 2001 for variance ratios):

* balance: max |SMD| after weighting < 0.1 over all covariates, read under DP with the noise
  each SMD carries (:func:`shared.psm.balance.balance_verdict`: balanced, imbalanced or not shown);
* variance ratio after weighting within [0.5, 2] for every covariate where it is known;
* size gate: ≥ 100 treated, and a control pool ≥ 3 × the treated;
* overlap: ≥ 95% of the treated lie in strata that also hold controls (common support);
* equipoise: share of the people with a preference score in [0.3, 0.7] ≥ 0.2 (Walker et al.
  2013; CohortMethod), read from the released strata counts and edges;
* the propensity fit converged (exact studies; under DP its fixed noisy rounds are information);
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
        kind="gate",
        passed=verdict.state == "balanced",
        value=verdict.max_abs_smd,
        threshold=th.SMD_MAX,
        source="report",
        detail=worst + verdict.reads,
    )


def variance_ratio_check(rows: tuple[BalanceRow, ...]) -> Check:
    """A gate over the variance ratios that are known; information when none is (under DP the
    noise can hide every one): then nothing was tested, and the report says so."""
    rule = f"variance ratio after weighting within [{th.VAR_RATIO_LO:g}, {th.VAR_RATIO_HI:g}]"
    known = [(r, r.var_ratio_after) for r in rows if r.var_ratio_after is not None and r.var_ratio_after > 0]
    if not known:
        return Check(
            name="variance_ratio",
            label="Variance ratios",
            rule=rule,
            kind="info",
            passed=None,
            value=None,
            threshold=None,
            source="report",
            detail="not computable: no variance ratio after weighting was released or resolved "
            "(under DP the noise hides them), so this was not tested",
        )
    worst, value = max(known, key=lambda rv: abs(math.log(rv[1])))
    unknown = len(rows) - len(known)
    return Check(
        name="variance_ratio",
        label="Variance ratios",
        rule=rule,
        kind="gate",
        passed=th.VAR_RATIO_LO <= value <= th.VAR_RATIO_HI,
        value=value,
        threshold=th.VAR_RATIO_HI,
        source="report",
        detail=f"furthest from 1: {worst.covariate}"
        + (f"; {unknown} of {len(rows)} covariates not computable (not tested)" if unknown else ""),
    )


def equipoise_check(strata: tuple[StratumRow, ...]) -> Check:
    r"""Share of the people (both arms) whose preference score lies in [0.3, 0.7].

    The preference score F (Walker et al. 2013) removes the treated share P from the propensity
    score: logit F = s − logit P, s the logit score the strata are cut on. The released strata
    give counts per arm between logit-score edges, so the share is known up to the strata that
    straddle the window: ``value`` interpolates them uniformly on the logit scale, and the gate
    reads the *lower* bound (strata wholly inside), as the balance gate reads only what it can
    see. Under DP the counts carry noise (negative noisy counts count as 0).
    """
    rule = (
        f"share with preference score in [{th.EQUIPOISE_LO:g}, {th.EQUIPOISE_HI:g}] "
        f"≥ {th.EQUIPOISE_MIN:g} (lower bound from the strata edges)"
    )
    treated = sum(max(s.n_treated, 0) for s in strata)
    total = treated + sum(max(s.n_control, 0) for s in strata)
    if treated == 0 or treated == total:
        return Check(
            name="equipoise",
            label="Equipoise (preference score)",
            rule=rule,
            kind="info",
            passed=None,
            value=None,
            threshold=None,
            source="report",
            detail="not computable: an arm is empty in the released strata",
        )
    shift = math.log(treated / (total - treated))  # logit of the treated share
    lo_w = math.log(th.EQUIPOISE_LO / (1 - th.EQUIPOISE_LO)) + shift
    hi_w = math.log(th.EQUIPOISE_HI / (1 - th.EQUIPOISE_HI)) + shift
    inside = touching = interpolated = 0.0
    for s in strata:
        people = max(s.n_treated, 0) + max(s.n_control, 0)
        lo = -math.inf if s.lo is None else s.lo
        hi = math.inf if s.hi is None else s.hi
        overlap = max(0.0, min(hi, hi_w) - max(lo, lo_w))
        if lo >= lo_w and hi <= hi_w:
            inside += people
            interpolated += people
        elif overlap > 0 or (lo < hi_w and hi > lo_w):
            touching += people
            if math.isfinite(hi - lo) and hi > lo:
                interpolated += people * overlap / (hi - lo)
    lower, upper, share = inside / total, (inside + touching) / total, interpolated / total
    return Check(
        name="equipoise",
        label="Equipoise (preference score)",
        rule=rule,
        kind="gate",
        passed=lower >= th.EQUIPOISE_MIN,
        value=share,
        threshold=th.EQUIPOISE_MIN,
        source="report",
        detail=f"{share:.1%} of {total:,} people in equipoise (between {lower:.1%} and {upper:.1%} "
        "from the strata edges); the preference score removes the treated share from the propensity score",
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
            kind="gate",
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
            kind="gate",
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
        kind="gate",
        passed=share >= th.MIN_SUPPORT,
        value=share,
        threshold=th.MIN_SUPPORT,
        source="report",
        detail=f"{treated_dropped} of {total} treated outside common support",
    )


def convergence_check(
    *, converged: bool, iterations: int, private: bool = False, tol: float | None = None
) -> Check:
    """Exact studies: a gate, the Newton step fell below the spec's tolerance (a fit that did
    not converge is not the maximum-likelihood score the design assumes). Under DP: information,
    the plan's fixed number of noisy rounds (the log-likelihood is not released, so convergence
    cannot be tested — shared.dp.plan)."""
    if private:
        return Check(
            name="propensity_converged",
            label="Propensity model fit",
            rule="DP: the plan's fixed number of noisy Newton rounds (no threshold: not tested)",
            kind="info",
            passed=None,
            value=None,
            threshold=None,
            source="report",
            detail=f"{iterations} noisy rounds ran (convergence is not tested under DP)",
        )
    step = f" (largest Newton step < {tol:g})" if tol is not None else ""
    return Check(
        name="propensity_converged",
        label="Propensity model fit",
        rule=f"Newton iterations converged{step}",
        kind="gate",
        passed=converged,
        value=None,  # the iterations are not what the tolerance bounds (in the detail)
        threshold=tol,
        source="report",
        detail=f"{iterations} iterations" + ("" if converged else ": did not converge"),
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
    if (
        mine is None
        or mine.kind != "gate"
        or mine.passed != d.passed
        or (d.value is None) != (mine.value is None)
    ):
        return False
    if d.value is None or mine.value is None:  # both None (the line above)
        return True
    return math.isclose(d.value, mine.value, rel_tol=1e-9, abs_tol=1e-12)


# study diagnostics whose name does not read well as a label
STUDY_LABELS = {
    "dp_fit_resolution": "Propensity fit noise share, predicted (DP stop rule)",
    "dp_fit_bias": "Propensity fit noise: bias bound held by the CI (DP)",
    "dp_strata_resolution": "Propensity strata the count noise allows (DP stop rule)",
    "dp_weight_bound": "Largest control weight after merging strata (DP)",
    # the study run's own reading of a gate the report also checks (shown when they differ:
    # under DP they read different noisy releases of the same counts)
    "size_gate_treated": "Size gate: treated (the study run's counts)",
    "size_gate_control_ratio": "Size gate: control pool (the study run's counts)",
}


# study diagnostics with no threshold: shown as information, never counted as a pass
STUDY_INFO = frozenset({"score_overlap"})


def study_check(d: Diagnostic) -> Check:
    """A diagnostic the study run reported, carried over as stated: a gate unless it is one
    of :data:`STUDY_INFO` or passed without a threshold (then its pass/fail is not shown, only
    its value: a check without a threshold is information, never a pass). One that failed
    without a threshold (the fit-noise bias bound when the CIs are unbounded) stays a failed
    gate: its failure is a stated condition, not a reading."""
    rule = d.message or d.name
    label = STUDY_LABELS.get(d.name, d.name.replace("_", " ").capitalize())
    info = d.name in STUDY_INFO or (d.threshold is None and d.passed)
    return Check(
        name=d.name,
        label=label,
        rule=rule,
        kind="info" if info else "gate",
        passed=None if info else d.passed,
        value=d.value,
        threshold=d.threshold,
        source="study",
        detail=d.message,
    )
