"""The evidence report document, schema ``rehealth.evidence-report/3``.

What an enterprise submits to its insurer, the insurer shows its reinsurer and regulator, and
HR uses for management and ESG reporting. Aggregates only: site counts, estimates, balance,
diagnostics and the privacy spent; no row, pseudonym or per-person score.

Every model is frozen and forbids extra fields, so a parsed report is exactly a document of
this version or an error. Scores' outer stratum edges are unbounded: ``None`` stands for ±∞
(JSON has no infinity). Changing a field's meaning needs a new ``schema_version``.

What the study estimated is carried as the study result's own types (:mod:`shared.result`, the
objects the estimator builds): an outcome row *holds* its :class:`~shared.result.OutcomeEstimate`
next to what only the report adds (the simulation truth), balance rows and sites are the
result's :class:`~shared.result.BalanceRow` and :class:`~shared.result.SiteSummary`. A field
added to the estimate therefore reaches the signed report without a copy to keep in step.

Version 2 (was 1): ``outcomes[i]`` is ``{"estimate": OutcomeEstimate, "truth"}`` (the estimate's
``ci`` a pair instead of ``ci_low``/``ci_high``); balance rows no longer carry ``balanced`` (it is
``|smd_after|`` below the ``balance_smd`` check's threshold, stated in ``checks``).

Version 3 (was 2): every check has a ``kind``: a *gate* (a threshold; ``passed`` true or false)
or *info* (no threshold; ``passed`` null, shown as information and never counted as a pass).
``billable`` is false and ``failed_gates`` names them when any gate failed; the document refuses
to parse if either disagrees with its checks. New sections: ``sensitivity`` (E-values per
outcome, :mod:`coordinator.report.sensitivity`) and ``method`` (design, model, variance,
privacy, assumptions, limitations, :mod:`coordinator.report.method`); the value section says
whether a saving is claimed (only when billable and the claims CI excludes zero).
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from shared.psm.balance import balance_verdict
from shared.result import BalanceRow, OutcomeEstimate, SiteSummary

REPORT_SCHEMA_VERSION: Final = "rehealth.evidence-report/3"

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "Attrition",
    "BalanceRow",
    "Check",
    "Estimand",
    "EValue",
    "EvidenceReport",
    "MethodSection",
    "NegativeControlSection",
    "OutcomeRow",
    "PrivacySection",
    "SiteBudget",
    "SensitivitySection",
    "SiteSummary",
    "Software",
    "StratumRow",
    "StudySection",
    "Summaries",
    "ValueFigure",
    "ValueSection",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Software(_Model):
    report_generator: str  # "rehealth-core 0.1.0"
    study_software: str  # version the study ran with


class StudySection(_Model):
    name: str
    description: str
    spec_hash: str  # SHA-256 of the spec's canonical JSON (StudySpec.spec_hash)
    spec: dict
    result_schema: str
    started_at: str  # ISO 8601 UTC
    finished_at: str


class Estimand(_Model):
    name: Literal["ATT"]
    description: str
    strata_method: str
    n_strata: int
    n_strata_used: int
    propensity_iterations: int
    propensity_converged: bool
    propensity_beta: tuple[float, ...]


class OutcomeRow(_Model):
    """One outcome: the study's estimate as the estimator built it, and the report's additions."""

    estimate: OutcomeEstimate
    truth: float | None  # simulation ground truth (synthetic studies only)


class StratumRow(_Model):
    lo: float | None  # logit-score edge; None = -inf
    hi: float | None  # None = +inf
    n_treated: int
    n_control: int
    used: bool


class Check(_Model):
    """A diagnostic: a *gate* passes or fails against a stated threshold; an *info* check has no
    threshold and only informs (``passed`` is None: it is never counted as a pass)."""

    name: str
    label: str
    rule: str  # the threshold in words, e.g. "max |SMD| after weighting < 0.1"
    kind: Literal["gate", "info"]
    passed: bool | None
    value: float | None
    threshold: float | None
    source: Literal["report", "study"]  # computed by the report, or reported by the study run
    detail: str

    @model_validator(mode="after")
    def _kind_decides_passed(self) -> "Check":
        if (self.kind == "gate") != (self.passed is not None):
            raise ValueError(
                f"check {self.name}: a gate passes or fails (passed true/false), an info check "
                f"has passed null (kind {self.kind!r}, passed {self.passed!r})"
            )
        return self

    @property
    def failed(self) -> bool:
        return self.kind == "gate" and self.passed is False


class Attrition(_Model):
    treated_in_support: int
    treated_dropped: int
    treated_dropped_share: float
    control_in_support: int
    strata_total: int
    strata_used: int


def per_site_figures(spec: dict) -> bool:
    """Whether the report shows per-site counts: the spec's ``[report] per_site`` (default
    true; false in a pooled small-firm study, whose report names participants only)."""
    return bool(spec.get("report", {}).get("per_site", True))


class SiteBudget(_Model):
    """``epsilon``: what this study's charges cost at the site; ``ledger_total``: the site's
    ledger after the study, over everything it ever released (absent in older results)."""

    site: str
    epsilon: float
    ledger_total: float | None = None


class LargeLossCap(_Model):
    """One outcome's cap from the study's large-loss cap round: the estimand is the ATT on the
    outcome capped at ``cap`` (the spec's ``signed_cap`` above it is the large-loss layer)."""

    name: str
    signed_cap: float
    cap: float
    clipped_share: float | None = None  # noisy share of rows at or above the cap
    shift_bound: float | None = None  # bound on |uncapped − capped| estimate, outcome units


class PrivacySection(_Model):
    enabled: bool
    epsilon: float | None
    delta: float | None
    accountant: str | None
    per_site: tuple[SiteBudget, ...]
    max_privacy_share_of_ci: float
    # shares of the study's ρ behind the estimate (re-split after describe when ``resplit``)
    split: dict[str, float] | None = None
    resplit: bool = False
    secure_nodes: int | None = None  # releases after describe summed under SecAgg+ over K nodes
    # the large-loss cap round: its share of ρ and its caps (outcomes whose cap it lowered)
    cap_share: float | None = None
    large_loss_caps: tuple[LargeLossCap, ...] = ()


class ValueFigure(_Model):
    name: str
    label: str
    unit: str
    estimate: float
    ci_low: float
    ci_high: float
    formula: str  # how it follows from the estimates, with the numbers used
    truth: float | None  # the same figure at the simulated true ATT (synthetic studies)


class ValueSection(_Model):
    n_treated: int  # treated in common support: the people the ATT is about
    cost_per_person: float  # intervention cost per treated person, from the study spec
    intervention_cost: float
    claims_saved: ValueFigure | None
    net_benefit: ValueFigure | None
    roi: ValueFigure | None
    events_averted: ValueFigure | None
    absence_days_averted: ValueFigure | None
    # a saving is claimed only when the report is billable and the claims saved CI excludes 0
    saving_claimed: bool = False
    claim_note: str = ""  # why a saving is or is not claimed, in one sentence


class NegativeControlRow(_Model):
    """One negative control's estimate (true effect 0), as a difference and as a log ratio."""

    name: str
    kind: Literal["continuous", "binary"]
    att: float
    ci: tuple[float, float]
    log_ratio: float | None  # None: an arm's mean is not positive (left out of the null)
    log_ratio_ci: tuple[float, float] | None


class CalibratedRow(_Model):
    """An outcome's p and CI, uncalibrated and calibrated against the negative controls' null
    (calibrated fields None where no null was fitted or the outcome has no log ratio)."""

    outcome: str
    p: float | None  # two-sided, against no effect, from the ATT and its SE
    ci: tuple[float, float]
    log_ratio: float | None = None
    log_ratio_se: float | None = None
    calibrated_p: float | None = None
    calibrated_log_ratio_ci: tuple[float, float] | None = None
    calibrated_att: float | None = None  # the outcome's units
    calibrated_ci: tuple[float, float] | None = None


class NegativeControlSection(_Model):
    """The negative controls, the systematic-error null fitted from them, EASE, and the
    calibrated outcomes (:mod:`coordinator.report.negative_controls`)."""

    scale: str
    n: int
    n_used: int
    excluded: tuple[str, ...]
    null_mean: float | None
    null_sd: float | None
    ease: float | None
    ease_threshold: float
    controls: tuple[NegativeControlRow, ...]
    calibrated: tuple[CalibratedRow, ...]
    assumption: str


class EValue(_Model):
    """How strong an unmeasured confounder would have to be to explain an estimate away
    (VanderWeele & Ding 2017), see :mod:`coordinator.report.sensitivity`."""

    outcome: str
    scale: Literal["risk_ratio", "smd"]  # RR directly (binary) or RR ≈ exp(0.91·d) (continuous)
    rr: float | None  # the estimate on the risk-ratio scale (None: not computable)
    rr_ci: tuple[float, float] | None
    e_value: float | None  # for the estimate
    e_value_ci: float | None  # for the CI bound nearest the null (1 when the CI holds the null)
    control_sd: float | None  # continuous: the SD d divides by (controls reweighted to the treated)
    statement: str  # the plain-language line
    note: str = ""  # caveats (approximation, DP noise in the SD, why not computable)


class SensitivitySection(_Model):
    method: str
    evalues: tuple[EValue, ...]


class MethodSection(_Model):
    """What was done and on what assumptions, in the words the report states
    (:mod:`coordinator.report.method`); the spec itself is in ``study.spec``."""

    design: str
    propensity_model: str
    strata: str
    outcome_model: str
    variance: str
    privacy: str  # what was released, with which noise, at what cost
    per_site: str  # per-site estimates, or why none are given
    multiplicity: str
    assumptions: tuple[str, ...]
    limitations: tuple[str, ...]
    #: the negative controls: how they were estimated, released and used ("" when none)
    negative_controls: str = ""


class Summaries(_Model):
    """Plain-language summaries per audience, generated from the numbers in this document."""

    insurer: str  # insurer / reinsurer
    hr: str  # enterprise HR, management and ESG reporting
    regulator: str


class RegistrationSection(_Model):
    """The study's pre-registration as the report's signer verified it
    (:mod:`coordinator.report.registration`): the signed record itself, so any reader can
    re-verify it with the report's key, and what it shows about this study."""

    record: dict  # the signed registration, verbatim
    spec_matches: bool  # it names the spec hash this study ran
    preceded_start: bool  # registered strictly before the study started (before any outcome was read)


class EvidenceReport(_Model):
    schema_version: Literal["rehealth.evidence-report/3"] = REPORT_SCHEMA_VERSION
    issuer: str
    issued_at: str  # ISO 8601 UTC
    software: Software
    study: StudySection
    estimand: Estimand
    sites: tuple[SiteSummary, ...]
    outcomes: tuple[OutcomeRow, ...]
    balance: tuple[BalanceRow, ...]
    strata: tuple[StratumRow, ...]
    checks: tuple[Check, ...]
    billable: bool  # no gate failed: the estimate may be used for billing
    failed_gates: tuple[str, ...]  # names of the failed gates (empty when billable)
    attrition: Attrition
    privacy: PrivacySection
    value: ValueSection
    sensitivity: SensitivitySection
    method: MethodSection
    summaries: Summaries
    warnings: tuple[str, ...]
    synthetic: bool  # ground truth present: a simulated study, not real-world evidence
    registration: RegistrationSection | None = None  # None: the study was not pre-registered
    #: None: the spec declared no negative controls
    negative_controls: NegativeControlSection | None = None

    @model_validator(mode="after")
    def _billable_follows_the_gates(self) -> "EvidenceReport":
        failed = tuple(c.name for c in self.checks if c.failed)
        if self.failed_gates != failed or self.billable != (not failed):
            raise ValueError(
                f"billable={self.billable} and failed_gates={list(self.failed_gates)} disagree "
                f"with the checks (failed gates: {list(failed)})"
            )
        return self

    @property
    def gates(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.kind == "gate")

    @property
    def all_gates_passed(self) -> bool:
        return self.billable

    def outcome(self, name: str) -> OutcomeRow:
        for o in self.outcomes:
            if o.estimate.name == name:
                return o
        raise KeyError(name)

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def smd_threshold(self) -> float:
        """The balance threshold this report states (its ``balance_smd`` check), which is what
        the report is read against, whatever today's :data:`shared.thresholds.SMD_MAX`."""
        threshold = self.check("balance_smd").threshold
        if threshold is None:
            raise ValueError("the report's balance_smd check states no threshold")
        return threshold

    def balanced(self, row: BalanceRow) -> bool | None:
        """``row`` read against the threshold this report's ``balance_smd`` check states, with
        the noise margin of :func:`shared.psm.balance.balance_verdict` over this report's rows:
        True balanced, False imbalanced, None when the privacy noise leaves it open."""
        verdict = balance_verdict(self.balance, self.smd_threshold)
        state = verdict.states[self.balance.index(row)]
        return {"balanced": True, "imbalanced": False, "not_shown": None}[state]
