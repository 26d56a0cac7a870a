"""The report's method section: what was estimated, how, from what was released, on which
assumptions and with which limits, written from the result and its spec (no number typed in).

A reader who accepts an estimate as evidence must be able to see the design, the models, the
variance, the privacy mechanism and its cost, and what the estimate rests on (OHDSI's study
reports; VanderWeele & Ding for the assumptions). The privacy text states exactly what left the
sites: an exact study released exact aggregates, which are not anonymous when a cell is small.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from coordinator.report import fmt
from coordinator.report.document import Attrition, MethodSection, OutcomeRow, StratumRow
from shared.result import Selection, StudyResult
from shared.synth.records import INDEX_WINDOW_DAYS, OUTCOME_PERIOD_DAYS

#: A node's default floor on an exact answer's cells (:class:`node.policy.NodePolicy`
#: ``min_cell``; the coordinator cannot import the node, so the default is restated here and a
#: test holds the two equal). A pooled non-empty cell below it shows some site lowered it.
SMALL_CELL = 11


def method_section(
    result: StudyResult,
    outcomes: tuple[OutcomeRow, ...],
    strata: tuple[StratumRow, ...],
    attrition: Attrition,
) -> MethodSection:
    spec = result.spec
    return MethodSection(
        design=_design(result),
        propensity_model=_propensity(result),
        strata=_strata(result, strata, attrition),
        outcome_model=outcome_model(result),
        variance=(
            "Var = Σ_b w_b² s²_bC (1/n_bT + 1/n_bC), w_b the treated share of stratum b and s²_bC the "
            "controls' within-stratum variance (the sample ATT's error, shared/psm/estimator.py); "
            "cells worth fewer than 10 degrees of freedom (a binary outcome's cell about twice its "
            "events) borrow a variance from neighbouring strata. The propensity score is treated as "
            "known; for the ATT its estimation can widen or narrow the true interval (Abadie & Imbens "
            "2016; measured on synthetic data in docs/STATISTICS.md). "
            + (DR_VARIANCE if result.estimator == "dr" else "")
            + (
                "The privacy noise's SE is added in quadrature, and where the fit's noise may bias "
                "the estimate the CI is widened to cover that bias. "
                if result.privacy.enabled
                else ""
            )
            + ci_statement(result)
        ),
        privacy=privacy_statement(result, strata),
        per_site=_per_site(result),
        multiplicity=multiplicity_note(outcomes),
        negative_controls=negative_control_note(result),
        assumptions=ASSUMPTIONS,
        limitations=_limitations(result, spec),
    )


#: How an exact stratified study's CI is formed (shared/psm/skew.py).
SKEW_T_CI = (
    "95% CI: Hall's (1992) skewness-corrected interval with a t reference — the studentized "
    "estimate's skewness and its covariance with the variance estimate, from each stratum's "
    "third power sums, are removed by Hall's monotone cubic transformation, and the quantile is "
    "Student's t at Satterthwaite's degrees of freedom counting the cells' fourth moments "
    "(heavy tails give fewer degrees of freedom and a wider interval). Skewed outcomes "
    "(costs, rare events) get an interval that is asymmetric about the estimate."
)


def ci_statement(result: StudyResult) -> str:
    """Which interval each outcome's CI is: the skewness-corrected one (exact stratified
    studies whose sites released Σy³, Σy⁴) or the Wald interval."""
    methods = {o.ci_method for o in result.outcomes}
    wald = "95% CI = estimate ± 1.96 SE (normal approximation)."
    skew = SKEW_T_CI + (
        " The doubly robust estimate takes the stratified interval's shape (its ends in SE units) "
        "about its own estimate and SE."
        if result.estimator == "dr"
        else ""
    )
    if methods == {"skew_t"}:
        return skew
    if "skew_t" in methods:
        skewed = ", ".join(o.name for o in result.outcomes if o.ci_method == "skew_t")
        return f"{skew} Outcomes with it: {skewed}; the others: {wald}"
    return wald


#: The doubly robust estimator's variance, added to the stratified form it scales.
DR_VARIANCE = (
    "Doubly robust estimate: each cell variance is scaled by the share of the within-stratum "
    "variance the outcome model leaves, and the estimated slope's variance σ̂² dᵀS_zz⁻¹d is added "
    "(delta method, shared/psm/dr.py). Under differential privacy the stratified part and the "
    "imbalance are released as weighted sums with the weights the noisy counts fix (psm_wsum, "
    "dr_dsum) and the slope from its own release (dr_slope); the privacy SE is the weighted "
    "sums' delta-method SE plus a parametric bootstrap of the adjustment's known noise "
    "(shared/dp/drwsum.py). That released imbalance is also the numerator of each covariate's "
    "SMD after weighting: under differential privacy the balance table reads it there, with its "
    "noise SD, over the pooled SD from the balance release (shared/psm/balance.py); the SMD "
    "before and the variance ratios come from the balance release. "
)


#: Why the stratified estimator is the default, with or without DP: the measurements to cite.
DEFAULT_REASON = (
    "Why it is the default, exact or differentially private (measured on the synthetic "
    "benchmark): exact, the doubly robust estimate did not meet the coverage and bias "
    "acceptance in every cell (docs/benchmarks/dr.md); under differential privacy, released "
    "by weighted sums, its CI was about twice as wide as the stratified one on the same data "
    "(1.7–2.7×) and more biased where the stratified estimate was not, covering better only "
    "where the stratified one under-covered (docs/benchmarks/dr_privacy.md)."
)


def outcome_model(result: StudyResult) -> str:
    """What the headline estimate is: which estimator the spec chose, and what it models."""
    if result.estimator == "dr":
        beside = "; ".join(
            f"{o.name} {fmt.num(o.att_stratified)} (doubly robust {fmt.num(o.att)})"
            for o in result.outcomes
            if o.att_stratified is not None
        )
        return (
            'Doubly robust (the spec\'s estimator = "dr"): regression adjustment within the '
            "propensity strata. On the controls, a linear model of each outcome on the covariates "
            "with one intercept per stratum and one slope shared by all strata, fitted from the "
            "sites' summed cross-products; the ATT is the stratified estimate minus the slope "
            "times the covariate imbalance left inside the strata. It is unbiased if either the "
            "propensity strata balance the covariates or the untreated outcome is linear in them "
            "(plus stratum shifts); it does not repair confounding that neither model captures "
            "(a step in the outcome at an age, say). The stratified estimate on the same strata: "
            + (beside or "not recorded")
            + ". Chosen per study: the default estimator is the stratified one. "
            + DEFAULT_REASON
        )
    return (
        "Within each stratum the difference in mean outcome between treated and controls; the "
        "ATT is their average weighted by the treated per stratum (the spec's estimator = "
        '"stratified", the default). No outcome regression model is fitted, so the estimate '
        "rests on the propensity strata alone (residual confounding within strata is not removed). "
        + DEFAULT_REASON
    )


ASSUMPTIONS = (
    "No unmeasured confounding (conditional exchangeability): given the covariates listed below, "
    "who took part is unrelated to the outcomes they would have had; the E-values say how strong "
    "a confounder outside them would have to be to change the conclusion.",
    "Positivity: every treated person had a real chance of not taking part; checked by common "
    "support (attrition above) and equipoise, and treated outside common support are excluded.",
    "Consistency and no interference: one well-defined intervention, and one person's "
    "participation does not change a colleague's outcome.",
    "Outcomes are recorded in the same way, over the same follow-up, for both arms.",
)


def _design(result: StudyResult) -> str:
    text = (
        "New-user cohort design, derived at each site from its persons, intervention log and "
        "outcomes (node/trajectory.py): a person's index date is study entry, when the covariates "
        "were measured; people who started the intervention before their index are excluded; "
        "treated are those who started it within the site's window after their index, controls "
        "the other eligible people (exposure fixed when the window closes, as in an intention-to-"
        "treat analysis); outcomes are counted over the same follow-up from the index in both arms. "
        "The index window, grace period and follow-up are set at each site and are not part of "
        "the signed specification."
    )
    if result.truth is not None:
        text += (
            f" In this simulated study the synthetic sites use a {INDEX_WINDOW_DAYS}-day grace "
            f"period and a {OUTCOME_PERIOD_DAYS}-day follow-up."
        )
    return text


def _propensity(result: StudyResult) -> str:
    spec = result.spec
    k = len(spec.get("covariates", []))
    fed = spec.get("federation", {})
    p = result.propensity
    fit = (
        f"{p.iterations} noisy Newton rounds fixed in advance (convergence is not tested under DP)"
        if result.privacy.enabled
        else f"{p.iterations} Newton iteration{'' if p.iterations == 1 else 's'}"
        + (" from the stepwise rule's fit, " if p.selection is not None else ", ")
        + ("converged" if p.converged else "NOT converged")
        + f" (largest step < {fed.get('tol', 'n/a')})"
    )
    return (
        f"Logistic regression of treatment on {k} covariates, each scaled to [0, 1] by its public "
        f"bounds{_terms(spec, p.selection)}, with an intercept and a ridge penalty of "
        f"{fed.get('ridge', 'n/a')}; "
        f"fitted by Newton steps on the sites' summed gradients and Hessians (no row leaves a site): {fit}."
        + _selection(p.selection)
    )


def _terms(spec: dict, selection: Selection | None = None) -> str:
    """The derived terms of the spec's ``[terms]`` (shared/terms.py), and those a selecting
    study chose (``selection``), as a clause; "" if none."""
    terms = spec.get("terms") or {}
    squares = [c["name"] for c in spec.get("covariates", []) if c.get("kind") == "continuous"]
    parts = []
    if terms.get("squares") == "continuous" and squares:
        parts.append(f"the squares of the {len(squares)} continuous ones")
    if terms.get("interactions"):
        parts.append("the products " + ", ".join(terms["interactions"]))
    if terms.get("hinges"):
        parts.append(
            "the hinges " + ", ".join(terms["hinges"]) + " (each covariate's excess over the value, "
            "0 below it)"
        )
    if terms.get("sites"):
        sites = terms["sites"]
        parts.append(f"an indicator of each site but the first ({sites[0]}, the reference): site effects")
    declared = " and ".join(parts)
    if terms.get("select") == "stepwise" and selection is not None:
        n = len(selection.terms)
        chosen = f"{n} term{'' if n == 1 else 's'} chosen from the data (below)"
        return f", plus {declared + '; and ' if parts else ''}{chosen}, all computed at each site"
    return f", plus {declared} (computed at each site, declared in the spec)" if parts else ""


def _selection(selection: Selection | None) -> str:
    """How a selecting study chose its terms, as a sentence ("" when the spec declared them)."""
    if selection is None:
        return ""
    chosen = ", ".join(selection.terms) if selection.terms else "none"
    return (
        f" The chosen terms come from Imbens & Rubin's stepwise rule, run before any outcome was read, "
        f"on covariates and treatment only: of {selection.candidates} public candidates (every square "
        f"and product of two covariates, and each continuous covariate bent at tenths of its public "
        f"range), the term with the largest score statistic entered while that statistic exceeded "
        f"{selection.threshold:g} (the χ²₁ 90 % point), {selection.rounds} rounds in all. "
        f"In order of entry: {chosen}."
    )


def _strata(result: StudyResult, strata: tuple[StratumRow, ...], a: Attrition) -> str:
    rule = {
        "caliper": f"each {result.spec.get('strata', {}).get('caliper_sd', 0.2)} SD of the logit "
        "score wide, the MatchIt/CohortMethod caliper convention",
        "quantile": "quantiles of the treated's logit score",
    }.get(result.strata_method, result.strata_method)
    return (
        f"The logit propensity score is cut into {a.strata_total} strata ({rule}); "
        f"{a.strata_used} hold both arms (common support). {fmt.num(a.treated_dropped)} treated "
        f"({fmt.pct(a.treated_dropped_share)}) in strata without controls are excluded: the "
        f"estimand is the ATT of the {fmt.num(a.treated_in_support)} treated in common support."
    )


#: What each study round releases (shared/driver.py round names; reserve/cancel release nothing).
def _round_releases(result: StudyResult) -> dict[str, str]:
    """What each round name of the log released, exactly as the nodes answer it
    (shared/answer.py, shared/dp/sensitivity.py): under DP describe sends counts only, the
    cap round a histogram per column, and the weighted-sum round one sum per outcome (per
    negative control too) and, in a doubly robust study, one per covariate."""
    exact = not result.privacy.enabled
    dr = result.estimator == "dr"
    nc = bool(result.negative_controls)
    outcomes = "outcome" + (" and negative control" if nc else "")
    return {
        "describe": "per-arm counts and covariate sums and cross-products (describe)"
        if exact
        else "per-arm counts (describe)",
        "cap-hist": f"a histogram of each {outcomes}'s values on a public grid (the large-loss caps)",
        "select": "choosing the propensity basis before any outcome was read, the fit's gradient "
        "and Hessian{loglik} over the terms chosen so far ({n} round{s}) or over every candidate "
        "term ({scores} round{scores_s})",
        "ps-fit": "the propensity fit's gradient and Hessian{loglik} ({n} round{s})",
        "score-hist": "a histogram of the logit score per arm on a public grid",
        "psm-stats": f"per stratum and arm the count, Σy and Σy² of each {outcomes}"
        + (
            ", and Σy³ and Σy⁴ from sites whose smallest released cell is at least 5 (the skewness-"
            "corrected CI)"
            if exact
            else ""
        )
        + " and Σz and Σz² of each covariate"
        + (" and the controls' Σzzᵀ and Σzyᵀ (doubly robust)" if dr else ""),
        "psm-wsum": f"one weighted sum per {outcomes} (the ATT's numerator)"
        + (" and one per covariate (the imbalance left in the strata, doubly robust)" if dr else ""),
    }


def released_rounds(result: StudyResult) -> str:
    """The releases the study's rounds made, from its round log; "" if the log is empty."""
    names = [r.name for r in result.rounds]
    fits = sum(n.startswith("ps-fit") for n in names)
    exact = not result.privacy.enabled
    out = []
    scores = sum(n.startswith("select-score") for n in names)
    for key, text in _round_releases(result).items():
        n = {
            "ps-fit": fits,
            "select": sum(n.startswith("select-fit") for n in names),
            "describe": sum(n == "describe" for n in names),
        }.get(key, sum(name == key for name in names))
        if not n and not (key == "psm-stats" and exact and fits):  # exact: tables ride on ps-fit rounds
            continue
        line = text.format(
            loglik=" and log-likelihood" if exact else "",
            n=n,
            s="s" if n != 1 else "",
            scores=scores,
            scores_s="s" if scores != 1 else "",
        )
        if key == "describe" and n > 1:  # a selecting study describes its chosen basis again
            line = line.removesuffix(")") + f"; {n} rounds, the second over the chosen basis)"
        out.append(line)
    return "; ".join(out)


