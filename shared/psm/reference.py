r"""Centralised references on pooled rows: the same stratified estimator, and 1:1 NN matching.

:func:`estimate_att_federated` runs a whole study in one process — the coordinator's study
driver over in-process sites that answer with the node's code — and :func:`estimate_att_pooled`
is that run with one "node" holding every row, so federated = pooled up to rounding by design.

:func:`nn_match_att` is the classic alternative: each treated is matched, with replacement, to
the control nearest on the logit score within a caliper (0.2 SD of the logit by convention);
treated without a control inside the caliper are dropped. SE by Abadie & Imbens (2006,
*Econometrica* 74(1), eq. for the ATT with M = 1), which accounts for controls reused as matches:

.. math::
    \widehat V = \frac{1}{N_1^2}\Big[\sum_{i:T}(Y_i - Y_{m(i)} - \hat\tau)^2
                 + \sum_{j:C} K_j (K_j - 1)\, \hat\sigma^2_j\Big],
    \qquad \hat\sigma^2_j = \tfrac12 (Y_j - Y_{j'})^2,

where :math:`K_j` counts how often control j is used and :math:`j'` is the control nearest to
j on the score (the conditional-variance estimate of AI with J = 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import Literal, Sequence

import numpy as np

from shared.answer import SiteArrays
from shared.errors import DataError, EmptyArmError, NoOverlapError
from shared.psm._checks import check_t, check_z
from shared.psm.estimator import Z_95, AttEstimate, estimate_att
from shared.psm.propensity import PropensityFitter
from shared.psm.selection import Stepwise
from shared.psm.strata import logit_sd
from shared.psm.table import PsmTable, psm_table, scale_outcomes
from shared.study import Covariate, Federation, Outcome, Privacy, Site, Strata, StudyInfo, StudySpec
from shared.terms import DesignTerms

__all__ = [
    "NnMatch",
    "PooledAtt",
    "estimate_att_federated",
    "estimate_att_pooled",
    "nn_match_att",
    "reference_spec",
]


@dataclass(frozen=True)
class PooledAtt:
    """A reference run: the estimate and what produced it."""

    estimate: AttEstimate
    fitter: PropensityFitter
    edges: np.ndarray
    table: PsmTable
    logit_sd: float
    n_clipped: np.ndarray  # per outcome, over all rows
    #: a selecting study (``[terms] select``): the terms the stepwise rule chose, and its record
    chosen: DesignTerms | None = None
    selection: Stepwise | None = None


def reference_spec(
    *,
    outcomes: Sequence[Outcome],
    covariates: Sequence[str],
    n_sites: int,
    strata: Literal["auto", "caliper", "quantile"] = "caliper",
    caliper_sd: float = 0.2,
    n_strata: int = 8,
    ridge: float = 1e-6,
    tol: float = 1e-10,
    max_iter: int = 25,
    privacy: Privacy | None = None,
    estimator: Literal["stratified", "dr"] | None = None,
    terms: DesignTerms | None = None,
    binary: Sequence[str] = (),
    site_effects: bool = False,
) -> StudySpec:
    """The study spec of a reference run over arrays already scaled to [0, 1] (covariate
    bounds 0..1), with sites ``site-0`` … ``site-{n_sites-1}``; exact unless ``privacy``;
    ``strata`` as the spec's ``[strata] method``; ``estimator`` as the spec's (None: left unset,
    the spec's default); ``binary`` names the 0/1 covariates (their squares are not terms,
    :mod:`shared.terms`); ``site_effects`` adds the sites' indicators to ``terms``."""
    sites = tuple(Site(name=f"site-{i}") for i in range(n_sites))
    terms = terms or DesignTerms()
    if site_effects:
        terms = DesignTerms(**{**terms.model_dump(), "sites": tuple(s.name for s in sites)})
    if strata not in ("auto", "caliper", "quantile"):
        raise DataError(f"unknown strata method {strata!r} (auto, caliper or quantile)", field="strata")
    return StudySpec(
        study=StudyInfo(name="reference"),
        covariates=tuple(
            Covariate(name=c, lo=0.0, hi=1.0, kind="binary" if c in binary else "continuous")
            for c in covariates
        ),
        outcomes=tuple(outcomes),
        privacy=privacy if privacy is not None else Privacy(enabled=False),
        strata=Strata(method=strata, caliper_sd=caliper_sd, n=n_strata),
        federation=Federation(ridge=ridge, tol=tol, max_newton_iter=max_iter),
        sites=sites,
        terms=terms,
        **({} if estimator is None else {"estimator": estimator}),
    )


