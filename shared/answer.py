"""A node's answer to a study query, computed from its scaled arrays: the only code that does.

Every adapter of the study driver (:mod:`shared.driver`) reaches a node's answer through this
module: a real node (:meth:`node.runtime.NodeRuntime.answer`, behind Flower's ClientApp, with
or without SecAgg+) after its grant, policy and ledger checks, and the in-process sites of
:mod:`shared.inprocess_sites` (the pooled reference and the DP simulation the benchmarks run).
So what a benchmark measures is what a node releases.

Pure: arrays in, aggregates out. Reading and validating a site's data is the node's
(:mod:`node.study_service`). The ledger step of a DP query (:func:`ledger_step`: reserve the
study's whole plan, convert a reserved release into a charge, cancel) is written here once
against any ledger with the methods of :class:`NodeLedger` (a real node passes
:class:`node.ledger.PrivacyLedger`), and called by the node before it reads any data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from shared.dp.capquantile import cap_histogram, rescale_to_caps
from shared.dp.drwsum import node_dsum
from shared.dp.forms import release_arrays
from shared.dp.mechanisms import release as gaussian_release
from shared.dp.plan import NoisePlan, PlannedRelease
from shared.dp.workflow import dp_grid
from shared.dp.wsum import node_weights, weighted_sums, wsum_sensitivity
from shared.errors import QueryRefused
from shared.protocol import (
    CONTROL_OPS,
    DP_RELEASES,
    CapHist,
    Describe,
    PsFit,
    PsmStats,
    PsmWsum,
    ScoreHist,
    StudyQuery,
)
from shared.psm.dr import slope_arrays
from shared.psm.propensity import cov_moments, ps_contribution
from shared.psm.strata import score_histogram
from shared.psm.table import HIGHER, psm_table
from shared.terms import expand

__all__ = [
    "HIGHER_MIN_CELL",
    "Release",
    "SiteArrays",
    "answer",
    "at_released_caps",
    "check_edges",
    "NodeLedger",
    "check_query",
    "split_controls",
    "control_op",
    "dp_release",
    "exact_answer",
    "ledger_step",
    "noisy_release",
    "planned_releases",
    "study_releases",
    "suppress_small_cells",
]

#: Counts a node keeps to itself: how many values it clipped to the public bounds and how
#: many rows it could not use (its log names them). Never released, not even exactly.
WITHHELD = ("n_clipped", "n_clipped_z", "n_excluded")

#: The smallest ``min_cell`` at which a node releases its cells' Σy³ and Σy⁴ in an exact answer
#: (:data:`shared.psm.table.HIGHER`, for the skewness-corrected CI, :mod:`shared.psm.skew`).
#: The first k power sums of a cell determine the multiset of its values when it holds at most
#: k rows (Newton's identities): Σy and Σy² already give away a cell of two, Σy³ and Σy⁴ would
#: give away cells of three and four. Below this floor the node withholds both (the study's CI
#: is then the Wald interval); the node policy's default, 11, releases them.
HIGHER_MIN_CELL = 5


@dataclass(frozen=True)
class SiteArrays:
    """A site's study data, scaled: z in [0,1]^d, t in {0,1}, y in [0,1]^O.

    ``n_clipped`` (per outcome) and ``n_clipped_z`` (per covariate) count values clipped to the
    public bounds; ``n_excluded`` rows that could not be used (a missing or non-numeric value, a
    treatment other than 0/1). Zeros when not given (arrays prepared elsewhere).
    """

    z: np.ndarray
    t: np.ndarray
    y: np.ndarray
    n_clipped: np.ndarray = field(default=None)  # type: ignore[arg-type]  # None: zeros, below
    n_clipped_z: np.ndarray = field(default=None)  # type: ignore[arg-type]  # None: zeros, below
    n_excluded: np.ndarray = field(default=None)  # type: ignore[arg-type]  # None: zeros, below

    def __post_init__(self) -> None:
        y = np.asarray(self.y, dtype=float)
        defaults = {
            "n_clipped": np.zeros(y.shape[1] if y.ndim == 2 else 1),
            "n_clipped_z": np.zeros(np.shape(self.z)[1]),
            "n_excluded": np.zeros(1),
        }
        for name, zero in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, zero)

    @property
    def n(self) -> int:
        return int(self.t.shape[0])

    def to_npz(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("z", "t", "y", "n_clipped", "n_clipped_z", "n_excluded")}


Release = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


def _no_noise(op: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return arrays


def answer(
    query: StudyQuery, data: SiteArrays, release: Release = _no_noise, *, site: str | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Compute every operation of ``query`` over ``data``; each answer passes through
    ``release`` (the DP noise step when privacy is on) before it is returned. Outcomes are read
    at the caps the study's cap round released, if any (:func:`at_released_caps`). ``site``:
    the answering node's own name (its site-effect indicators, :mod:`shared.terms`)."""
    data = at_released_caps(query, with_design_terms(query, data, site=site))
    return {op.op: release(op.op, exact_answer(op, query, data)) for op in query.ops}


