"""The study spec: what a study estimates, over which sites, under which privacy budget.

Parsed from TOML text (``StudySpec.from_toml_text``) or a dict (``StudySpec.from_dict``); the
coordinator reads the file (:func:`coordinator.files.load_spec`), because ``shared`` does no
I/O. Invalid specs raise :class:`SpecError` whose message names the field (``covariates[2].hi``)
and what is wrong. Relative site paths resolve against the spec file's folder, which the reader
passes as ``base``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from shared.errors import SpecError
from shared.features import FEATURES, Feature
from shared.terms import DesignTerms, check_terms, derived_covariates


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StudyInfo(_Model):
    name: str = Field(min_length=1)
    seed: int = 0
    description: str = ""


class Treatment(_Model):
    column: str = "treated"
    intervention: str | None = None  # intervention code, when derived from a trajectory log
    cost_per_person: float = Field(default=0.0, ge=0)  # for ROI in the evidence report


class Covariate(_Model):
    name: str = Field(min_length=1)
    lo: float
    hi: float
    kind: Literal["continuous", "binary"] = "continuous"

    @model_validator(mode="after")
    def _hi_above_lo(self) -> "Covariate":
        if not self.hi > self.lo:
            raise ValueError(f"hi ({self.hi:g}) must exceed lo ({self.lo:g})")
        return self

    def as_feature(self) -> Feature:
        return Feature(self.name, self.lo, self.hi, self.kind)


class Outcome(_Model):
    name: str = Field(min_length=1)
    cap: float
    lo: float = 0.0
    kind: Literal["continuous", "binary"] = "continuous"

    @model_validator(mode="after")
    def _cap_above_lo(self) -> "Outcome":
        if not self.cap > self.lo:
            raise ValueError(f"cap ({self.cap:g}) must exceed lo ({self.lo:g})")
        if self.kind == "binary" and (self.lo, self.cap) != (0, 1):
            raise ValueError("binary outcomes have lo = 0 and cap = 1")
        return self


#: The default study's outcomes with their public caps (claims are rarely near the cap); also
#: a node's default policy (:mod:`node.policy`).
DEFAULT_OUTCOMES: tuple[Outcome, ...] = (
    Outcome(name="claims_cost", cap=100_000.0),
    Outcome(name="cv_event", cap=1.0, kind="binary"),
    Outcome(name="absence_days", cap=365.0),
)


class BudgetSplit(_Model):
    """Shares of the study's privacy loss (zCDP ρ) spent on each round; they must sum to 1.

    The default gives the propensity fit as much as the PSM table: its noise is not in the CI
    but biases the ATT towards the unadjusted difference (a noisy score adjusts less), so under
    DP it is worth more than its share of the CI width. With 10k treated over five nodes at
    ε = 0.5, ps_fit 0.25 / 0.35 / 0.45 gave CV-event coverage 89.5 / 89.0 / 93.0 % (200 seeds,
    bench/bench_privacy.py), with CIs 12 % / 3 % wider at 0.45 than at 0.25 / 0.35.
    """

    describe: float = Field(default=0.05, ge=0)
    ps_fit: float = Field(default=0.45, ge=0)
    psm_stats: float = Field(default=0.45, ge=0)
    balance: float = Field(default=0.05, ge=0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> "BudgetSplit":
        total = self.describe + self.ps_fit + self.psm_stats + self.balance
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"shares must sum to 1, got {total:g}")
        return self


class Privacy(_Model):
    """The study's DP budget, charged at every node (each node's ledger caps its own total).

    On by default: nodes answer only DP queries unless their operator allows exact answers, so
    an exact study (``enabled = false``) is a deliberate request for a single data owner's
    federation."""

    enabled: bool = True
    epsilon: float = Field(default=1.0, gt=0)
    delta: float = Field(default=1e-6, gt=0, lt=1)
    split: BudgetSplit = BudgetSplit()
    accountant: Literal["gaussian", "rdp", "prv"] = "gaussian"
    ps_rounds: int = Field(default=4, ge=1, le=20)  # fixed Newton rounds under DP
    #: what a study does when describe's counts predict its propensity fit's noise would take at
    #: least half the score's variance (the ``dp_fit_resolution`` check, a rule fixed in advance:
    #: there the fit's bias bound equals the whole adjustment, shared.dp.stoprule): ``stop`` ends
    #: the study there, having spent only describe's share of the budget, rather than spend the
    #: rest on void evidence; ``warn`` goes on and flags it
    unresolved_fit: Literal["warn", "stop"] = "stop"
    #: SecAgg+ (Flower's SecAggPlusWorkflow) for every release after describe: each of the K
    #: nodes adds σ/√K and the coordinator sees only the masked sum, which carries σ — the
    #: noise of a central release, √K less than K nodes each adding σ. Trust model: an
    #: honest-but-curious coordinator and non-colluding nodes (a node that revealed its own
    #: noise would leave the others' sum with less); every node must answer every round
    secure_aggregation: bool = False
    #: open the study with a large-loss cap round (shared.dp.capquantile): a noisy histogram
    #: (a fixed 5 % of ρ) proposes each continuous outcome's cap at the DP 99.5 % quantile, the
    #: estimand becomes the ATT on outcomes capped there, and the report states cap and clipping.
    #: Off by default: at ~1k treated the narrower CIs expose the DP study's own bias
    #: (docs/benchmarks/privacy_levers.md)
    large_loss_cap: bool = False
    #: the share of ``psm_stats``' ρ the negative controls' own releases take, within ε
    #: (shared.dp.plan: the outcomes' releases keep the rest); None: the plan's default
    #: 1/(1 + √O), which minimises the calibrated estimate's variance
    negative_control_share: float | None = Field(default=None, gt=0, lt=1)

    @model_serializer(mode="wrap")
    def _omit_the_cap_round_when_off(self, handler: SerializerFunctionWrapHandler) -> dict:
        """A spec without the cap round or a declared controls' share dumps (and so hashes, and
        is signed) as it did before the fields existed: registrations and grants stay valid."""
        data = handler(self)
        if not self.large_loss_cap:
            data.pop("large_loss_cap", None)
        if self.negative_control_share is None:
            data.pop("negative_control_share", None)
        return data

    @model_validator(mode="after")
    def _secure_aggregation_needs_dp(self) -> "Privacy":
        if self.secure_aggregation and not self.enabled:
            raise ValueError("secure_aggregation splits the DP noise over the nodes: it needs enabled = true")
        return self


class Strata(_Model):
    """How the logit propensity score is cut into strata.

    ``caliper``: width ``caliper_sd`` x SD of the logit (MatchIt/CohortMethod); ``quantile``:
    ``n`` strata of equal treated count. ``auto`` = caliper without DP, quantile with DP.
    """

    method: Literal["auto", "caliper", "quantile"] = "auto"
    caliper_sd: float = Field(default=0.2, gt=0)
    n: int = Field(default=8, ge=1, le=200)


class Site(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    data: str | None = None  # flat cohort table, CSV or Parquet (relative to the spec)
    store: str | None = None  # or a node store URL


class Federation(_Model):
    superlink: str | None = None  # e.g. "127.0.0.1:9093"; None with --local
    min_nodes: int | None = Field(default=None, ge=1)  # go on without failed nodes down to this
    round_timeout_s: float = Field(default=120.0, gt=0)
    max_newton_iter: int = Field(default=25, ge=1, le=100)
    ridge: float = Field(default=1e-6, ge=0)
    tol: float = Field(default=1e-8, gt=0)  # Newton step (sup-norm); 1e-10 is at rounding level


class ReportOptions(_Model):
    """What the evidence report shows beyond the pooled estimate.

    ``per_site = false`` is for pooled studies of small firms (``rehealth study template
    small-firms``): the report names the participating sites but shows no per-site figure (no
    people, treated or control counts per site); size gates are on the pool either way."""

    per_site: bool = True


class StudySpec(_Model):
    study: StudyInfo
    treatment: Treatment = Treatment()
    covariates: tuple[Covariate, ...] = Field(
        default_factory=lambda: tuple(Covariate(name=f.name, lo=f.lo, hi=f.hi, kind=f.kind) for f in FEATURES)
    )
    outcomes: tuple[Outcome, ...] = Field(min_length=1)
    #: negative-control outcomes: outcomes the intervention cannot affect (true ATT zero) that
    #: share the treatment's confounding. Estimated like the outcomes, in the same releases;
    #: their estimates fit the systematic-error null for EASE and empirical calibration
    #: (:mod:`shared.psm.calibration`). Optional: a spec without them hashes as before.
    negative_controls: tuple[Outcome, ...] = ()
    privacy: Privacy = Privacy()
    strata: Strata = Strata()
    federation: Federation = Federation()
    report: ReportOptions = ReportOptions()
    sites: tuple[Site, ...] = ()
    #: the ATT's estimator: ``stratified`` (within propensity strata, the default, chosen by
    #: measurement: exact studies docs/STATISTICS.md and docs/benchmarks/dr.md, DP studies
    #: docs/benchmarks/dr_privacy.md, where DR's CI is 1.7–2.7× stratification's and more
    #: biased) or ``dr`` (doubly robust: regression adjustment within the same strata,
    #: :mod:`shared.psm.dr`; under DP released by weighted sums, ``psm_wsum`` and ``dr_dsum``,
    #: beside its slope ``dr_slope``, :mod:`shared.dp.drwsum`). A spec that does not name one
    #: is a stratified study, and hashes as it did before this field existed.
    estimator: Literal["stratified", "dr"] = "stratified"
    #: second-order terms of the covariate basis (squares, declared interactions) that nodes
    #: compute from the scaled covariates (:mod:`shared.terms`); empty by default, and a spec
    #: without them hashes as it did before this field existed
    terms: DesignTerms = DesignTerms()
    _source_dir: str | None = PrivateAttr(default=None)  # the spec file's folder, if loaded from one

    @field_validator("covariates")
    @classmethod
    def _covariates_unique(cls, v: tuple[Covariate, ...]) -> tuple[Covariate, ...]:
        _require_unique([c.name for c in v], "covariate")
        if not v:
            raise ValueError("at least one covariate is needed")
        return v

    @field_validator("outcomes")
    @classmethod
    def _outcomes_unique(cls, v: tuple[Outcome, ...]) -> tuple[Outcome, ...]:
        _require_unique([o.name for o in v], "outcome")
        return v

    @model_validator(mode="after")
    def _negative_controls_apart(self) -> "StudySpec":
        _require_unique([o.name for o in self.analysed_outcomes], "outcome or negative control")
        return self

    @model_serializer(mode="wrap")
    def _omit_empty_negative_controls(self, handler: SerializerFunctionWrapHandler) -> dict:
        """A spec without negative controls, or with the default estimator, dumps (and so
        hashes, and is signed) as it did before those fields existed: registrations and grants
        of such specs stay valid (the result states the estimator either way,
        ``StudyResult.estimator``). One serializer: pydantic keeps only the last of several."""
        data = handler(self)
        if not self.negative_controls:
            data.pop("negative_controls", None)
        if self.estimator == "stratified":
            data.pop("estimator", None)
        if self.terms.empty:
            data.pop("terms", None)
        return data

    @property
    def analysed_outcomes(self) -> tuple[Outcome, ...]:
        """The outcomes, then the negative controls: every column the study estimates an ATT
        on, in the order the nodes' tables and releases hold them."""
        return self.outcomes + self.negative_controls

    @field_validator("sites")
    @classmethod
    def _sites_unique(cls, v: tuple[Site, ...]) -> tuple[Site, ...]:
        _require_unique([s.name for s in v], "site")
        return v

    @model_validator(mode="after")
    def _secure_sum_over_every_node(self) -> "StudySpec":
        m = self.federation.min_nodes
        if self.privacy.secure_aggregation and len(self.sites) == 1:
            raise ValueError("secure aggregation sums over several nodes: this study has one site")
        if self.privacy.secure_aggregation and m is not None and m < len(self.sites):
            raise ValueError(
                f"secure aggregation needs every node in every round: with "
                f"federation.min_nodes = {m} a node could drop and the others' sum "
                "would carry less noise than the plan"
            )
        return self

    @model_validator(mode="after")
    def _terms_of_covariates(self) -> "StudySpec":
        check_terms(self.covariates, self.terms)  # a term of an unknown column, …: DataError
        return self

    @model_validator(mode="before")
    @classmethod
    def _site_effects_over_every_site(cls, data: Any) -> Any:
        """``[terms] sites = "all"`` names the spec's sites in their order (the first is the
        reference), so the signed spec says exactly which indicator columns the nodes add."""
        terms = data.get("terms") if isinstance(data, dict) else None
        if isinstance(terms, dict) and terms.get("sites") == "all":
            names = [s["name"] if isinstance(s, dict) else s.name for s in data.get("sites", ())]
            data = {**data, "terms": {**data["terms"], "sites": names}}
        return data

    @model_validator(mode="after")
    def _site_effects_name_the_sites_of_an_exact_study(self) -> "StudySpec":
        if not self.terms.sites:
            return self
        if self.terms.sites != tuple(s.name for s in self.sites):
            raise ValueError('terms.sites must list the study\'s sites in their order: write sites = "all"')
        if self.privacy.enabled:
            raise ValueError(
                "site effects ([terms] sites) are for exact studies (privacy.enabled = false): under DP "
                "the indicator columns' pooled sums would be each site's own per-stratum counts, which "
                "secure aggregation exists to hide"
            )
        return self

    @model_validator(mode="after")
    def _selection_in_exact_studies(self) -> "StudySpec":
        if self.terms.select != "none" and self.privacy.enabled:
            raise ValueError(
                "a basis chosen from the data ([terms] select) is for exact studies "
                "(privacy.enabled = false): its score rounds need the full candidate basis's "
                "gradient and Hessian, a few hundred columns the plan would have to noise"
            )
        return self

    @property
    def design_covariates(self) -> tuple[Covariate, ...]:
        """The covariates, then the derived terms (:mod:`shared.terms`): every column of the
        scaled matrix the propensity model, strata, balance and DR work on."""
        return self.covariates + derived_covariates(self.covariates, self.terms)

    @model_validator(mode="after")
    def _dp_dr_reads_the_balance_release(self) -> "StudySpec":
        if self.estimator == "dr" and self.privacy.enabled and not self.privacy.split.balance > 0:
            raise ValueError(
                'estimator = "dr" under DP reads the covariate imbalance left in the strata from '
                "the balance release: privacy.split.balance must be positive"
            )
        return self

    @property
    def features(self) -> tuple[Feature, ...]:
        return tuple(c.as_feature() for c in self.covariates)

    def public(self) -> "StudySpec":
        """The spec as published in results and reports: site data paths relative to the spec's
        folder (as written), never this machine's absolute paths."""
        base = self._source_dir
        sites = tuple(
            s.model_copy(update={"data": os.path.relpath(s.data, base) if base else Path(s.data).name})
            if s.data and os.path.isabs(s.data)
            else s
            for s in self.sites
        )
        return self.model_copy(update={"sites": sites})

    def spec_hash(self) -> str:
        """SHA-256 of the public spec's canonical JSON: names the study in ledgers and reports,
        and is the same wherever the spec's folder lies."""
        blob = json.dumps(self.public().model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict) -> "StudySpec":
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SpecError(format_validation_error(e, "study spec")) from None

    @classmethod
    def from_toml_text(
        cls, text: str, *, source: str = "study spec", base: str | Path | None = None
    ) -> "StudySpec":
        """The spec in TOML ``text`` (``source`` names it in errors); with ``base``, the absolute
        folder of the spec file, relative site paths resolve against it (:meth:`resolve_paths`).

        Takes text, not a path: reading the file is the caller's
        (:func:`coordinator.files.load_spec`)."""
        spec = cls.from_dict(parse_toml(text, what=source))
        return spec if base is None else spec.resolve_paths(base)

    def resolve_paths(self, base: str | Path) -> "StudySpec":
        """Site data paths made absolute against ``base``, the spec's folder (absolute: the
        caller resolves it; here paths are only joined and normalised, no file system access)."""
        base = str(base)
        if not os.path.isabs(base):
            raise SpecError(f"study spec: base folder {base!r} must be an absolute path")
        sites = tuple(
            s.model_copy(update={"data": os.path.normpath(os.path.join(base, s.data))}) if s.data else s
            for s in self.sites
        )
        resolved = self.model_copy(update={"sites": sites})
        resolved._source_dir = os.path.normpath(base)
        return resolved


def _require_unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"duplicate {what} name {n!r}")
        seen.add(n)


def parse_toml(text: str, *, what: str) -> dict:
    """TOML ``text`` as a dict, or a :class:`SpecError` saying what (``what``, e.g. the file it
    came from) is wrong. Pure: the file readers (:mod:`coordinator.files`, :mod:`node.files`)
    turn a missing file into their own message."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{what}: not valid TOML: {e}") from None


def format_validation_error(e: ValidationError, what: str) -> str:
    """One line per problem, each naming the field path, e.g. ``covariates[2].hi``."""
    lines = []
    for err in e.errors():
        path = ""
        for part in err["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{path or '(root)'}: {msg}")
    return f"invalid {what}: " + "; ".join(lines)