def estimate_att_federated(
    *,
    nodes: Sequence[tuple],
    outcomes: Sequence[Outcome],
    covariates: Sequence[str],
    strata: Literal["caliper", "quantile"] = "caliper",
    caliper_sd: float = 0.2,
    n_strata: int = 8,
    ridge: float = 1e-6,
    tol: float = 1e-10,
    max_iter: int = 25,
    estimator: Literal["stratified", "dr"] = "stratified",
    terms: DesignTerms | None = None,
    binary: Sequence[str] = (),
    site_effects: bool = False,
) -> PooledAtt:
    """The exact study in one process: the study driver (:func:`shared.driver.run_study`, the
    coordinator's code) over in-process sites answering with the node's code
    (:mod:`shared.answer`), every cell kept (describe → Newton rounds → edges → tables →
    estimate).

    Args:
        nodes: ``[(z, t, y), ...]`` per node: ``z`` ``(n, d)`` scaled to [0, 1], ``t`` 0/1,
            ``y`` ``(n, O)`` outcomes in ORIGINAL units (each node clips and rescales them by
            the outcomes' public ``[lo, cap]``, as a real node does).
        strata: ``"caliper"`` (width ``caliper_sd`` × SD of the logit) or ``"quantile"``
            (``n_strata`` equal-treated strata read off the public score grid
            :func:`shared.dp.workflow.dp_grid`, from summed per-node histograms).
        estimator: the spec's ``estimator`` (``dr``: :mod:`shared.psm.dr` on the same strata).
        terms: the spec's ``[terms]`` (:mod:`shared.terms`): each node appends them to its ``z``.
        binary: the names of 0/1 covariates (no square of theirs is a term).
        site_effects: each node also appends its site's indicators (``[terms] sites``).

    Raises:
        DataError / CovariateBoundsError: bad input (row numbers are within the node).
        EmptyArmError: an arm has no rows in the whole federation.
        NoOverlapError: the arms are separated on the score, or share no stratum.
        ConvergenceError: the fit fails for another reason.
    """
    from shared.driver import run_study
    from shared.inprocess_sites import InProcessSites

    spec = reference_spec(
        outcomes=outcomes,
        covariates=covariates,
        n_sites=len(nodes),
        strata=strata,
        caliper_sd=caliper_sd,
        n_strata=n_strata,
        ridge=ridge,
        tol=tol,
        max_iter=max_iter,
        estimator=estimator,
        terms=terms,
        binary=binary,
        site_effects=site_effects,
    )
    lo, cap = [o.lo for o in outcomes], [o.cap for o in outcomes]
    sites, clipped = {}, []
    for site, (z, t, y) in zip(spec.sites, nodes):
        z = check_z(z, names=covariates)
        t = check_t(t, n=z.shape[0])
        y01, n_clipped = scale_outcomes(y=y, lo=lo, cap=cap, names=[o.name for o in outcomes])
        if y01.shape[0] != z.shape[0]:
            raise DataError(f"{y01.shape[0]} outcome rows for {z.shape[0]} covariate rows")
        sites[site.name] = SiteArrays(z=z, t=t, y=y01, n_clipped=np.asarray(n_clipped, dtype=float))
        clipped.append(np.asarray(n_clipped, dtype=float))
    run = run_study(spec, InProcessSites(sites))
    assert run.fitter is not None and run.table is not None and run.estimate is not None
    assert run.moments is not None
    return PooledAtt(
        estimate=run.estimate,
        fitter=run.fitter,
        edges=run.table.edges,
        table=run.table,
        logit_sd=logit_sd(moments=run.moments, beta=run.fitter.beta),
        n_clipped=_total(clipped),
        chosen=run.chosen,
        selection=run.selection,
    )


def estimate_att_pooled(
    *, z, t, y, outcomes: Sequence[Outcome], covariates: Sequence[str], **options
) -> PooledAtt:
    """The centralised reference: :func:`estimate_att_federated` with one node holding every
    row — the same functions on pooled rows. ``y`` in original units; ``options`` as there."""
    return estimate_att_federated(nodes=[(z, t, y)], outcomes=outcomes, covariates=covariates, **options)


def estimate_att_cells_withheld(
    *,
    sites: Sequence[tuple],
    beta,
    edges,
    outcomes: Sequence[Outcome],
    covariates: Sequence[str],
    min_cell: int,
) -> AttEstimate:
    """The estimator at ``beta`` and ``edges`` on the pooled rows minus every row that lies in a
    stratum × arm cell of fewer than ``min_cell`` people *at its own site* (``sites``: one
    ``(z, t, y_raw)`` per site): what an exact federation, whose nodes never release such a
    cell, estimates. Computed from rows, so it checks the federated path independently.
    """
    beta, edges = np.asarray(beta, dtype=float), np.asarray(edges, dtype=float)
    kept = []
    for z, t, y in sites:
        z, t = np.asarray(z, dtype=float), np.asarray(t, dtype=float)
        score = np.hstack([np.ones((len(t), 1)), z]) @ beta
        cell = (np.searchsorted(edges, score, side="right") - 1) * 2 + t.astype(int)
        keep = np.bincount(cell, minlength=2 * (len(edges) - 1))[cell] >= min_cell
        kept.append((z[keep], t[keep], np.asarray(y, dtype=float)[keep]))
    y01, _ = scale_outcomes(
        y=np.vstack([k[2] for k in kept]),
        lo=np.array([o.lo for o in outcomes]),
        cap=np.array([o.cap for o in outcomes]),
    )
    table = psm_table(
        z=np.vstack([k[0] for k in kept]),
        t=np.concatenate([k[1] for k in kept]),
        y=y01,
        beta=beta,
        edges=edges,
    )
    return estimate_att(table=table, outcomes=outcomes, covariates=covariates)