def with_design_terms(query: StudyQuery, data: SiteArrays, *, site: str | None = None) -> SiteArrays:
    """``data`` with the query's derived terms (:mod:`shared.terms`) appended to ``z`` (site
    effects: the indicators of ``site``, the node's own name); the same ``data`` when the
    query declares none."""
    basis = query.basis
    if basis is None or basis.empty:
        return data
    return dataclasses.replace(data, z=expand(data.z, query.covariates, basis, site=site))


def at_released_caps(query: StudyQuery, data: SiteArrays) -> SiteArrays:
    """``data`` (outcomes scaled by the signed caps) with its outcomes rescaled to the caps the
    query carries from the study's cap round (:func:`shared.dp.capquantile.rescale_to_caps`;
    the rows they clip are added to the withheld clipping counts); unchanged without them.
    Whether the node accepts those caps is its policy's check, made before (node.policy)."""
    c01 = query.released_caps01()
    if c01 is None:
        return data
    y, clipped = rescale_to_caps(data.y, c01)
    return dataclasses.replace(data, y=y, n_clipped=np.asarray(data.n_clipped, dtype=float) + clipped)


def exact_answer(op, query: StudyQuery, data: SiteArrays) -> dict[str, np.ndarray]:
    """One operation's exact aggregates over the site's rows (they stay on the node until
    released)."""
    d = len(query.design_covariates)
    if isinstance(op, CapHist):
        return {"count": cap_histogram(data.y)}
    if isinstance(op, Describe):
        return {
            **cov_moments(z=data.z, t=data.t).to_arrays(),
            "n_clipped": data.n_clipped,
            "n_clipped_z": data.n_clipped_z,
            "n_excluded": data.n_excluded,
        }
    beta = _check_beta(op.beta, d)
    if isinstance(op, PsFit):
        return ps_contribution(z=data.z, t=data.t, beta=beta).to_arrays()
    if isinstance(op, ScoreHist):
        return {"count": score_histogram(z=data.z, t=data.t, beta=beta, grid=dp_grid(beta=beta))}
    if isinstance(op, PsmStats):
        edges = check_edges(op.edges)
        table = psm_table(z=data.z, t=data.t, y=data.y, beta=beta, edges=edges).to_arrays()
        if op.slope:  # a DR study: the controls' cross-products too (under DP: dr_slope)
            pooled = query.privacy is not None  # released summed over strata: no per-stratum work
            table.update(slope_arrays(z=data.z, t=data.t, y=data.y, beta=beta, edges=edges, pooled=pooled))
        return table
    if isinstance(op, PsmWsum):
        edges = check_edges(op.edges)
        v, c, _ = _wsum_weights(op, n_outcomes=len(query.outcomes))
        out = {"wsum": weighted_sums(z=data.z, t=data.t, y=data.y, beta=beta, edges=edges, v=v, centers=c)}
        if op.z_center:  # a DR study's imbalance: the covariates with the same weights (dr_dsum)
            v, cz, _ = _dsum_weights(op, n_covariates=d)
            out["dsum"] = weighted_sums(z=data.z, t=data.t, y=data.z, beta=beta, edges=edges, v=v, centers=cz)
        return out
    raise QueryRefused(f"unknown operation {op!r}")  # pragma: no cover - union admits no other


def check_edges(edges) -> np.ndarray:
    """Strictly increasing edges whose outer ones are ±inf, so every score falls in a stratum
    (checked on the query alone: a bad edge list is refused before any data is read)."""
    e = np.array(edges, dtype=float)
    if (
        e.ndim != 1
        or e.size < 2
        or np.any(np.diff(e) <= 0)
        or e[0] != -np.inf
        or e[-1] != np.inf
        or not np.all(np.isfinite(e[1:-1]))
    ):
        raise QueryRefused("psm_stats: edges must be strictly increasing, from -inf to +inf")
    return e


