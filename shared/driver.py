"""The study sequence, written once: describe -> Newton rounds -> strata -> PSM table -> estimate.

:func:`run_study` is a function of the spec and a federation adapter (:class:`Federation`):

* Flower (:class:`coordinator.flower.federation.GridFederation`, its ``ask``), real SuperNodes
  or the in-process Grid of the unit tests;
* Flower over SecAgg+ (the same class, its ``secure_ask``) for a secure-aggregation study's
  rounds after describe;
* in-process sites (:class:`shared.inprocess_sites.InProcessSites`): exact, or with the nodes'
  own DP release code and seeded noise — the pooled reference
  (:func:`shared.psm.reference.estimate_att_federated`) and the DP simulation the benchmarks
  run (:func:`shared.dp.study_sim.run_dp_study`).

Every adapter answers through :mod:`shared.answer`, so the numbers a benchmark or a coverage
table reports are those of the code that ships.

Round trips cost seconds, so the workflow spends as few as it can. Without DP, the Newton fit
starts from a discriminant direction computed from the describe moments, and once the fit is
nearly converged the PSM-statistics query rides along with the next gradient query (at the same
β); when that round confirms convergence its table is final, otherwise one more round is needed.
The same functions (``shared.psm``) compute each node's answer and the coordinator's sums, so
the result equals the pooled estimator on the union of the rows.

With DP (``[privacy] enabled``), the rounds follow the public noise plan
(:mod:`shared.dp.workflow`): noisy counts, a fixed number of noisy Newton rounds, a noisy score
histogram for quantile strata, the noisy PSM table, and a CI that includes the privacy noise.

Before the first of those releases, a DP study reserves its whole plan on every node
(``reserve``, a plain round even under secure aggregation: it releases nothing). If a node
refuses (its budget, what others have reserved, its policy), every node is told to ``cancel``
and the study fails naming the site, having spent nothing. If the study fails later, for any
reason, the nodes are told to ``cancel`` (best effort; a node that does not hear it lets the
reservation lapse): what they had not yet released is freed, what they released stays charged.
So two studies competing for one budget never both fail mid-study: one reserves, the other is
refused before it spends anything.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from functools import reduce
from typing import Callable, Protocol

import numpy as np

from shared.dp.capround import LargeLossCaps, large_loss_caps, outcomes_at_caps
from shared.dp.drstudy import DR_KEYS, dp_dr_estimates, dp_dr_release, dp_dsum_imbalance, dp_dsum_query
from shared.dp.fitnoise import FitNoise, score_variance, slope_noise_covariance
from shared.dp.plan import NoisePlan, plan_study
from shared.dp.sensitivity import psm_wsum_sensitivity
from shared.dp.workflow import (
    after_describe,
    dp_bound_weights,
    dp_count_sigma,
    dp_edges,
    dp_estimate,
    dp_fitter,
    dp_grid,
    dp_ps_stats,
    dp_start_beta,
    dp_table,
    dp_used,
    dp_wsum_centers,
    dp_wsum_query,
)
from shared.errors import FederationError, UnresolvedFitError
from shared.protocol import (
    Cancel,
    CapHist,
    Describe,
    PsFit,
    PsmStats,
    PsmWsum,
    Reserve,
    ScoreHist,
    StudyQuery,
    control_share,
    controls_apart,
)
from shared.psm.dr import DrStats, estimate_dr, with_dr
from shared.psm.estimator import AttEstimate, Check, estimate_att
from shared.psm.propensity import CovMoments, PropensityFitter, PsStats, initial_beta
from shared.psm.selection import Stepwise, stepwise_basis
from shared.psm.strata import caliper_edges, logit_mean, logit_sd, quantile_edges
from shared.psm.table import HIGHER, PsmTable
from shared.result import OutcomeEstimate
from shared.secure_sum import SECURE_SUM, secure_scale
from shared.study import BudgetSplit, StudySpec
from shared.terms import DesignTerms, as_terms, basis_terms, candidates, derived_covariates

log = logging.getLogger("rehealth.coordinator")

#: Ask for the PSM table alongside the gradient once the Newton step falls below this: Newton
#: converges quadratically, so the next round very likely confirms convergence at that β; if it
#: does not, the table is discarded and only node compute (milliseconds) was lost.
NEAR_TOL = 0.05


@dataclass(frozen=True)
class NodeAnswer:
    """One node's reply to one round: arrays per operation, and its public metadata."""

    site: str
    answers: dict[str, dict[str, np.ndarray]]
    meta: dict