def smallest_treated_cell(strata: tuple[StratumRow, ...]) -> int | None:
    """The fewest treated in a released stratum that holds any treated (None: none does)."""
    return min((s.n_treated for s in strata if s.n_treated > 0), default=None)


def privacy_statement(result: StudyResult, strata: tuple[StratumRow, ...]) -> str:
    """What left the sites, exactly, and with which protection."""
    p = result.privacy
    k = sum(s.status == "ok" for s in result.sites)
    if not p.enabled:
        smallest = smallest_treated_cell(strata)
        cells = (
            f"the pooled table's smallest non-empty treated stratum holds {smallest} "
            f"{'person' if smallest == 1 else 'people'}"
            if smallest is not None
            else "no stratum holds treated"
        )
        lowered = (
            f", below the default floor of {SMALL_CELL}, so at least one site's operator lowered it"
            if smallest is not None and smallest < SMALL_CELL
            else ""
        )
        return (
            f"No differential privacy: the sites' operators allowed exact answers, which are meant "
            f"for a coordinator the data owner trusts (deploy/TRUST.md). Each of the {k} sites sent "
            "the coordinator exact aggregates of its own rows over TLS: "
            + (released_rounds(result) or "per-arm counts, the propensity fit's statistics and the PSM table")
            + " (a PSM table with each Newton round once the fit was near convergence; the last is "
            "used). By its policy a site releases a cell (an arm, or a stratum × arm) only if it "
            f"holds at least min_cell people ({SMALL_CELL} unless its operator lowered it, never "
            "below 2), and smaller cells as zero. No row, pseudonym or score left a site, but exact "
            f"aggregates are not anonymous: {cells}{lowered}, and tables released at successive "
            "Newton rounds, or by repeated studies, can be differenced."
        )
    per_site = ", ".join(f"{s} ε = {fmt.num(e)}" for s, e in sorted(p.per_site.items()))
    secure = (
        f" Every release after describe was a SecAgg+ sum over {p.secure_nodes} sites: the "
        "coordinator saw only the sums, never a site's own table."
        if p.secure_nodes
        else " Each site's own noisy release reached the coordinator (no secure aggregation)."
    )
    released = released_rounds(result)
    return (
        (f"Released by each site, each with Gaussian noise: {released}. " if released else "")
        + f"Differential privacy (Gaussian mechanism) on every release, charged to each site's "
        f"ledger before it left: study budget ε = {fmt.num(p.epsilon)}, δ = "
        f"{'n/a' if p.delta is None else format(p.delta, 'g')} per site "
        f"({p.accountant or 'accountant not stated'}); "
        f"ε this study charged per site: {per_site or 'not reported by the study run'}"
        + (
            f" (each site's ledger total over all its studies and releases: {totals})."
            if (totals := ", ".join(f"{s} ε = {fmt.num(e)}" for s, e in sorted(p.ledger_total.items())))
            else "."
        )
        + secure
        + " The noise's cost is stated per outcome as its "
        "share of the CI width."
    )


