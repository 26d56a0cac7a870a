"""The study result: what the coordinator writes after a study and the evidence report reads.

Aggregates only: counts per site, stratum and arm, estimates and diagnostics. No row, pseudonym
or per-person score ever appears here. The file is written and read by :mod:`coordinator.files`
(``shared`` does no I/O).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

RESULT_SCHEMA_VERSION = "rehealth.study-result/1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteSummary(_Model):
    name: str
    status: Literal["ok", "failed", "excluded"] = "ok"
    n: int | None = None  # released counts (noisy under DP)
    n_treated: int | None = None
    n_control: int | None = None
    error: str | None = None


class OutcomeEstimate(_Model):
    name: str
    kind: Literal["continuous", "binary"]
    att: float
    se: float
    ci: tuple[float, float]
    # how ``ci`` was formed: "wald" estimate ± 1.96 SE (DP studies, doubly robust estimates,
    # an exact study whose sites withheld Σy³/Σy⁴); "skew_t" Hall's skewness-corrected interval
    # with a kurtosis-aware t reference (shared/psm/skew.py, exact stratified studies)
    ci_method: Literal["wald", "skew_t"] = "wald"
    n_treated: int  # treated in common support
    n_control: int  # controls in common support
    n_treated_dropped: int  # treated in strata without controls (attrition)
    treated_mean: float
    control_mean: float  # counterfactual mean: controls reweighted to the treated
    # SD of the outcome among the controls reweighted to the treated (original units), from the
    # released per-cell Σy, Σy² (noisy under DP); the scale of the E-value's standardised
    # difference. None in results written before it was computed.
    control_sd: float | None = None
    se_sampling: float
    se_privacy: float = 0.0
    privacy_share_of_ci: float = 0.0  # share of the CI width due to DP noise, 0..1
    risk_difference: float | None = None  # binary outcomes
    relative_risk: float | None = None
    relative_risk_ci: tuple[float, float] | None = None
    # 1:1 nearest-neighbour caliper matching reference, when computed on pooled rows
    reference: dict[str, float] | None = None
    # DP studies only (shared.dp.limit): the 95 % CI width one Gaussian release of this ATT
    # would have at the study's (ε, δ) ("the physical limit"), and the CI width divided by it
    # and by the non-private width 2·1.96·se_sampling (estimated: se_sampling is from the
    # noisy table). None for exact studies.
    limit_width: float | None = None
    ratio_limit: float | None = None
    ratio_exact_est: float | None = None
    # a doubly robust study (estimator "dr"): the stratified ATT on the same strata, beside the
    # DR ATT the outcome reports (None in a stratified study)
    att_stratified: float | None = None


class BalanceRow(_Model):
    """SMDs and variance ratios; None where DP noise leaves a variance unresolved.

    ``smd_after_noise_sd`` is the SD the privacy noise gives ``smd_after`` (0 in an exact study,
    None where the SMD is unresolved): the balance gate reads |SMD| against it
    (:func:`shared.psm.balance.balance_verdict`) instead of treating a noisy SMD as exact.
    """

    covariate: str
    smd_before: float | None
    smd_after: float | None
    var_ratio_before: float | None = None
    var_ratio_after: float | None = None
    smd_after_noise_sd: float | None = 0.0


class StratumCounts(_Model):
    lo: float  # logit-score edges
    hi: float
    n_treated: int
    n_control: int
    used: bool  # both arms present (common support)


class Selection(_Model):
    """How a selecting study (``[terms] select``) chose its propensity basis: Imbens & Rubin's
    stepwise rule (:mod:`shared.psm.selection`) over ``candidates`` public terms, from
    covariates and treatment only; ``terms`` in order of entry (named as in the balance table),
    each with the score statistic that let it in (above ``threshold``)."""

    rule: Literal["stepwise"] = "stepwise"
    threshold: float
    candidates: int
    terms: tuple[str, ...]
    statistics: tuple[float, ...]
    rounds: int


class Propensity(_Model):
    beta: tuple[float, ...]
    iterations: int
    converged: bool
    loglik: float | None = None
    #: a selecting study: how its basis was chosen (None: the spec declared it)
    selection: Selection | None = None


class Diagnostic(_Model):
    name: str
    passed: bool
    value: float | None = None
    threshold: float | None = None
    message: str = ""


class RoundLog(_Model):
    name: str
    seconds: float
    nodes: tuple[str, ...] = ()


class PrivacySpent(_Model):
    enabled: bool
    epsilon: float | None = None  # the study's budget
    delta: float | None = None
    accountant: str | None = None
    per_site: dict[str, float] = Field(default_factory=dict)  # ε this study's charges cost at each node
    # each node's ledger total after the study: every study, group view and training run on its
    # data (composition is sub-additive, so it is not the sum of the studies' ε)
    ledger_total: dict[str, float] = Field(default_factory=dict)
    # the budget split of the rounds after describe when the study re-split it from describe's
    # public counts (no longer done, issue #19); None: the spec's split throughout
    resplit: dict[str, float] | None = None
    # K when every release after describe was a SecAgg+ sum over K nodes (each adding σ/√K)
    secure_nodes: int | None = None
    # the large-loss cap round (privacy.large_loss_cap, shared/dp/capround.py result_caps): its
    # level and share of ρ, per outcome the signed and released caps, the noisy clipped share
    # and the bound on |uncapped − capped| estimate; None: no cap round
    large_loss_caps: dict | None = None
    # the share of psm_stats' budget the negative controls' own releases took, within ε
    # (shared/dp/plan.py); None: no controls, or they rode in the outcomes' releases
    negative_control_share: float | None = None


class StudyResult(_Model):
    schema_version: str = RESULT_SCHEMA_VERSION
    study: str
    spec_hash: str
    spec: dict
    software_version: str
    started_at: str  # ISO 8601 UTC
    finished_at: str
    sites: tuple[SiteSummary, ...]
    outcomes: tuple[OutcomeEstimate, ...]
    #: the ATT on each negative control the spec declares (true effect zero), from the same
    #: table and releases as ``outcomes``; the report fits the systematic error from them
    negative_controls: tuple[OutcomeEstimate, ...] = ()
    balance: tuple[BalanceRow, ...]
    strata_method: str
    strata: tuple[StratumCounts, ...]
    propensity: Propensity
    diagnostics: tuple[Diagnostic, ...] = ()
    warnings: tuple[str, ...] = ()
    privacy: PrivacySpent = PrivacySpent(enabled=False)
    rounds: tuple[RoundLog, ...] = ()
    timings: dict[str, float] = Field(default_factory=dict)  # startup, rounds, compute, total (s)
    truth: dict[str, float] | None = None  # simulated true ATT per outcome (synthetic studies)
    #: the spec's estimator: "stratified" or "dr" (shared/psm/dr.py); results written before the
    #: choice existed were stratified
    estimator: Literal["stratified", "dr"] = "stratified"

    def outcome(self, name: str) -> OutcomeEstimate:
        for o in self.outcomes:
            if o.name == name:
                return o
        raise KeyError(name)
