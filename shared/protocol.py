"""The typed queries a node answers in a study, and the names of what it returns.

A node runs no code the coordinator sends: it answers only these queries, validated here with
``extra="forbid"``. Several operations travel in one message, because every Flower round trip
costs seconds (a fresh ClientApp process per message).

These models are what people and code write; what crosses the wire is the contract in
``protos/rehealth_v1.proto`` (:mod:`protos.codec` converts, field by field, and refuses a field
either side lacks). Replies are typed per operation there, holding only aggregates:
:class:`shared.psm.propensity.CovMoments`, :class:`~shared.psm.propensity.PsStats` and
:class:`~shared.psm.table.PsmTable` arrays.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from protos import rehealth_v1_pb2 as _pb  # the generated contract (protobuf only, no Flower)
from shared.grant import Grant, SignedGrant
from shared.secure_sum import secured
from shared.study import BudgetSplit, Covariate, Outcome, StudySpec
from shared.terms import DesignTerms, basis_terms, derived_covariates

#: The protocol version, from the wire contract (``protos/rehealth_v1.proto``, enum
#: ``Protocol``; its history is there). A node and a coordinator of different versions refuse
#: each other instead of mis-reading the sums (:mod:`protos.codec`); a node's cached noise plans
#: are keyed by it too.
PROTOCOL_VERSION: Final[int] = _pb.PROTOCOL_VERSION
STUDY_MESSAGE_TYPE = "query.study"

#: Error codes a node returns (the contract's ``ErrorCode``), and the only texts that may follow
#: the site's name (each code's ``text`` option in the .proto). A node's own refusals
#: (:class:`shared.errors.QueryRefused`, :class:`~shared.errors.PrivacyError`) are built from
#: the query and the node's policy alone and may add their message; every other failure crosses
#: the wire as the fixed text, its details staying in the node's log.
CODE_REFUSED: int = _pb.ERROR_CODE_REFUSED
CODE_DATA: int = _pb.ERROR_CODE_DATA
CODE_BUDGET: int = _pb.ERROR_CODE_BUDGET
CODE_NOT_IN_STUDY: int = _pb.ERROR_CODE_NOT_IN_STUDY
CODE_UNAUTHORIZED: int = _pb.ERROR_CODE_UNAUTHORIZED
CODE_PROTOCOL: int = _pb.ERROR_CODE_PROTOCOL
CODE_INTERNAL: int = _pb.ERROR_CODE_INTERNAL
ERROR_TEXT: dict[int, str] = {
    v.number: v.GetOptions().Extensions[_pb.text]
    for v in _pb.ErrorCode.DESCRIPTOR.values
    if v.number != _pb.ERROR_CODE_UNSPECIFIED
}


def error_text(code: int) -> str:
    """The fixed text of an error ``code`` (a code this version does not know says so)."""
    return ERROR_TEXT.get(int(code), f"unknown error code {int(code)}")


class _Model(BaseModel):
    # outer stratum edges are ±inf: JSON carries them as Infinity, not null
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class Describe(_Model):
    """Per-arm counts and covariate moments (Σz, Σzzᵀ): balance before, a Newton start, the SD
    of the logit score for caliper strata."""

    op: Literal["describe"] = "describe"


class PsFit(_Model):
    """Gradient, Hessian and log-likelihood of the propensity model at ``beta``."""

    op: Literal["ps_fit"] = "ps_fit"
    beta: tuple[float, ...]


class PsmStats(_Model):
    """Per stratum x arm sums of the outcomes and covariates at ``beta`` with ``edges``; with
    ``slope`` (a DR study) also the controls' Σzzᵀ and Σzyᵀ per stratum
    (:func:`shared.psm.dr.slope_arrays`); under DP those travel as the plan's ``dr_slope``
    release (:mod:`shared.dp.forms`), asked only of a study signed with ``estimator = "dr"``."""

    op: Literal["psm_stats"] = "psm_stats"
    beta: tuple[float, ...]
    edges: tuple[float, ...]  # may include -inf/+inf outer edges (JSON: -Infinity/Infinity)
    slope: bool = False


class PsmWsum(_Model):
    """Per outcome, one weighted sum Σ vᵢ (yᵢ − cᵢ) at ``beta`` with ``edges``: the ATT itself
    (:mod:`shared.dp.wsum`). The weights come from ``count`` (the noisy PSM counts of the strata
    the estimator uses, 0 for one left out, ``(control, treated)`` per stratum, flattened),
    which the node turns into weights itself; ``max_weight`` is the largest it must find.
    ``center``: the public centre of every stratum × arm × outcome in [0, 1], flattened. The
    node charges the sensitivity it computes from weights and centres. Under DP only.

    ``z_center`` (a doubly robust study only, ``dr_dsum``): the public centre of every stratum ×
    arm × covariate in [0, 1], flattened; the node then also releases the D weighted sums
    Σ vᵢ (zᵢ − cᵢ) of the scaled covariates with the same weights, the imbalance d
    (:mod:`shared.dp.drwsum`). Empty (omitted on the wire): no such release."""

    op: Literal["psm_wsum"] = "psm_wsum"
    beta: tuple[float, ...]
    edges: tuple[float, ...]
    count: tuple[float, ...]
    center: tuple[float, ...]
    max_weight: float
    z_center: tuple[float, ...] = ()


class ScoreHist(_Model):
    """Per-arm histogram of the logit score at ``beta`` on the public grid
    :func:`shared.dp.workflow.dp_grid` (quantile strata under DP)."""

    op: Literal["score_hist"] = "score_hist"
    beta: tuple[float, ...]


class CapHist(_Model):
    """Per outcome, the histogram of the node's rows over the public log bins of its signed
    span (:func:`shared.dp.capquantile.cap_histogram`): the large-loss cap round, answered only
    in a study signed with ``cap_round`` and before any cap is lowered. Under DP only."""

    op: Literal["cap_hist"] = "cap_hist"


class Reserve(_Model):
    """A DP study's first round: reserve the study's whole noise plan on the node's ledger
    before any release (the node derives the plan from the signed terms; nothing is released).
    If any node refuses, the study stops having spent nothing."""

    op: Literal["reserve"] = "reserve"


class Cancel(_Model):
    """The study is over without its last release: free what the node's reservation has not
    converted into charges (charges stay). Harmless whoever sends it: it carries the study's
    grant, and it only lowers what that study holds."""

    op: Literal["cancel"] = "cancel"


Operation = Annotated[
    Union[Describe, PsFit, PsmStats, ScoreHist, PsmWsum, CapHist, Reserve, Cancel], Field(discriminator="op")
]

#: Operations about the study's budget rather than its data: they travel alone, read no data
#: and are answered by the reply's metadata only.
CONTROL_OPS: tuple[str, ...] = ("reserve", "cancel")


#: The DP releases each operation's answer is made of (:data:`shared.dp.sensitivity.RELEASE_KEYS`
#: names their arrays); everything else in an answer is withheld under DP.
DP_RELEASES: dict[str, tuple[str, ...]] = {
    "describe": ("describe",),
    "ps_fit": ("ps_fit",),
    "score_hist": ("score_hist",),
    "psm_stats": ("psm_main", "psm_sumsq", "psm_balance", "dr_slope", "nc_main", "nc_sumsq"),
    "psm_wsum": ("psm_wsum", "dr_dsum", "nc_wsum"),
    "cap_hist": ("cap_hist",),
}


#: Whether a stratified DP study releases its negative controls apart (``nc_*``, issue #21,
#: :func:`controls_apart`), within the study's ε: they take a signed share of ``psm_stats``
#: (:func:`shared.dp.plan.default_control_share`), so a spec's ε bounds what its study costs a
#: node with or without them. False: they ride in the outcomes' releases (the behaviour before,
#: every outcome σ ×2–3 with 24 controls instead of ×1.26).
NEGATIVE_CONTROLS_APART = True


def controls_apart(spec: StudySpec) -> int:
    """C, the negative controls a DP study releases apart (0: none, or they ride along)."""
    if not (NEGATIVE_CONTROLS_APART and spec.privacy.enabled) or spec.estimator == "dr":
        # a DR study's controls still ride in its releases: apart, the weighted sums would give
        # them stratified estimates, whose systematic error is not the DR outcomes' (plan.py)
        return 0
    return len(spec.negative_controls)


def control_share(spec: StudySpec) -> float | None:
    """The share of ``psm_stats``' ρ a study's controls released apart take (signed with the
    study): the spec's ``privacy.negative_control_share``, else the plan's default for its
    outcomes; None when no controls are released apart."""
    if not controls_apart(spec):
        return None
    from shared.dp.plan import default_control_share

    declared = spec.privacy.negative_control_share
    return default_control_share(len(spec.outcomes)) if declared is None else declared


class PrivacyQuery(_Model):
    """The study's privacy parameters. The node derives every σ itself from these and the
    query's dimensions (:func:`shared.dp.plan.plan_study`), so it never takes a noise scale on
    the coordinator's word, and charges its own ledger before answering."""

    epsilon: float = Field(gt=0)
    delta: float = Field(gt=0, lt=1)
    split: BudgetSplit
    n_ps_rounds: int = Field(ge=1, le=20)
    accountant: Literal["gaussian", "rdp", "prv"] = "gaussian"
    #: the split of the rounds after describe, re-chosen from describe's public counts
    #: (the coordinator no longer asks one, issue #19); the node applies it to the plan it derived itself
    #: (same total ρ, ε re-checked), so whatever the split, the study's ε bounds what it releases
    resplit: BudgetSplit | None = None
    #: K under secure aggregation: every release after describe travels only through SecAgg+,
    #: the node adding σ/√K (:mod:`shared.secure_sum`); None: each node adds σ
    secure_nodes: int | None = Field(default=None, ge=2)
    #: the study's rounds after describe travel as SecAgg+ sums (signed with the study)
    secure_aggregation: bool = False
    #: the study's estimator (signed with it): a doubly robust study's plan holds the
    #: ``dr_dsum`` and ``dr_slope`` releases beside ``psm_wsum`` (:func:`shared.dp.plan.plan_study`)
    estimator: Literal["stratified", "dr"] = "stratified"
    #: the study opens with the large-loss cap round (signed with the study; the plan then
    #: holds a ``cap_hist`` release, :func:`shared.dp.plan.plan_study`)
    cap_round: bool = False
    #: the caps the cap round released, one per outcome in its units (empty before it, or without
    #: it): not signed (the data chose them, through the noisy histogram); each node checks them
    #: against its policy (:meth:`node.policy.NodePolicy.check`) and answers on outcomes capped there
    caps: tuple[float, ...] = ()
    #: C: the query's last C outcomes are the study's negative controls, released apart from
    #: the outcomes (``nc_*``, :func:`shared.dp.plan.plan_study`). Signed with the study (a node
    #: never takes a control for one on the coordinator's word: the plan's shares follow from
    #: it); 0 (left out of the signed terms, so older grants match): none apart
    negative_controls: int = Field(default=0, ge=0)
    #: f: the share of ``psm_stats``' ρ the controls' releases take, the outcomes' keeping 1 − f
    #: (within the study's ε). Signed with the study when it has controls apart (a study's
    #: queries always state it); None: the plan's default for the query's outcomes
    #: (:func:`shared.dp.plan.default_control_share`), and none without controls
    negative_control_share: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _share_with_controls(self) -> "PrivacyQuery":
        if self.negative_control_share is not None and not self.negative_controls:
            raise ValueError(
                f"a share of psm_stats for negative controls ({self.negative_control_share!r}) "
                "in a query that releases none apart"
            )
        return self

    def share(self, release: str) -> int:
        """Over how many nodes' noise a release's σ is split (1: all of it at this node)."""
        return self.secure_nodes if self.secure_nodes is not None and secured(release) else 1

    def plan(self, *, n_covariates: int, n_outcomes: int, rho: float | None = None):
        """The noise plan of a query of ``n_outcomes`` outcomes, the last
        :attr:`negative_controls` of them the negative controls released apart (at total
        ``rho`` if given, else calibrated: :func:`shared.dp.plan.plan_study`).

        Raises:
            PrivacyError: the controls leave no outcome.
        """
        from shared.dp.plan import plan_study
        from shared.errors import PrivacyError

        if n_outcomes - self.negative_controls < 1:
            raise PrivacyError(
                f"{self.negative_controls} negative controls among {n_outcomes} outcomes leave no outcome"
            )
        plan = plan_study(
            epsilon=self.epsilon,
            delta=self.delta,
            split=self.split,
            n_covariates=n_covariates,
            n_outcomes=n_outcomes - self.negative_controls,
            n_negative_controls=self.negative_controls,
            control_share=self.negative_control_share,
            n_ps_rounds=self.n_ps_rounds,
            accountant=self.accountant,
            estimator=self.estimator,
            cap_round=self.cap_round,
            rho=rho,
        )
        return plan if self.resplit is None else plan.with_split(self.resplit)