def _per_site(result: StudyResult) -> str:
    p = result.privacy
    if p.enabled and p.secure_nodes:
        return (
            "Not given: under secure aggregation only the sum over the sites was revealed; no "
            "site's own table exists outside that site."
        )
    if p.enabled:
        return (
            "Not given: each site's table was released with noise set for the pooled estimate; "
            "per-site estimates from it would cost no further privacy but would be dominated by "
            "noise at the smaller sites, and this version does not compute them."
        )
    return (
        "Not given: the coordinator received each site's exact table, but per-site estimates of "
        "the smaller sites would rest on a handful of treated and come close to describing "
        "individuals, so only the pooled estimate is reported. Site sizes are in the sites table."
    )


def multiplicity_note(outcomes: tuple[OutcomeRow, ...]) -> str:
    """Several outcomes, each at the 5% level: the family-wise error, and which survive Bonferroni."""
    m = len(outcomes)
    if m < 2:
        return "One outcome: no multiplicity adjustment is needed."
    z = NormalDist().inv_cdf(1.0 - 0.05 / (2 * m))
    z95 = NormalDist().inv_cdf(0.975)
    survive = []
    for row in outcomes:
        o = row.estimate
        half = (o.ci[1] - o.ci[0]) / 2.0 * z / z95
        mid = (o.ci[0] + o.ci[1]) / 2.0
        if mid - half > 0 or mid + half < 0:
            survive.append(o.name)
    fwer = 1.0 - 0.95**m
    return (
        f"{m} outcomes are each tested at the 5% level without adjustment, and the spec names no "
        f"primary outcome: with no effect on any of them, the chance that at least one CI excludes "
        f"zero is up to {fmt.pct(fwer)}. With a Bonferroni correction (each CI at "
        f"{fmt.pct(1 - 0.05 / m, digits=2)}), "
        + (
            f"{', '.join(survive)} still exclude{'s' if len(survive) == 1 else ''} zero."
            if survive
            else "no outcome's CI excludes zero."
        )
    )


