"""Build the evidence report document from a study result.

The report restates the result's aggregates in the report schema, adds the checks against the
stated thresholds, the value figures and the audience summaries, and refuses what it cannot
state honestly: a spec that does not match its hash, or a non-finite number anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone

from coordinator.report import checks
from coordinator.report.document import (
    Attrition,
    Check,
    Estimand,
    EvidenceReport,
    LargeLossCap,
    OutcomeRow,
    PrivacySection,
    SiteBudget,
    Software,
    StratumRow,
    StudySection,
    Summaries,
    per_site_figures,
)
from coordinator.report.errors import ReportError
from coordinator.report.method import method_section
from coordinator.report.narrative import write_summaries
from coordinator.report.negative_controls import ease_check, mdrr_checks, negative_control_section
from coordinator.report.registration import (
    Registration,
    registration_check,
    registration_section,
    unregistered_check,
)
from coordinator.report.sensitivity import sensitivity_section
from coordinator.report.value import value_section
from shared import __version__
from shared.canonical import canonical_bytes
from shared.result import BalanceRow, SiteSummary, StudyResult

DEFAULT_ISSUER = "ReHealth Core coordinator"
ESTIMAND_TEXT = (
    "Average treatment effect on the treated (ATT): the mean outcome of the treated minus the "
    "mean they would have had without the intervention, estimated by stratifying on the "
    "propensity score and reweighting controls to the treated within strata."
)


def build_report(
    result: StudyResult,
    *,
    issuer: str = DEFAULT_ISSUER,
    issued_at: str | None = None,
    registration: Registration | None = None,
) -> EvidenceReport:
    """The evidence report of ``result``.

    Args:
        result: the study's aggregates (no person-level data).
        issuer: who issues (and signs) the report.
        issued_at: ISO 8601 UTC time of issue; now when omitted (pass it for reproducible bytes).
        registration: the study's pre-registration, already verified under the signer's key
            (:func:`coordinator.report.registration.load_verified`). The ``pre_registration``
            gate passes only with one that names this spec and precedes the start; without one
            it fails, and the report is not billable.

    Returns:
        The report document, ready to serialise canonically and sign.

    Raises:
        ReportError: the spec does not hash to ``result.spec_hash``, the result has no outcome
            or balance row, or a number is NaN/infinite (the message names its path).
    """
    if not result.outcomes or not result.balance:
        raise ReportError("study result has no outcome estimate or no balance table")
    _check_spec_hash(result)
    truth = result.truth or {}
    sites = result.sites
    # the result's own estimate objects, with what only the report adds beside them
    outcomes = tuple(OutcomeRow(estimate=o, truth=truth.get(o.name)) for o in result.outcomes)
    balance = result.balance
    strata = tuple(
        StratumRow(
            lo=_finite_or_none(s.lo),
            hi=_finite_or_none(s.hi),
            n_treated=s.n_treated,
            n_control=s.n_control,
            used=s.used,
        )
        for s in result.strata
    )
    # counts per site feed the pooled size gates; with [report] per_site = false they are
    # then blanked, so the report names the participants but shows no per-company figure
    released_sites = sites
    if not per_site_figures(result.spec):
        sites = tuple(s.model_copy(update={"n": None, "n_treated": None, "n_control": None}) for s in sites)
    first = result.outcomes[0]
    attrition = Attrition(
        treated_in_support=first.n_treated,
        treated_dropped=first.n_treated_dropped,
        treated_dropped_share=_share(first.n_treated_dropped, first.n_treated + first.n_treated_dropped),
        control_in_support=first.n_control,
        strata_total=len(strata),
        strata_used=sum(s.used for s in strata),
    )
    controls = negative_control_section(result)
    all_checks = (
        _checks(result, released_sites, balance, strata, attrition)
        + ((ease_check(controls),) if controls is not None else ())
        + mdrr_checks(result.outcomes)
        + ((unregistered_check(),) if registration is None else (registration_check(registration, result),))
    )
    failed_gates = tuple(c.name for c in all_checks if c.failed)
    doc = EvidenceReport(
        issuer=issuer,
        issued_at=issued_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        software=Software(
            report_generator=f"rehealth-core {__version__}", study_software=result.software_version
        ),
        study=_study_section(result),
        estimand=Estimand(
            name="ATT",
            description=ESTIMAND_TEXT,
            strata_method=result.strata_method,
            n_strata=len(strata),
            n_strata_used=attrition.strata_used,
            propensity_iterations=result.propensity.iterations,
            propensity_converged=result.propensity.converged,
            propensity_beta=result.propensity.beta,
        ),
        sites=sites,
        outcomes=outcomes,
        balance=balance,
        strata=strata,
        checks=all_checks,
        billable=not failed_gates,
        failed_gates=failed_gates,
        attrition=attrition,
        privacy=_privacy(result, outcomes),
        value=value_section(
            outcomes, cost_per_person=_cost_per_person(result.spec), failed_gates=failed_gates
        ),
        sensitivity=sensitivity_section(result.outcomes, private=result.privacy.enabled),
        method=method_section(result, outcomes, strata, attrition),
        summaries=Summaries(insurer="", hr="", regulator=""),
        warnings=result.warnings,
        synthetic=result.truth is not None,
        registration=None if registration is None else registration_section(registration, result),
        negative_controls=controls,
    )
    doc = doc.model_copy(update={"summaries": write_summaries(doc)})
    canonical_bytes(doc.model_dump(mode="json"))  # refuse NaN/inf now, naming the field
    return doc


def _check_spec_hash(result: StudyResult) -> None:
    blob = json.dumps(result.spec, sort_keys=True, separators=(",", ":")).encode()
    actual = hashlib.sha256(blob).hexdigest()
    if actual != result.spec_hash:
        raise ReportError(
            f"study result: spec_hash {result.spec_hash[:16]}… does not match the spec it carries "
            f"(SHA-256 of its canonical JSON is {actual[:16]}…)"
        )


def _study_section(result: StudyResult) -> StudySection:
    info = result.spec.get("study", {})
    return StudySection(
        name=result.study,
        description=str(info.get("description", "")),
        spec_hash=result.spec_hash,
        spec=result.spec,
        result_schema=result.schema_version,
        started_at=result.started_at,
        finished_at=result.finished_at,
    )


def _checks(
    result: StudyResult,
    sites: tuple[SiteSummary, ...],
    balance: tuple[BalanceRow, ...],
    strata: tuple[StratumRow, ...],
    attrition: Attrition,
) -> tuple[Check, ...]:
    """The report's own checks, then the study's diagnostics that do not merely restate them."""
    treated, control, source = checks.arm_totals(sites, strata)
    own = [
        checks.balance_check(balance),
        checks.variance_ratio_check(balance),
        *checks.size_checks(treated, control, source),
        checks.overlap_check(
            treated_in_support=attrition.treated_in_support, treated_dropped=attrition.treated_dropped
        ),
        checks.equipoise_check(strata),
        checks.convergence_check(
            converged=result.propensity.converged,
            iterations=result.propensity.iterations,
            private=result.privacy.enabled,
            tol=_newton_tol(result.spec),
        ),
    ]
    shown = list(own)
    by_name = {c.name: c for c in shown}
    return tuple(shown) + tuple(
        checks.study_check(d) for d in result.diagnostics if not checks.is_restatement(d, by_name)
    )


def _privacy(result: StudyResult, outcomes: tuple[OutcomeRow, ...]) -> PrivacySection:
    p = result.privacy
    return PrivacySection(
        enabled=p.enabled,
        epsilon=p.epsilon,
        delta=p.delta,
        accountant=p.accountant,
        per_site=tuple(
            SiteBudget(site=k, epsilon=v, ledger_total=p.ledger_total.get(k))
            for k, v in sorted(p.per_site.items())
        ),
        max_privacy_share_of_ci=max(o.estimate.privacy_share_of_ci for o in outcomes),
        split=(p.resplit or result.spec.get("privacy", {}).get("split")) if p.enabled else None,
        resplit=p.resplit is not None,
        secure_nodes=p.secure_nodes,
        cap_share=None if p.large_loss_caps is None else p.large_loss_caps.get("share"),
        large_loss_caps=tuple(
            LargeLossCap(
                name=r["name"],
                signed_cap=r["signed_cap"],
                cap=r["cap"],
                clipped_share=r.get("clipped_share"),
                shift_bound=r.get("shift_bound"),
            )
            for r in (p.large_loss_caps or {}).get("outcomes", ())
            if r["cap"] < r["signed_cap"]
        ),
    )


def _newton_tol(spec: dict) -> float | None:
    tol = spec.get("federation", {}).get("tol")
    return float(tol) if isinstance(tol, (int, float)) else None


def _cost_per_person(spec: dict) -> float:
    try:
        return float(spec.get("treatment", {}).get("cost_per_person", 0.0))
    except (TypeError, ValueError):
        raise ReportError("study spec: treatment.cost_per_person is not a number") from None


def _finite_or_none(x: float) -> float | None:
    """A stratum edge; ±inf (unbounded outer strata) becomes ``None``, NaN is refused."""
    if math.isnan(x):
        raise ReportError("study result: a stratum edge is NaN")
    return x if math.isfinite(x) else None


def _share(part: int, total: int) -> float:
    return part / total if total else 0.0
