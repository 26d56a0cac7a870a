"""The node's own privacy policy: it, not the query, decides what may be asked.

A query names columns, bounds, caps and privacy parameters; a node answers only if they agree
with its policy (vantage6's "the node has the last word", NVFlare's site ``privacy.json``):

* **Columns.** Only the treatment columns, covariates and outcomes the policy lists, each with
  exactly the policy's public bounds / cap. A query that asks for another column (a person id,
  a department) or other bounds (a cap of 1e7 so nothing is clipped) is refused before any
  data is read; the refusal names only what the query itself said.
* **Differential privacy by default.** Exact answers only where the operator set
  ``allow_exact`` (a federation whose sites all belong to one data owner). Even then a cell of
  fewer than ``min_cell`` people is never released (:func:`shared.answer.suppress_small_cells`),
  |β| is bounded and so is the number of strata: a crafted β cannot make the score a step
  function that isolates one person, and 20,000 fine edges cannot put each row in a cell.
* **Shares with a floor.** Every DP release a query asks for carries at least
  :data:`MIN_RELEASE_SHARE` of the study's privacy loss, and a re-split after describe may only
  move budget ps_fit → psm_stats (the coordinator no longer asks one; ps_fit not below
  :data:`~shared.dp.workflow.MIN_PS_SHARE`), so no probe is answered for (almost) free.
* **Secure aggregation** splits the noise over exactly the signed study's sites.
* **Large-loss caps** (issue #19, :mod:`shared.dp.capquantile`): a study signed with a cap
  round may lower an outcome's cap to one its noisy histogram proposed — one of the public bin
  edges of the signed span, never below the lowest cap this node accepts (``min_caps``), and
  only for a continuous outcome. The histogram's share of the budget is fixed by the code
  (:data:`~shared.dp.capquantile.CAP_SHARE`), so no query can buy it with less noise.

Every check here depends only on the query, its signed grant and this policy — never on data —
so whether a query is answered and what it costs reveal nothing about any row.

Policy file (``policy-path`` in the node config; TOML), every key optional::

    allow_exact = false
    min_cell = 11
    max_abs_beta = 1000.0
    max_strata = 10000
    treatment_columns = ["treated"]
    allow_design_terms = true  # squares, products, hinges of listed covariates ([terms], chosen ones too)
    [[covariates]]            # default: the 16 clinical features with their public bounds
    name = "age"; lo = 18; hi = 90
    [[outcomes]]              # default: claims_cost (cap 100000), cv_event, absence_days (365)
    name = "claims_cost"; cap = 100000
    [min_caps]                # the lowest cap a study's cap round may set (default: any edge)
    claims_cost = 20000
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from node.files import read_toml
from shared.dp.capquantile import CAP_SHARE, check_cap_edge
from shared.dp.workflow import MIN_PS_SHARE
from shared.errors import DataError, PolicyRefused, SpecError
from shared.features import FEATURES
from shared.grant import Grant, canonical_json
from shared.protocol import DP_RELEASES, PsFit, PsmStats, ScoreHist, StudyQuery
from shared.psm.strata import MAX_STRATA
from shared.study import DEFAULT_OUTCOMES, BudgetSplit, Covariate, Outcome, format_validation_error
from shared.terms import check_terms

__all__ = ["MIN_RELEASE_SHARE", "NodePolicy"]

#: The smallest share of a study's privacy loss (zCDP ρ) a release may carry. At 1 % its σ is
#: 10× that of a release spending the whole budget (σ ∝ 1/√ρ): no estimate is built on such a
#: release, so a query asking for one can only be a probe that hopes to be answered for free.
MIN_RELEASE_SHARE = 0.01

#: What each release is paid from in :class:`shared.study.BudgetSplit`.
_SHARE_OF = {
    "describe": "describe",
    "ps_fit": "ps_fit",
    "score_hist": "ps_fit",
    "psm_main": "psm_stats",
    "psm_sumsq": "psm_stats",
    "psm_wsum": "psm_stats",
    "psm_balance": "balance",
    "dr_slope": "psm_stats",
    "dr_dsum": "psm_stats",
    "nc_main": "psm_stats",  # the negative controls' (shared/dp/plan.py: a share of psm_stats)
    "nc_sumsq": "psm_stats",
    "nc_wsum": "psm_stats",
}


def _default_covariates() -> tuple[Covariate, ...]:
    return tuple(Covariate(name=f.name, lo=f.lo, hi=f.hi, kind=f.kind) for f in FEATURES)


class NodePolicy(BaseModel):
    """What this node answers. Loaded from the operator's policy file; defaults are safe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_exact: bool = False
    #: the smallest cell an exact answer releases (cells below are released as 0); below 5 the
    #: outcomes' Σy³ and Σy⁴ are withheld too (shared.answer.HIGHER_MIN_CELL)
    min_cell: int = Field(default=11, ge=2)
    #: bound on every coefficient of β on the [0, 1]-scaled covariates, exact answers only.
    #: Collinear lipids make fitted coefficients large (total cholesterol ≈ HDL + LDL +
    #: TG/2.2): |β| reached 53 at convergence on the synthetic sites and passed 200 in an
    #: intermediate Newton iterate on small ones, so the bound is 1000. The crafted-β attack's
    #: step function needs K per year of age, i.e. |β_age| = 72·K on the scaled covariate
    #: (7.2e4 at K = 1000): refused. Like every guard on exact answers it bounds differencing
    #: rather than preventing it: exact answers are for a coordinator the data owner trusts
    #: (deploy/TRUST.md)
    max_abs_beta: float = Field(default=1000.0, gt=0)
    #: bound on the strata of an exact psm_stats query: the coordinator's own bound on caliper
    #: strata, which span the score range the public bounds allow (most of them empty); the
    #: real guard against fine edges is ``min_cell``
    max_strata: int = Field(default=MAX_STRATA, ge=1)
    treatment_columns: tuple[str, ...] = ("treated",)
    #: answer over squares and products of listed covariates (a study's ``[terms]``,
    #: :mod:`shared.terms`): functions of columns this policy already allows, on the same
    #: [0, 1] scale, charged as one more covariate each; ``false`` refuses such studies
    allow_design_terms: bool = True
    covariates: tuple[Covariate, ...] = Field(default_factory=_default_covariates)
    outcomes: tuple[Outcome, ...] = DEFAULT_OUTCOMES
    #: per outcome, the lowest cap a study's large-loss cap round may set here (in the
    #: outcome's units); an outcome not named accepts any public edge of its signed span
    min_caps: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None, **overrides) -> "NodePolicy":
        """The policy in ``path`` (defaults if None), with node-config ``overrides``.

        Raises:
            SpecError: the file is unreadable or a field is invalid (named).
        """
        data = read_toml(Path(path), what="node policy") if path else {}
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SpecError(format_validation_error(e, f"node policy {path or '(default)'}")) from None

    # -- the checks ----------------------------------------------------------------------------
    def check(self, query: StudyQuery, grant: Grant | None) -> None:
        """Refuse ``query`` unless this policy allows it (:class:`PolicyRefused`, public text).

        ``grant`` is the verified grant the query belongs to (None only where the node runs
        without a pinned key, in tests of the policy alone).
        """
        self._check_columns(query)
        if query.privacy is None:
            if not self.allow_exact:
                raise PolicyRefused(
                    "this node answers only differentially private queries "
                    "(its operator has not allowed exact answers)"
                )
            self._check_exact(query)
        else:
            self._check_shares(query)
            self._check_secure(query, grant)
            self._check_caps(query)

    def _check_columns(self, query: StudyQuery) -> None:
        if query.treatment_column not in self.treatment_columns:
            raise PolicyRefused(f"treatment column {query.treatment_column!r} is not in this node's policy")
        _check_listed("covariate", query.covariates, self.covariates, lambda c: (c.lo, c.hi, c.kind))
        _check_listed("outcome", query.outcomes, self.outcomes, lambda o: (o.lo, o.cap, o.kind))
        terms = query.design_terms
        if (terms is not None and not terms.empty) or query.chosen is not None:
            if not self.allow_design_terms:
                raise PolicyRefused("this node's policy does not allow derived covariate terms ([terms])")
            try:
                check_terms(query.covariates, terms, query.chosen)
            except DataError as e:
                raise PolicyRefused(f"derived terms: {e}") from None
            if terms is not None and terms.sites and query.privacy is not None:
                raise PolicyRefused(
                    "site effects ([terms] sites) are answered only in exact studies: under DP their "
                    "pooled sums would be each site's own per-stratum counts"
                )
            if terms is not None and terms.select != "none" and query.privacy is not None:
                raise PolicyRefused(
                    "a basis chosen from the data ([terms] select) is answered only in exact studies: "
                    "its score rounds release the full candidate basis's Hessian"
                )

    def _check_exact(self, query: StudyQuery) -> None:
        for op in query.ops:
            if isinstance(op, (PsFit, PsmStats, ScoreHist)):
                beta = np.asarray(op.beta, dtype=float)
                if beta.size and np.all(np.isfinite(beta)) and np.max(np.abs(beta)) > self.max_abs_beta:
                    raise PolicyRefused(
                        f"{op.op}: |β| above this node's bound {self.max_abs_beta:g} for exact answers"
                    )
            if isinstance(op, PsmStats) and len(op.edges) - 1 > self.max_strata:
                raise PolicyRefused(
                    f"psm_stats: {len(op.edges) - 1} strata exceed this node's "
                    f"bound of {self.max_strata} for exact answers"
                )

    def _check_shares(self, query: StudyQuery) -> None:
        p = query.privacy
        assert p is not None
        if p.resplit is not None:
            _check_resplit(signed=p.split, resplit=p.resplit)
        split = p.resplit or p.split
        for op in query.ops:
            for release in DP_RELEASES[op.op]:
                share = CAP_SHARE if release == "cap_hist" else getattr(split, _SHARE_OF[release])
                if release == "psm_balance" and share == 0:
                    continue  # the balance sums are not released at all
                if share < MIN_RELEASE_SHARE:
                    raise PolicyRefused(
                        f"release {release}: a share of {share:g} of the study's "
                        f"privacy loss is below this node's floor of "
                        f"{MIN_RELEASE_SHARE:g}"
                    )

    def _check_caps(self, query: StudyQuery) -> None:
        """Lowered caps only in a study signed with a cap round, each a public edge of its
        signed span (what a released histogram can propose), none below ``min_caps``; binary
        outcomes keep their span. The refusal names the query's cap and this node's bound."""
        p = query.privacy
        assert p is not None
        if not p.caps:
            return
        if not p.cap_round:
            raise PolicyRefused("caps lowered in a study not signed with a large-loss cap round")
        if len(p.caps) != len(query.outcomes):
            raise PolicyRefused(f"caps name {len(p.caps)} outcomes; the study has {len(query.outcomes)}")
        for cap, o in zip(p.caps, query.outcomes):
            if o.kind == "binary" or cap == o.cap:
                if cap != o.cap:
                    raise PolicyRefused(f"outcome {o.name!r} is binary: its cap stays {o.cap:g}")
                continue
            try:
                check_cap_edge((cap - o.lo) / (o.cap - o.lo))
            except ValueError:
                raise PolicyRefused(
                    f"outcome {o.name!r}: cap {cap:g} is not one of the public edges of its "
                    f"signed span [{o.lo:g}, {o.cap:g}]"
                ) from None
            floor = self.min_caps.get(o.name)
            if floor is not None and cap < floor:
                raise PolicyRefused(
                    f"outcome {o.name!r}: cap {cap:g} is below the lowest this node accepts ({floor:g})"
                )

    def _check_secure(self, query: StudyQuery, grant: Grant | None) -> None:
        p = query.privacy
        assert p is not None
        if p.secure_nodes is None:
            return
        if not p.secure_aggregation:
            raise PolicyRefused("secure_nodes is set in a study not signed for secure aggregation")
        sites = len(grant.sites) if grant is not None else len(query.sites)
        if p.secure_nodes != sites:
            raise PolicyRefused(
                f"secure_nodes = {p.secure_nodes} differs from the signed study's "
                f"{sites} sites (each node adds only its 1/√K share of the noise)"
            )