def negative_control_note(result: StudyResult) -> str:
    """How the negative controls were estimated, released and used ("" when none)."""
    n = len(result.negative_controls)
    if not n:
        return ""
    o = len(result.outcomes)
    f = result.privacy.negative_control_share
    released = (
        f"Under differential privacy they were released apart from the outcomes, in releases of "
        f"their own (nc_main, nc_sumsq, nc_wsum) charged to each site's ledger before they left, "
        f"which took a share of {fmt.pct(f)} of the PSM-statistics budget within the study's ε: "
        f"the study cost each site the same ε as it would without them, and the outcomes' PSM "
        f"releases kept {fmt.pct(1 - f)} of that budget, so every outcome's privacy noise there is "
        f"{1 / math.sqrt(1 - f):.2f}× what it would be without controls (riding in the outcomes' "
        f"releases instead, O = {o + n} columns in place of {o}, it would be "
        f"{math.sqrt((1 + (o + n) / 4) / (1 + o / 4)):.2f}× to {math.sqrt((o + n) / o):.2f}×)."
        if result.privacy.enabled and f is not None
        else f"Under differential privacy they were further outcome columns of the same releases "
        f"(psm_main, psm_sumsq, psm_wsum), charged to each site's ledger before they left, "
        f"within the study's ε: no separate share of the budget. Their cost is in those releases' "
        f"sensitivity, which grows with the number of outcome columns (psm_main √(1 + O/4), "
        f"psm_wsum ∝ √O; O = {o + n} here instead of {o}), so every outcome's privacy noise is "
        f"{math.sqrt((1 + (o + n) / 4) / (1 + o / 4)):.2f}× (table) to "
        f"{math.sqrt((o + n) / o):.2f}× (weighted sum) what it would be without them."
        if result.privacy.enabled
        else "They were further columns of the same exact PSM table."
    )
    return (
        f"{n} negative-control outcomes (outcomes the intervention cannot affect, true effect 0, "
        "confounded like the outcomes) were estimated with the same propensity model, strata and "
        f"estimator as the outcomes. {released} Their estimates, on the log ratio of means, fit "
        "the systematic-error distribution N(μ, τ²) by maximum likelihood (Schuemie et al. 2014); "
        "EASE, its expected absolute value, is a gate (≤ 0.25, CohortMethod), and each outcome "
        "gets a calibrated p-value and CI (Schuemie et al. 2018) assuming the systematic error "
        "is constant in the true effect (no positive controls)."
    )