class StudyQuery(_Model):
    """What a node needs to answer: the study's columns and bounds, never code."""

    protocol: int = PROTOCOL_VERSION
    study_id: str = Field(min_length=8, max_length=128)  # the grant's id
    treatment_column: str
    covariates: tuple[Covariate, ...] = Field(min_length=1)
    outcomes: tuple[Outcome, ...] = Field(min_length=1)
    ops: tuple[Operation, ...] = Field(min_length=1, max_length=4)
    sites: tuple[str, ...] = ()  # sites taking part; a node not listed declines (nothing computed)
    privacy: PrivacyQuery | None = None  # None: exact aggregates (if the node's policy allows)
    #: under secure aggregation: values travel divided by this public scale, which the
    #: coordinator sets from describe's noisy counts so every entry fits SecAgg+'s range
    secure_scale: float | None = Field(default=None, gt=0)
    #: the operator's signed grant this query belongs to (:mod:`shared.grant`)
    grant: SignedGrant | None = None
    #: derived terms the node appends to its scaled covariates (:mod:`shared.terms`); None: none
    design_terms: DesignTerms | None = None
    #: a selecting study (``design_terms.select``): the candidate terms chosen so far, which
    #: the node computes beside the signed site effects (:func:`shared.terms.basis_terms`).
    #: Not signed — the rounds' sums choose them — so every node checks them against the
    #: candidates it derives from the signed covariates; None: none chosen (or no selection)
    chosen: DesignTerms | None = None

    @property
    def basis(self) -> DesignTerms | None:
        """The derived terms the node computes: the signed ones, or the chosen candidates.

        Raises:
            DataError: ``chosen`` names what the signed terms do not allow
                (:func:`shared.terms.basis_terms`).
        """
        return basis_terms(self.covariates, self.design_terms, self.chosen)

    @property
    def design_covariates(self) -> tuple[Covariate, ...]:
        """The covariates, then the derived terms: the columns every aggregate is taken over."""
        return self.covariates + derived_covariates(self.covariates, self.basis)

    @field_validator("protocol")
    @classmethod
    def _same_protocol(cls, v: int) -> int:
        if v != PROTOCOL_VERSION:
            raise ValueError(f"a query of protocol version {v}; this side speaks version {PROTOCOL_VERSION}")
        return v

    def terms(self) -> dict:
        """The fixed part of every query of the study: what its grant signs."""
        privacy = (
            None
            if self.privacy is None
            else self.privacy.model_dump(
                mode="json",
                # defaults left out (the stratified estimator, no cap round), so grants signed
                # before those fields existed still match their studies' queries; the released
                # caps are not signed (the data chose them, through the noisy histogram)
                exclude={"resplit", "secure_nodes", "caps"}
                | ({"estimator"} if self.privacy.estimator == "stratified" else set())
                | (set() if self.privacy.cap_round else {"cap_round"})
                | (
                    set()
                    if self.privacy.negative_controls
                    else {"negative_controls", "negative_control_share"}
                ),
            )
        )
        out = {
            "treatment_column": self.treatment_column,
            "covariates": [c.model_dump(mode="json") for c in self.covariates],
            "outcomes": [o.model_dump(mode="json") for o in self.outcomes],
            "privacy": privacy,
        }
        if self.design_terms is not None and not self.design_terms.empty:
            out["design_terms"] = self.design_terms.model_dump(mode="json")  # old grants: unchanged
        return out

    @classmethod
    def for_spec(
        cls,
        spec: StudySpec,
        ops: tuple,
        resplit: BudgetSplit | None = None,
        secure_nodes: int | None = None,
        secure_scale: float | None = None,
        grant: SignedGrant | None = None,
        caps: tuple[float, ...] = (),
        chosen: DesignTerms | None = None,
    ) -> "StudyQuery":
        p = spec.privacy
        privacy = (
            PrivacyQuery(
                epsilon=p.epsilon,
                delta=p.delta,
                split=p.split,
                n_ps_rounds=p.ps_rounds,
                accountant=p.accountant,
                resplit=resplit,
                secure_nodes=secure_nodes,
                secure_aggregation=p.secure_aggregation,
                estimator=spec.estimator,
                cap_round=p.large_loss_cap,
                caps=caps,
                negative_controls=controls_apart(spec),
                negative_control_share=control_share(spec),
            )
            if p.enabled
            else None
        )
        study_id = Grant.model_validate_json(grant.body).grant_id if grant else spec.spec_hash()
        return cls(
            study_id=study_id,
            treatment_column=spec.treatment.column,
            covariates=spec.covariates,
            outcomes=spec.analysed_outcomes,  # controls last (released apart: privacy.negative_controls)
            ops=ops,
            sites=tuple(s.name for s in spec.sites),
            privacy=privacy,
            secure_scale=secure_scale,
            grant=grant,
            design_terms=None if spec.terms.empty else spec.terms,
            chosen=chosen,
        )

    @staticmethod
    def study_grant(spec: StudySpec, grant_id: str) -> Grant:
        """The grant the operator signs for ``spec`` (its sites and terms)."""
        if not spec.sites:
            raise ValueError("a signed study names its sites ([[sites]] in the spec)")
        probe = StudyQuery.for_spec(spec, (Describe(),))
        return Grant(
            kind="study", grant_id=grant_id, sites=tuple(s.name for s in spec.sites), terms=probe.terms()
        )

    def data_key(self) -> tuple:
        """What determines the node's prepared arrays (for its local cache)."""
        return (
            self.treatment_column,
            tuple((c.name, c.lo, c.hi, c.kind) for c in self.covariates),
            tuple((o.name, o.lo, o.cap, o.kind) for o in self.outcomes),
        )

    def released_caps01(self):
        """The released caps on each outcome's signed [0, 1] scale (None: the signed caps)."""
        caps = () if self.privacy is None else self.privacy.caps
        if not caps:
            return None
        if len(caps) != len(self.outcomes):
            raise ValueError(f"caps name {len(caps)} outcomes, the study has {len(self.outcomes)}")
        return tuple((c - o.lo) / (o.cap - o.lo) for c, o in zip(caps, self.outcomes))