class Federation(Protocol):
    """Where a study's queries go. ``ask`` sends a query to every node in the study and returns
    their answers by site; ``secure_ask`` returns only the SecAgg+ sum (under
    :data:`shared.secure_sum.SECURE_SUM`) and each site's metadata; ``dropped`` names the sites
    that left the study (``federation.min_nodes``) and why."""

    def ask(self, query: StudyQuery, round_name: str) -> dict[str, NodeAnswer]: ...

    def secure_ask(self, query: StudyQuery, round_name: str) -> dict[str, NodeAnswer]: ...

    @property
    def dropped(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class RoundRecord:
    name: str
    seconds: float
    sites: tuple[str, ...]
    node_seconds: float  # slowest node's own compute time


@dataclass
class StudyRun:
    """Everything the workflow learned; turned into a ``StudyResult`` by ``assemble``."""

    spec: StudySpec
    site_counts: dict[str, np.ndarray] = field(default_factory=dict)  # (controls, treated)
    n_clipped: dict[str, np.ndarray] = field(default_factory=dict)
    privacy_spent: dict[str, float] = field(default_factory=dict)  # ledger ε per site, all releases
    privacy_study: dict[str, float] = field(default_factory=dict)  # ε of this study's charges per site
    #: ε each site's ledger held reserved on top of what it had spent, when the study reserved
    #: (all live reservations there, this study's included)
    privacy_reserved: dict[str, float] = field(default_factory=dict)
    fitter: PropensityFitter | None = None
    plan: NoisePlan | None = None
    resplit: BudgetSplit | None = None  # a re-split after describe (the coordinator no longer asks one)
    secure: tuple[int, float] | None = None  # SecAgg+ after describe: (nodes K, public scale)
    #: the large-loss cap round's released caps and clipping (shared/dp/capround.py), if it ran
    caps: LargeLossCaps | None = None
    #: SecAgg+'s scale for the weighted sums and the σ bound it covers (≥ the σ the nodes use)
    secure_wsum: tuple[float, float] | None = None
    strata_method: str = "caliper"
    moments: CovMoments | None = None  # exact studies: the summed describe moments
    at_describe: Check | None = None  # DP studies: ``dp_fit_resolution`` (stop rule) at describe's counts
    table: PsmTable | None = None
    estimate: AttEstimate | None = None
    #: the ATT on each of the spec's negative controls (``estimate`` holds the spec's outcomes
    #: only); under DP from their own releases (``nc_*``, stratified even in a DR study, whose
    #: controls still ride in its releases), exact studies from the same table
    negative_controls: tuple[OutcomeEstimate, ...] = ()
    rounds: list[RoundRecord] = field(default_factory=list)
    compute_s: float = 0.0
    #: a selecting study (``[terms] select``): the chosen candidate terms (in candidate order,
    #: as every later query names them) and the stepwise rule's record (its β in the nodes'
    #: column order: the start of the study's own fit)
    chosen: DesignTerms | None = None
    selection: Stepwise | None = None


Progress = Callable[[str, dict], None]


def _sum(items):
    return reduce(lambda a, b: a + b, items)


class _Rounds:
    """Sends one round's operations to the federation and keeps the books."""

    def __init__(self, spec: StudySpec, fed: Federation, run: StudyRun, progress: Progress, grant=None):
        self.spec, self.fed, self.run, self.progress = spec, fed, run, progress
        self.grant = grant
        self.chosen: DesignTerms | None = None  # a selecting study's chosen terms, sent with each query

    def ask(self, ops: tuple, name: str) -> dict:
        """One round; under secure aggregation (after describe) a SecAgg+ sum, whose answers
        hold the sum under ``SECURE_SUM`` and each site's metadata under its name."""
        started = time.perf_counter()
        self.progress("round_start", {"round": name, "ops": [o.op for o in ops]})
        nodes, scale = self.run.secure or (None, None)
        query = StudyQuery.for_spec(
            self.spec,
            ops,
            resplit=self.run.resplit,
            secure_nodes=nodes,
            secure_scale=scale,
            grant=self.grant,
            caps=self.run.caps.caps if self.run.caps is not None else (),
            chosen=self.chosen,
        )
        answers = (self.fed.secure_ask if nodes is not None else self.fed.ask)(query, name)
        if not answers:
            raise FederationError(f"round {name}: no node answered", round_name=name)
        sites = tuple(sorted(s for s in answers if s != SECURE_SUM))
        rec = RoundRecord(
            name,
            time.perf_counter() - started,
            sites,
            max(float(a.meta.get("seconds", 0.0)) for a in answers.values()),
        )
        self.run.rounds.append(rec)
        for site, a in answers.items():
            if "epsilon_spent" in a.meta:
                self.run.privacy_spent[site] = float(a.meta["epsilon_spent"])
            if "epsilon_study" in a.meta:
                self.run.privacy_study[site] = float(a.meta["epsilon_study"])
            if "epsilon_reserved" in a.meta and name == "reserve":
                self.run.privacy_reserved[site] = float(a.meta["epsilon_reserved"])
        self.progress("round_end", {"round": name, "seconds": rec.seconds, "sites": list(rec.sites)})
        log.info("round %s: %d sites in %.2f s", name, len(rec.sites), rec.seconds)
        return answers

    def total(self, answers: dict, op: str, key: str) -> np.ndarray:
        return _sum(np.asarray(a.answers[op][key], dtype=float) for a in answers.values() if op in a.answers)

    def describe(self) -> dict:
        answers = self.ask((Describe(),), "describe")
        for site, a in answers.items():
            self.run.site_counts[site] = np.asarray(a.answers["describe"]["count"], dtype=float)
            if "n_clipped" in a.answers["describe"]:
                self.run.n_clipped[site] = a.answers["describe"]["n_clipped"]
        return answers


def run_study(spec: StudySpec, fed: Federation, progress: Progress | None = None, grant=None) -> StudyRun:
    """Run the study over ``fed`` and return what it learned (raises ``FederationError`` and
    the estimator's typed errors). ``grant``: the operator's signed grant for ``spec``
    (:class:`shared.grant.SignedGrant`), sent with every query."""
    run = StudyRun(spec=spec)
    rounds = _Rounds(spec, fed, run, progress or (lambda event, data: None), grant)
    if spec.privacy.enabled:
        _run_private(spec, rounds, run)
    else:
        _run_exact(spec, rounds, run, fed)
    rounds.progress("estimated", {})
    return run


def _run_exact(spec: StudySpec, rounds: _Rounds, run: StudyRun, fed: Federation) -> None:
    moments = {s: CovMoments.from_arrays(a.answers["describe"]) for s, a in rounds.describe().items()}

    def total_moments() -> CovMoments:
        return _sum(m for s, m in moments.items() if s not in fed.dropped)

    columns = spec.design_covariates
    start = initial_beta(moments=total_moments())
    if spec.terms.select != "none":  # choose the basis, then describe it (the caliper's SD)
        run.selection, run.chosen = _select_basis(spec, rounds, run, start)
        rounds.chosen = run.chosen
        columns = spec.covariates + derived_covariates(
            spec.covariates, basis_terms(spec.covariates, spec.terms, run.chosen)
        )
        moments = {s: CovMoments.from_arrays(a.answers["describe"]) for s, a in rounds.describe().items()}
        start = run.selection.beta
    d = len(columns)
    cfg = spec.federation
    fitter = PropensityFitter(
        p=d + 1,
        ridge=cfg.ridge,
        tol=cfg.tol,
        max_iter=cfg.max_newton_iter,
        beta0=start,
        near_tol=NEAR_TOL,
    )
    run.fitter = fitter
    quantile = spec.strata.method == "quantile"
    run.strata_method = "quantile" if quantile else "caliper"
    dr = spec.estimator == "dr"  # the sites also return their controls' cross-products
    tables: dict | None = None
    while True:
        beta = tuple(float(b) for b in fitter.beta)
        edges = (
            None if quantile or not fitter.near_converged else _caliper(spec, total_moments(), fitter.beta)
        )
        ops: tuple = (PsFit(beta=beta),) + (
            (PsmStats(beta=beta, edges=tuple(edges), slope=dr),) if edges is not None else ()
        )
        answers = rounds.ask(ops, f"ps-fit-{fitter.iterations + 1}")
        t0 = time.perf_counter()
        converged = fitter.update(_sum(PsStats.from_arrays(a.answers["ps_fit"]) for a in answers.values()))
        run.compute_s += time.perf_counter() - t0
        rounds.progress("newton", {"iteration": fitter.iterations, "converged": converged})
        if converged:
            tables = answers if edges is not None else None
            break
    beta = tuple(float(b) for b in fitter.beta)
    if tables is None:
        if quantile:
            hist = rounds.total(rounds.ask((ScoreHist(beta=beta),), "score-hist"), "score_hist", "count")
            edges = quantile_edges(
                grid=dp_grid(beta=fitter.beta), treated_counts=hist[:, 1], n_strata=spec.strata.n
            )
        else:
            edges = _caliper(spec, total_moments(), fitter.beta)
        tables = rounds.ask((PsmStats(beta=beta, edges=tuple(edges), slope=dr),), "psm-stats")
    t0 = time.perf_counter()
    run.table = _sum(
        PsmTable.from_arrays(a.answers["psm_stats"]) for s, a in tables.items() if s not in fed.dropped
    )
    run.moments = total_moments()
    run.estimate = estimate_att(
        table=run.table, outcomes=spec.analysed_outcomes, covariates=[c.name for c in columns]
    )
    if dr:  # the same strata, table and diagnostics; each outcome's ATT, SE and CI are DR's
        stats = _sum(
            DrStats.from_answer(a.answers["psm_stats"]) for s, a in tables.items() if s not in fed.dropped
        )
        run.estimate = with_dr(run.estimate, estimate_dr(stats=stats, outcomes=spec.analysed_outcomes))
    _split_negative_controls(spec, run)
    run.compute_s += time.perf_counter() - t0


def _select_basis(
    spec: StudySpec, rounds: _Rounds, run: StudyRun, start: np.ndarray
) -> tuple[Stepwise, DesignTerms]:
    """Imbens & Rubin's stepwise choice of the propensity basis (:mod:`shared.psm.selection`)
    over the study's own rounds, from covariates and treatment only (no outcome is read): each
    refit round asks ``ps_fit`` over the terms chosen so far, each score round over every
    candidate (:func:`shared.terms.candidates`, which every node derives itself from the
    signed covariates and checks the query against). Returns the rule's record and the chosen
    terms, in candidate order.

    Raises:
        ConvergenceError, NoOverlapError: a refit failed (as the study's own fit would).
    """
    covs = spec.covariates
    cands = candidates(covs)
    n_base = len(spec.design_covariates)  # the covariates and any site effects
    asked = {"fit": 0, "score": 0}

    def stats_at(beta: np.ndarray, params) -> PsStats:
        kind = "score" if params is None else "fit"
        asked[kind] += 1
        if params is None:
            idx, b = list(range(len(cands))), beta
        else:
            idx, b = [k - 1 - n_base for k in params if k > n_base], beta[list(params)]
        rounds.chosen = as_terms([cands[i] for i in idx], covs)
        at = _node_order(len(covs), n_base - len(covs), len(idx))
        answers = rounds.ask((PsFit(beta=tuple(float(x) for x in b[at])),), f"select-{kind}-{asked[kind]}")
        t0 = time.perf_counter()
        total = _sum(PsStats.from_arrays(a.answers["ps_fit"]) for a in answers.values())
        g, H = np.empty_like(total.g), np.empty_like(total.H)
        g[at], H[np.ix_(at, at)] = total.g, total.H  # back to the rule's order
        run.compute_s += time.perf_counter() - t0
        return replace(total, g=g, H=H)

    cfg = spec.federation
    step = stepwise_basis(
        stats_at,
        n_base=n_base,
        n_candidates=len(cands),
        ridge=cfg.ridge,
        tol=cfg.tol,
        max_iter=cfg.max_newton_iter,
        start=start,
    )
    # the final fit starts from the rule's β, in the nodes' column order
    step = replace(step, beta=step.beta[_node_order(len(covs), n_base - len(covs), len(step.chosen))])
    rounds.progress("selected", {"terms": len(step.chosen), "rounds": step.rounds})
    log.info(
        "stepwise selection: %d of %d candidate terms in %d rounds", len(step.chosen), len(cands), step.rounds
    )
    return step, as_terms([cands[i] for i in sorted(step.chosen)], covs)


def _node_order(n_covariates: int, n_sites: int, n_chosen: int) -> np.ndarray:
    """Where each of a node's parameters sits in the stepwise rule's order. The rule keeps the
    declared basis first (intercept, covariates, site indicators), then the chosen terms; a
    node appends the chosen terms before the site indicators (:func:`shared.terms.expand`).
    ``beta_rule[at]`` is the node's β; the node's gradient ``g`` goes back as ``rule[at] = g``."""
    d, s = n_covariates, n_sites
    return np.r_[0 : 1 + d, 1 + d + s : 1 + d + s + n_chosen, 1 + d : 1 + d + s].astype(int)


def noise_plan(spec: StudySpec) -> NoisePlan:
    """The DP study's public noise plan before describe (each node derives the same)."""
    p = spec.privacy
    c = controls_apart(spec)
    return plan_study(
        epsilon=p.epsilon,
        delta=p.delta,
        split=p.split,
        n_covariates=len(spec.design_covariates),
        n_outcomes=len(spec.analysed_outcomes) - c,
        n_negative_controls=c,
        control_share=control_share(spec),
        n_ps_rounds=p.ps_rounds,
        accountant=p.accountant,
        estimator=spec.estimator,
        cap_round=p.large_loss_cap,
    )


def _run_private(spec: StudySpec, rounds: _Rounds, run: StudyRun) -> None:
    """A DP study: reserve its whole plan on every node, then release; cancel on any failure."""
    _reserve(spec, rounds)
    try:
        _release(spec, rounds, run)
    except BaseException:
        _cancel(spec, rounds)
        raise


def _reserve(spec: StudySpec, rounds: _Rounds) -> None:
    """The ``reserve`` round (plain, releases nothing). A node that refuses ends the study,
    every reservation made is cancelled, and the error names the site: nothing was spent.
    (With ``federation.min_nodes`` a refusing node is dropped like any failed node instead, and
    the study goes on without it; it reserved and spent nothing.)"""
    try:
        rounds.ask((Reserve(),), "reserve")
    except FederationError as e:
        _cancel(spec, rounds)
        site = _named_site(spec, e)
        raise FederationError(
            f"DP study {spec.study.name}: site {site} refused to reserve the study's "
            f"privacy budget ({e}). Nothing was spent: a DP study reserves its whole budget on "
            "every node before its first release, and the reservations made were cancelled",
            node=site,
            round_name="reserve",
        ) from None
    except BaseException:
        _cancel(spec, rounds)
        raise


def _named_site(spec: StudySpec, e: FederationError) -> str:
    """The site a round's failure is about. In the first round the coordinator may know a node
    only by its Flower id; a node's error reply starts with ``site <name>:`` (its fixed form,
    ``node/flower/client_app.py``), so the spec's site it names is the one."""
    sites = {s.name for s in spec.sites}
    if e.node in sites:
        return str(e.node)
    named = [s for s in sorted(sites) if f"site {s}:" in str(e)]
    return named[0] if len(named) == 1 else str(e.node or "a node")


def _cancel(spec: StudySpec, rounds: _Rounds) -> None:
    """Best effort: tell every node still in the study to free what its reservation has not
    released. A node that does not hear it lets the reservation lapse on its own."""
    query = StudyQuery.for_spec(spec, (Cancel(),), grant=rounds.grant)
    try:
        rounds.fed.ask(query, "cancel")
        log.info("DP study %s: the nodes' unreleased reservations were cancelled", spec.study.name)
    except Exception as e:  # noqa: BLE001 - the study's own failure is what the operator must see
        log.warning(
            "DP study %s: cancelling its reservations failed (%s); they lapse on their own",
            spec.study.name,
            e,
        )


def _release(spec: StudySpec, rounds: _Rounds, run: StudyRun) -> None:
    d, p = len(spec.design_covariates), spec.privacy
    plan = noise_plan(spec)
    run.plan, run.strata_method = plan, "equal-width on the treated score range (DP)"
    described = rounds.describe()
    counts = rounds.total(described, "describe", "count")
    sa = {"secure_aggregation": p.secure_aggregation}
    try:
        gate = after_describe(
            counts=counts,
            n_covariates=d,
            plan=plan,
            split=p.split,
            n_nodes=len(described),
            unresolved_fit=p.unresolved_fit,
            **sa,
        )
    except UnresolvedFitError as e:
        raise UnresolvedFitError(
            f"DP study {spec.study.name} {e}. Only describe's share of the budget was spent ({_spent(run)})"
        ) from None
    for check in (gate.check, gate.strata):  # said now, while the operator can still stop the study
        if check is not None and not check.passed:
            log.warning("DP study %s: %s", spec.study.name, check.message)
    run.resplit, plan, run.at_describe = gate.resplit, gate.plan, gate.decisive
    run.plan = plan
    if p.secure_aggregation:
        if len(described) < 2:
            raise FederationError(
                f"secure aggregation sums over several nodes; only {len(described)} answered describe",
                round_name="describe",
            )
        run.secure = (len(described), _secure_scale(counts, plan, len(described)))
        log.info(
            "DP study %s: the rounds after describe are SecAgg+ sums over %d nodes",
            spec.study.name,
            len(described),
        )

    def nodes(answers: dict) -> int:
        return sum(1 for s in answers if s != SECURE_SUM)

    if p.large_loss_cap:  # the caps every later release is read at (shared/dp/capround.py)
        answers = rounds.ask((CapHist(),), "cap-hist")
        run.caps = large_loss_caps(
            hist=rounds.total(answers, "cap_hist", "count"),
            outcomes=spec.analysed_outcomes,
            plan=plan,
            n_nodes=nodes(answers),
            **sa,
        )
        log.info("DP study %s: large-loss caps %s", spec.study.name, dict(zip(run.caps.names, run.caps.caps)))
    fitter = dp_fitter(
        plan=plan,
        n_covariates=d,
        ridge=spec.federation.ridge,
        beta0=dp_start_beta(counts=counts, n_covariates=d),
    )
    run.fitter = fitter
    for r in range(plan.n_ps_rounds):
        answers = rounds.ask((PsFit(beta=tuple(float(b) for b in fitter.beta)),), f"ps-fit-{r + 1}")
        last = dp_ps_stats(
            g=rounds.total(answers, "ps_fit", "g"),
            H=rounds.total(answers, "ps_fit", "H"),
            plan=plan,
            n_nodes=nodes(answers),
            **sa,
        )
        fitter.update(last)
    fit_sigma = plan.release("ps_fit").total_sigma(nodes(answers), **sa)
    beta = tuple(float(b) for b in fitter.beta)
    answers = rounds.ask((ScoreHist(beta=beta),), "score-hist")
    hist = rounds.total(answers, "score_hist", "count")
    fit_noise = FitNoise(
        noise_cov=slope_noise_covariance(
            H=last.H + spec.federation.ridge * np.eye(d + 1), sigma_fit=fit_sigma
        ),
        var_score=score_variance(grid=dp_grid(beta=fitter.beta), hist=hist),
    )
    edges = dp_edges(
        beta=fitter.beta,
        hist=hist,
        plan=plan,
        n_nodes=nodes(answers),
        n_treated=float(counts[1]),
        requested=spec.strata.n if spec.strata.method == "quantile" else None,
        **sa,
    )
    dr = spec.estimator == "dr"  # the slope release too, and the imbalance's weighted sums (drstudy.py)
    answers = rounds.ask((PsmStats(beta=beta, edges=tuple(float(e) for e in edges), slope=dr),), "psm-stats")
    keys = ("count", "sum_y", "sumsq_y") + (("sum_z", "sumsq_z") if plan.has("psm_balance") else ())
    n_nc = plan.n_negative_controls  # the controls' sums come in their own releases (nc_*)
    keys += ("nc_sum_y", "nc_sumsq_y") if n_nc else ()
    sums = _join_controls({k: rounds.total(answers, "psm_stats", k) for k in keys + (DR_KEYS if dr else ())})
    run.table = dp_table(
        main=sums, balance=sums if plan.has("psm_balance") else None, edges=edges, n_covariates=d
    )
    dr_release = (
        dp_dr_release(sums=sums, edges=edges, plan=plan, n_nodes=nodes(answers), **sa) if dr else None
    )
    # strata with few (noisy) controls merged with their neighbours (shared/dp/weightbound.py)
    run.table, cells, weight_check = dp_bound_weights(run.table, plan=plan, n_nodes=nodes(answers), **sa)
    wsum = dsum = None
    op = dp_wsum_query(
        table=run.table, beta=fitter.beta, plan=plan, n_nodes=nodes(answers), cells=cells, **sa
    )
    if op is not None and n_nc:  # each part's centres chosen for its own release's noise
        o = len(spec.analysed_outcomes) - n_nc
        used = dp_used(table=run.table, plan=plan, n_nodes=nodes(answers), **sa)
        parts = [
            dp_wsum_centers(
                table=_outcome_columns(run.table, cols),
                used=used,
                plan=part_plan,
                n_nodes=nodes(answers),
                cells=cells,
                **sa,
            )
            for cols, part_plan in ((slice(0, o), plan), (slice(o, None), plan.for_controls()))
        ]
        op = op.model_copy(
            update={"center": tuple(float(c) for c in np.concatenate(parts, axis=-1).reshape(-1))}
        )
    if op is not None and dr:  # the imbalance d as the covariates' weighted sums (dr_dsum)
        op = dp_dsum_query(
            op, table=run.table, used=dp_used(table=run.table, plan=plan, n_nodes=nodes(answers), **sa)
        )
    if op is not None:  # None: no stratum holds both arms, and dp_estimate says so
        answers = _wsum_round(spec, rounds, run, op, plan)
        wsum = rounds.total(answers, "psm_wsum", "wsum")
        if n_nc:
            wsum = np.concatenate([wsum, rounds.total(answers, "psm_wsum", "nc_wsum")])
        if dr:
            dsum = rounds.total(answers, "psm_wsum", "dsum")
    outcomes = outcomes_at_caps(spec.analysed_outcomes, run.caps)

    dr_estimates = imbalance = None
    if dr_release is not None and op is not None and wsum is not None and dsum is not None:
        count_sigma = dp_count_sigma(plan, nodes(answers), p.secure_aggregation, cells, run.table.n_strata)
        dr_estimates = dp_dr_estimates(
            dr_release,
            plan=plan,
            n_nodes=nodes(answers),
            outcomes=outcomes,
            rng=np.random.default_rng(spec.study.seed),
            table=run.table,
            op=op,
            wsum=wsum,
            dsum=dsum,
            sigma_count=count_sigma,
            **sa,
        )
        # d is the numerator of the SMD after weighting: the balance reads it too (shared/psm/balance.py)
        imbalance = dp_dsum_imbalance(
            plan=plan,
            n_nodes=nodes(answers),
            table=run.table,
            op=op,
            dsum=dsum,
            sigma_count=count_sigma,
            **sa,
        )

    def estimate(table: PsmTable, plan: NoisePlan, cols: slice) -> AttEstimate:
        return dp_estimate(
            table=table,
            plan=plan,
            n_nodes=nodes(answers),
            outcomes=outcomes[cols],
            covariates=[c.name for c in spec.design_covariates],
            wsum=None if wsum is None else wsum[cols],
            fit_noise=fit_noise,
            cells=cells,
            weight_check=weight_check,
            secure_aggregation=p.secure_aggregation,
            dr=dr_estimates,
            imbalance=imbalance,
        )

    if not n_nc:
        run.estimate = estimate(run.table, plan, slice(None))
        _split_negative_controls(spec, run)
        return
    # the controls apart: the outcomes' estimate from the outcomes' releases alone, the
    # controls' from theirs (the counts, released once, shared); the table keeps both
    o = len(outcomes) - n_nc
    run.estimate = estimate(_outcome_columns(run.table, slice(0, o)), plan, slice(0, o))
    controls = estimate(_outcome_columns(run.table, slice(o, None)), plan.for_controls(), slice(o, None))
    run.negative_controls = controls.outcomes


def _join_controls(sums: dict) -> dict:
    """The summed PSM releases with the negative controls' sums (``nc_*``) appended to the
    outcomes' as the table's last outcomes (the order of ``spec.analysed_outcomes``)."""
    out = dict(sums)
    for key in ("sum_y", "sumsq_y"):
        nc = out.pop(f"nc_{key}", None)
        if nc is not None:
            out[key] = np.concatenate([out[key], nc], axis=-1)
    return out


def _outcome_columns(table: PsmTable, cols: slice) -> PsmTable:
    """The table with only the outcomes ``cols`` (the same strata, counts and balance)."""
    higher = {k: getattr(table, k)[..., cols] for k in HIGHER} if table.has_higher else {}
    return replace(table, sum_y=table.sum_y[..., cols], sumsq_y=table.sumsq_y[..., cols], **higher)


def _split_negative_controls(spec: StudySpec, run: StudyRun) -> None:
    """The estimator ran once over the outcomes and the negative controls (one table, one set
    of releases); the estimate keeps the outcomes, the negative controls go apart."""
    if not spec.negative_controls or run.estimate is None:
        return
    names = {o.name for o in spec.negative_controls}
    est = run.estimate
    run.negative_controls = tuple(o for o in est.outcomes if o.name in names)
    run.estimate = replace(est, outcomes=tuple(o for o in est.outcomes if o.name not in names))


def _wsum_round(spec: StudySpec, rounds: _Rounds, run: StudyRun, op: PsmWsum, plan: NoisePlan) -> dict:
    """The ``psm_wsum`` round. Under secure aggregation its public scale also covers the
    weighted sums' noise, whose σ grows with the largest weight (:mod:`shared.dp.wsum`)."""
    if run.secure is None:
        return rounds.ask((op,), "psm-wsum")
    k, scale = run.secure
    n_nc = plan.n_negative_controls
    n_d = len(spec.design_covariates) if op.z_center else 0  # a DR study's imbalance (dr_dsum)
    sigma = max(
        plan.release(name)
        .for_sensitivity(2.0 * psm_wsum_sensitivity(n_outcomes=n, max_weight=op.max_weight))
        .sigma
        for name, n in (("psm_wsum", len(spec.analysed_outcomes) - n_nc), ("nc_wsum", n_nc), ("dr_dsum", n_d))
        if n
    )  # an upper bound: centres in [0, 1] keep the sensitivity within √O·v_max (√D·v_max)
    # |Σ v (y − ½)| is at most about N_T ≤ the rows bound the scale holds; add the noise's
    # margin (secure_scale is linear in both: this is secure_scale(rows, σ_max + σ_wsum))
    wsum_scale = (
        scale + secure_scale(rows_upper=0.0, sigma_max=sigma) - secure_scale(rows_upper=0.0, sigma_max=0.0)
    )
    run.secure, run.secure_wsum = (k, wsum_scale), (wsum_scale, sigma)
    try:
        return rounds.ask((op,), "psm-wsum")
    finally:
        run.secure = (k, scale)


def _secure_scale(counts: np.ndarray, plan: NoisePlan, k: int) -> float:
    """SecAgg+'s public scale from describe's noisy counts: no node holds more rows than their
    total plus 5 noise SDs (:func:`shared.secure_sum.secure_scale`)."""
    rows_upper = float(np.sum(counts)) + 5.0 * math.sqrt(2.0) * plan.release("describe").total_sigma(k)
    return secure_scale(rows_upper=rows_upper, sigma_max=max(r.sigma for r in plan.releases))


def _spent(run: StudyRun) -> str:
    """The nodes' ledger totals as reported with their answers, e.g. ``ε 0.05–0.06 per node``."""
    eps = sorted(run.privacy_spent.values())
    if not eps:
        return "the nodes reported no ledger total"
    span = f"{eps[0]:.3g}" if eps[0] == eps[-1] else f"{eps[0]:.3g}–{eps[-1]:.3g}"
    return f"ledger ε {span} per node, all studies on these datasets included"


def _caliper(spec: StudySpec, moments: CovMoments, beta: np.ndarray) -> np.ndarray:
    """Caliper-width edges on the logit score, from public quantities and pooled moments only."""
    return caliper_edges(
        beta=beta,
        sd=logit_sd(moments=moments, beta=beta),
        caliper_sd=spec.strata.caliper_sd,
        center=logit_mean(moments=moments, beta=beta),
    )