def _wsum_weights(op: PsmWsum, *, n_outcomes: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The weights, centres and sensitivity of a ``psm_wsum`` operation, checked on the query
    alone (:func:`shared.dp.wsum.node_weights`)."""
    return node_weights(
        counts=op.count,
        centers=op.center,
        n_strata=len(op.edges) - 1,
        n_outcomes=n_outcomes,
        declared_max=op.max_weight,
    )


def _dsum_weights(op: PsmWsum, *, n_covariates: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The weights, covariate centres and sensitivity of a ``dr_dsum`` request (``psm_wsum``
    with ``z_center``), checked on the query alone (:func:`shared.dp.drwsum.node_dsum`)."""
    return node_dsum(
        counts=op.count,
        z_centers=op.z_center,
        n_strata=len(op.edges) - 1,
        n_covariates=n_covariates,
        declared_max=op.max_weight,
    )


def control_op(query: StudyQuery) -> str | None:
    """``reserve`` or ``cancel`` when ``query`` is about the study's budget (such an operation
    travels alone), None for a query of data operations.

    Raises:
        QueryRefused: a control operation beside others.
    """
    names = [op.op for op in query.ops]
    control = [n for n in names if n in CONTROL_OPS]
    if not control:
        return None
    if len(names) != 1:
        raise QueryRefused(
            f"{control[0]} travels alone, not beside {', '.join(n for n in names if n != control[0])}"
        )
    return control[0]


def check_query(query: StudyQuery) -> None:
    """Every check of an operation that needs no data (β length, edges; a reservation made
    from the signed terms alone): before the charge."""
    control = control_op(query)
    if control is not None:
        if query.privacy is None:
            raise QueryRefused(f"{control}: an exact study has no privacy budget to {control}")
        if control == "reserve" and (
            query.privacy.resplit is not None
            or query.privacy.secure_nodes is not None
            or query.secure_scale is not None
        ):
            raise QueryRefused("reserve: a reservation is made from the signed study's terms alone")
        return
    d = len(query.design_covariates)
    for op in query.ops:
        if isinstance(op, CapHist):
            p = query.privacy
            if p is None or not p.cap_round:
                raise QueryRefused("cap_hist: only a DP study signed with a cap round asks it")
            if p.caps:
                raise QueryRefused("cap_hist: the histogram is of the signed span, before any cap is lowered")
        if isinstance(op, (PsFit, ScoreHist, PsmStats, PsmWsum)):
            _check_beta(op.beta, d)
        if isinstance(op, (PsmStats, PsmWsum)):
            check_edges(op.edges)
        if isinstance(op, PsmStats) and op.slope and query.privacy is not None:
            if query.privacy.estimator != "dr":
                raise QueryRefused(
                    "psm_stats: the DR cross-products (slope) are a planned DP release only of a "
                    'study signed with estimator = "dr"'
                )
        if isinstance(op, PsmWsum):
            if query.privacy is None:
                raise QueryRefused("psm_wsum is a DP release: an exact study reads the PSM table")
            _wsum_weights(op, n_outcomes=len(query.outcomes))
            dr = query.privacy.estimator == "dr"
            if op.z_center and not dr:
                raise QueryRefused(
                    "psm_wsum: the covariates' weighted sums (z_center, dr_dsum) are a release only "
                    'of a study signed with estimator = "dr"'
                )
            if dr and not op.z_center:
                raise QueryRefused(
                    "psm_wsum: a doubly robust study's weighted sums carry the imbalance's (z_center), "
                    "as its signed plan releases them"
                )
            if op.z_center:
                _dsum_weights(op, n_covariates=d)


def suppress_small_cells(op: str, arrays: dict[str, np.ndarray], *, k: int) -> dict[str, np.ndarray]:
    """An exact answer with every cell of fewer than ``k`` people released as 0.

    A cell is an arm (describe), a score bin × arm (score_hist) or a stratum × arm
    (psm_stats); its count and all its sums go together, so a suppressed cell looks exactly like
    an empty one. ps_fit sums over the whole site: a site of fewer than ``k`` rows releases 0.
    The clipping and exclusion counts are withheld, and so are the outcomes' Σy³ and Σy⁴ when
    ``k`` is below :data:`HIGHER_MIN_CELL` (``k`` ≤ 1 keeps every cell: an in-process
    reference, not a node — a node's policy asks at least 2).
    """
    withheld = WITHHELD + (HIGHER if 1 < k < HIGHER_MIN_CELL else ())
    out = {key: np.array(v, dtype=float, copy=True) for key, v in arrays.items() if key not in withheld}
    if op == "ps_fit":
        if out["n"][0] < k:
            out = {key: np.zeros_like(v) for key, v in out.items()}
        return out
    count = out["count"]
    small = count < k  # per cell: (2,) arms, (bins, 2) or (S, 2)
    for key, v in out.items():
        if key == "edges":
            continue
        # the DR cross-products are the controls' per stratum (S, D, ·): a small control cell
        # takes its rows' with it
        v[small[:, 0] if key in ("zz_c", "zy_c") else small] = 0.0
    return out


def planned_releases(query: StudyQuery, plan: NoisePlan) -> dict[str, PlannedRelease]:
    """The plan's releases that ``query``'s operations make (what a node charges, once each).

    ``psm_wsum`` keeps the plan's noise multiplier at the sensitivity its weights give
    (:meth:`shared.dp.plan.PlannedRelease.for_sensitivity`): the node charges, and adds noise
    by, the largest weight it is asked for, computed from the query before any data is read.
    """
    out = {}
    n_controls = query.privacy.negative_controls if query.privacy is not None else 0
    n_outcomes = len(query.outcomes) - n_controls
    for op in query.ops:
        if isinstance(op, PsmStats) and op.slope and not plan.has("dr_slope"):
            raise QueryRefused("psm_stats: this study's noise plan has no dr_slope release")
        if isinstance(op, PsmWsum) and not plan.has("psm_wsum"):
            raise QueryRefused("psm_wsum: this study's noise plan has no weighted sums")
        if isinstance(op, PsmWsum) and op.z_center and not plan.has("dr_dsum"):
            raise QueryRefused("psm_wsum: this study's noise plan has no dr_dsum release (not a DR study)")
        for name in DP_RELEASES[op.op]:
            if not plan.has(name) or (name == "dr_slope" and not (isinstance(op, PsmStats) and op.slope)):
                continue
            if name == "dr_dsum" and not (isinstance(op, PsmWsum) and op.z_center):
                continue
            rel = plan.release(name)
            if name == "dr_dsum":  # the Δ the node computes from the weights and centres it is sent
                assert isinstance(op, PsmWsum)
                rel = rel.for_sensitivity(_dsum_weights(op, n_covariates=len(query.design_covariates))[2])
            elif isinstance(op, PsmWsum):  # each of the two sums' own centres: outcomes | controls
                v, centers, _ = _wsum_weights(op, n_outcomes=len(query.outcomes))
                part = centers[..., :n_outcomes] if name == "psm_wsum" else centers[..., n_outcomes:]
                rel = rel.for_sensitivity(wsum_sensitivity(v, part))
            out[name] = rel
    if n_controls and any(op.op in ("psm_stats", "psm_wsum") for op in query.ops):
        missing = [n for op in query.ops for n in _NC_OF.get(op.op, ()) if n not in out]
        if missing:  # the signed plan releases the controls apart: never with the outcomes
            raise QueryRefused(f"the study's noise plan lacks its negative controls' {missing[0]} release")
    return out


#: The negative controls' release beside each operation's outcomes' release (issue #21).
_NC_OF = {"psm_stats": ("nc_main", "nc_sumsq"), "psm_wsum": ("nc_wsum",)}


def split_controls(op: str, arrays: Mapping[str, np.ndarray], n_controls: int) -> dict[str, np.ndarray]:
    """An exact answer with its last ``n_controls`` outcomes (the study's negative controls,
    signed) moved apart: ``sum_y``, ``sumsq_y``, ``zy_c`` and ``wsum`` keep the outcomes only,
    ``nc_sum_y``, ``nc_sumsq_y`` and ``nc_wsum`` hold the controls (the ``nc_*`` releases).
    Unchanged when ``n_controls`` is 0."""
    out = dict(arrays)
    if not n_controls:
        return out
    last = {"sum_y": "nc_sum_y", "sumsq_y": "nc_sumsq_y", "wsum": "nc_wsum", "zy_c": None}
    for key, nc_key in last.items():
        if key in out:
            a = np.asarray(out[key], dtype=float)
            if nc_key is not None:
                out[nc_key] = a[..., -n_controls:]
            out[key] = a[..., :-n_controls]
    return out


def study_releases(plan: NoisePlan) -> list[tuple[str, float, float]]:
    """Every release a DP study's plan names, as ``(query, σ, Δ)`` (its R ``ps_fit`` rounds are
    R entries): what a node reserves before the study's first release. ``plan`` is the one the
    node derived from the signed terms (:meth:`shared.protocol.PrivacyQuery.plan`, no re-split)."""
    return [(r.query, r.sigma, r.sensitivity) for r in plan.releases]


class NodeLedger(Protocol):
    """What :func:`ledger_step` needs of a node's ledger (:class:`node.ledger.PrivacyLedger`)."""

    def reserve(
        self, *, study_id: str, releases: Sequence[tuple[str, float, float]], ttl_s: float
    ) -> Any: ...

    def charge_reserved(self, *, study_id: str, query: str, sigma: float, sensitivity: float) -> Any: ...

    def complete(self, study_id: str) -> Any: ...

    def cancel(self, study_id: str) -> Any: ...


def ledger_step(query: StudyQuery, plan: NoisePlan | None, ledger: NodeLedger, *, ttl_s: float) -> list[int]:
    """A DP query's ledger step, before any data is read: ``reserve`` records the study's whole
    plan (or the ledger refuses: nothing is reserved or spent), ``cancel`` frees what the
    study's reservation has not converted, and a query of data operations converts each release
    it makes (:func:`planned_releases`) into a charge — never without a live reservation. The
    PSM table is a DP study's last release (:func:`shared.driver.run_study`): charging it
    completes the reservation, so a re-split's slack does not stay reserved; since protocol 7
    the last release is the ATT's weighted sums (``psm_wsum``), which completes it instead, in
    a doubly robust study too since protocol 8 (its ``dr_dsum`` rides in the same operation).

    Returns:
        The ids of the charges made (the node marks them ``sent`` once its reply is handed on).
    """
    control = control_op(query)
    if control == "cancel":
        ledger.cancel(query.study_id)
        return []
    assert plan is not None
    if control == "reserve":
        ledger.reserve(study_id=query.study_id, releases=study_releases(plan), ttl_s=ttl_s)
        return []
    planned = planned_releases(query, plan)
    ids = [
        int(
            ledger.charge_reserved(
                study_id=query.study_id, query=name, sigma=rel.sigma, sensitivity=rel.sensitivity
            ).id
        )
        for name, rel in planned.items()
    ]
    if "psm_wsum" in planned:  # a DR study's too: its weighted sums follow its slope
        ledger.complete(query.study_id)
    return ids


def dp_release(query: StudyQuery, plan: NoisePlan, rng: np.random.Generator) -> Release:
    """The step that turns each exact answer of ``query`` into its DP release under ``plan``
    (the node's own plan, derived from the query's public privacy terms), noise from ``rng``.

    A node builds it only after charging :func:`planned_releases` to its ledger.
    """
    assert query.privacy is not None
    privacy = query.privacy
    planned = planned_releases(query, plan)

    def release(op: str, arrays: dict) -> dict:
        out: dict = {}
        arrays = split_controls(op, arrays, privacy.negative_controls)
        for name in DP_RELEASES[op]:
            if name in planned:
                out.update(
                    noisy_release(
                        query=name,
                        arrays=arrays,
                        sigma=planned[name].sigma,
                        share=privacy.share(name),
                        rng=rng,
                    )
                )
        return out

    return release


def noisy_release(
    *, query: str, arrays: Mapping[str, np.ndarray], sigma: float, share: int = 1, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The release's arrays (only those it names, in release form) with N(0, (σ/√share)²) noise.

    ``share`` is K when this answer is one of K nodes' masked inputs to a SecAgg+ sum: the node
    adds σ/√K, and the sum, the only thing the coordinator sees, carries σ.
    """
    return gaussian_release(arrays=release_arrays(query, arrays), sigma=sigma / math.sqrt(share), rng=rng)


#: Bound on a β's score span |β₀| + Σ|βⱼ|, the largest |logit score| it can give on [0, 1]-scaled
#: covariates, checked on the query alone under DP and exact answers alike. Any β within it scores
#: every row finitely (no partial sum of β₀ + zᵀβ can overflow), so whether a query is answered
#: never depends on a row: a β near the float maximum (β₀ = 1.7e308, β_age = 1e307) scored +inf
#: exactly for the rows past a chosen age and made the node fail after its charge — an exact
#: yes/no on "is anyone here older than x", outside the DP release (tests/security/
#: test_answer_oracles.py). 1e12 is far beyond any fitted logit (probabilities saturate near ±37).
MAX_SCORE_SPAN = 1e12


def _check_beta(beta: tuple[float, ...], d: int) -> np.ndarray:
    if len(beta) != d + 1 or not np.all(np.isfinite(beta)):
        raise QueryRefused(f"beta must hold {d + 1} finite values (intercept + {d} covariates)")
    b = np.array(beta, dtype=float)
    with np.errstate(over="ignore"):  # a span past the float maximum sums to inf: refused
        span = float(np.sum(np.abs(b)))
    if not span <= MAX_SCORE_SPAN:
        raise QueryRefused(f"beta: |β₀| + Σ|βⱼ| exceeds {MAX_SCORE_SPAN:g}, the score span a node accepts")
    return b