def _total(items):
    return reduce(lambda a, b: a + b, items)


@dataclass(frozen=True)
class NnMatch:
    """One outcome's 1:1 nearest-neighbour matching estimate (units of ``y``)."""

    name: str
    att: float
    se: float
    ci: tuple[float, float]
    n_matched: int  # treated with a control inside the caliper
    n_treated_dropped: int
    n_controls_used: int  # distinct controls used as matches

    def as_reference(self) -> dict[str, float]:
        """The form of :attr:`shared.result.OutcomeEstimate.reference`."""
        return {
            "att": self.att,
            "se": self.se,
            "ci_lo": self.ci[0],
            "ci_hi": self.ci[1],
            "n_matched": float(self.n_matched),
            "n_treated_dropped": float(self.n_treated_dropped),
        }


def nn_match_att(*, scores, t, y, caliper: float, names: Sequence[str] | None = None) -> tuple[NnMatch, ...]:
    """1:1 nearest-neighbour matching with replacement on ``scores`` within ``caliper``.

    Args:
        scores: ``(n,)`` logit propensity scores.
        t: ``(n,)`` treatment 0/1.
        y: ``(n, O)`` outcomes in any units (results are in the same units).
        caliper: maximal |score difference| of a match (e.g. ``0.2 * logit_sd``).
        names: outcome names.

    Returns:
        One :class:`NnMatch` per outcome. Ties go to the lower-scored control.

    Raises:
        DataError: NaN or mismatched shapes, ``t`` not 0/1, caliper not positive.
        EmptyArmError: an arm has no rows.
        NoOverlapError: no treated has a control within the caliper.
    """
    s = np.asarray(scores, dtype=float).reshape(-1)
    t = check_t(t, n=s.size)
    y = np.asarray(y, dtype=float)
    y = y[:, None] if y.ndim == 1 else y
    if y.shape[0] != s.size or not np.all(np.isfinite(y)) or not np.all(np.isfinite(s)):
        raise DataError("scores and outcomes must be finite and have one row per person")
    if not caliper > 0:
        raise DataError(f"caliper must be positive, got {caliper!r}", field="caliper")
    names = list(names) if names is not None else [f"y[{k}]" for k in range(y.shape[1])]
    ctrl = np.flatnonzero(t == 0)
    trt = np.flatnonzero(t == 1)
    if ctrl.size == 0 or trt.size == 0:
        raise EmptyArmError(f"an arm is empty: {trt.size} treated, {ctrl.size} controls")
    order = ctrl[np.argsort(s[ctrl], kind="stable")]
    sc = s[order]
    match, dist = _nearest(sc, s[trt])
    ok = dist <= caliper
    if not ok.any():
        raise NoOverlapError(f"no treated has a control within the caliper {caliper:.3g}")
    matched_t, matched_c = trt[ok], match[ok]  # match: positions in the sorted controls
    k_used = np.bincount(matched_c, minlength=sc.size).astype(float)
    sigma2 = _neighbour_variance(sc, y[order]) if sc.size >= 2 else np.zeros((sc.size, y.shape[1]))
    n1 = matched_t.size
    out = []
    for k, name in enumerate(names):
        diff = y[matched_t, k] - y[order][matched_c, k]
        tau = float(diff.mean())
        var = (np.sum((diff - tau) ** 2) + np.sum(k_used * (k_used - 1.0) * sigma2[:, k])) / n1**2
        se = float(np.sqrt(var))
        out.append(
            NnMatch(
                name=name,
                att=tau,
                se=se,
                ci=(tau - Z_95 * se, tau + Z_95 * se),
                n_matched=int(n1),
                n_treated_dropped=int(trt.size - n1),
                n_controls_used=int(np.count_nonzero(k_used)),
            )
        )
    return tuple(out)


def _nearest(sorted_scores: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of the nearest value in ``sorted_scores`` for each query, and the distance."""
    pos = np.searchsorted(sorted_scores, query)
    left = np.clip(pos - 1, 0, sorted_scores.size - 1)
    right = np.clip(pos, 0, sorted_scores.size - 1)
    dl = np.abs(query - sorted_scores[left])
    dr = np.abs(sorted_scores[right] - query)
    take_left = dl <= dr
    return np.where(take_left, left, right), np.where(take_left, dl, dr)


def _neighbour_variance(sorted_scores: np.ndarray, y_sorted: np.ndarray) -> np.ndarray:
    """AI conditional variance with J = 1: half the squared outcome gap to the nearest other
    control on the score, ``(n_c, O)``."""
    m = sorted_scores.size
    idx = np.arange(m)
    left = np.clip(idx - 1, 0, m - 1)
    right = np.clip(idx + 1, 0, m - 1)
    dl = np.where(idx > 0, sorted_scores - sorted_scores[left], np.inf)
    dr = np.where(idx < m - 1, sorted_scores[right] - sorted_scores, np.inf)
    nb = np.where(dl <= dr, left, right)
    return 0.5 * (y_sorted - y_sorted[nb]) ** 2