# -- federated risk-model training (Flower train/evaluate messages) --------------------------
RISK_ARRAYS_KEY = "arrays"  # ArrayRecord of model parameters (transport order)
RISK_EVAL_KEY = "eval"  # ArrayRecord of the node's additive evaluation aggregate


class RiskJob(_Model):
    """A federated DP training job of the risk model. The node derives its own DP-SGD noise
    from ``target_epsilon`` (its total over ``rounds``), its row count and these settings, and
    charges its ledger before the weights leave.

    The final evaluation is one more Gaussian release per node, at ``eval_epsilon`` (and
    ``delta``), charged on top of training: a node's total for the job is the composition of
    both, which its ledger's accountant computes. Each node's FedAvg weight is a third: its
    row count, released once per job with noise (:data:`shared.risk.fedavg.COUNT_EPSILON`).
    ``eval_bins`` is the public probability grid of that release (fewer bins, less noise per
    pooled metric; see :mod:`shared.risk.metrics`). A node not in ``sites`` declines every message of the job.
    """

    job_id: str = Field(min_length=8, max_length=128)
    sites: tuple[str, ...] = Field(min_length=1, max_length=1000)
    kind: Literal["logistic", "mlp"] = "logistic"
    hidden: int = Field(default=16, ge=1, le=1024)
    rounds: int = Field(ge=1, le=100)
    epochs: int = Field(default=1, ge=1, le=20)
    batch_size: int = Field(default=1024, ge=16, le=65536)
    lr: float = Field(default=0.05, gt=0, le=10)
    max_grad_norm: float = Field(default=5.0, gt=0)
    target_epsilon: float = Field(gt=0, le=100)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    #: the risk model's outcome; fixed, so a job cannot point training or evaluation at
    #: another 0/1 column of the node (treatment, a diagnosis)
    outcome: Literal["cv_event"] = "cv_event"
    eval_epsilon: float = Field(default=0.2, gt=0, le=10)
    eval_bins: int = Field(default=20, ge=2, le=1000)

    def terms(self) -> dict:
        """What a risk grant signs: the whole job."""
        return self.model_dump(mode="json")