def _limitations(result: StudyResult, spec: dict) -> tuple[str, ...]:
    out = [
        f"Only the {len(spec.get('covariates', []))} covariates listed below are adjusted for; "
        "anything else that drives both participation and outcomes biases the estimate.",
        (
            "The doubly robust adjustment is linear in the covariates: confounding within strata "
            "that is neither balanced by the strata nor linear in the covariates remains."
            if result.estimator == "dr"
            else "Stratification on the propensity score leaves some confounding within strata (on a "
            "public data set with a known experimental answer it landed further from that answer "
            "than 1:1 matching did)."
        ),
        "Outcomes are clipped to their public caps, so the estimand is the effect on the capped "
        "outcomes; a few very large claims above the cap are not represented.",
        "The SE treats the estimated propensity score as known.",
    ]
    if result.privacy.enabled:
        out.append(
            "Privacy noise widens every interval and makes balance statistics noisy; balance a "
            "report cannot see is not claimed."
        )
    if result.negative_controls:
        out.append(
            "Calibration corrects only the systematic error the negative controls share with the "
            "outcomes: a bias that reaches the outcomes by another path than the controls' is not "
            "seen by EASE nor removed by the calibrated CI."
        )
        if result.privacy.enabled:
            out.append(
                "Under differential privacy the negative controls' log ratios are read on noisy arm "
                "means, which pulls them towards zero: a passed EASE gate is weaker evidence of no "
                "systematic error than in an exact study (on synthetic data with an unmeasured "
                "confounder, DP studies at ε = 1 failed it far less often than exact ones)."
            )
    if result.truth is not None:
        out.append("Simulated data: the study demonstrates the method and is not real-world evidence.")
    if any(s.status != "ok" for s in result.sites):
        out.append("Some sites dropped out during the study and are not in the estimate.")
    return tuple(out)