def _check_listed(what: str, asked, allowed, public) -> None:
    """Every column ``asked`` is one the policy lists, with the same ``public`` terms
    (bounds or cap, and kind); the refusal names only what the query itself said and the
    node's public terms."""
    mine = {c.name: c for c in allowed}
    for c in asked:
        if c.name not in mine:
            raise PolicyRefused(f"{what} {c.name!r} is not in this node's policy")
        if public(c) != public(mine[c.name]):
            raise PolicyRefused(
                f"{what} {c.name!r}: the query's (lo, hi or cap, kind) {public(c)} "
                f"differ from this node's public {public(mine[c.name])}"
            )


def _check_resplit(*, signed: BudgetSplit, resplit: BudgetSplit) -> None:
    """A re-split (no longer asked by the coordinator, issue #19) may only move part of the
    propensity fit's share to the PSM table, leaving ps_fit at least ``min(MIN_PS_SHARE, its
    signed share)``, describe and balance unchanged."""
    floor = min(MIN_PS_SHARE, signed.ps_fit)
    same = abs(resplit.describe - signed.describe) < 1e-12 and abs(resplit.balance - signed.balance) < 1e-12
    if not same or not (floor - 1e-12 <= resplit.ps_fit <= signed.ps_fit + 1e-12):
        raise PolicyRefused(
            f"re-split {canonical_json(resplit.model_dump(mode='json')).decode()} "
            "is not one this node accepts: only ps_fit may shrink (to no less "
            f"than {floor:g}) in favour of psm_stats"
        )
