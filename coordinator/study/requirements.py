"""What a pooled study needs before anyone joins: the smallest ε and the fewest treated.

``rehealth study plan`` tells small firms in advance whether their pool will produce evidence.
Three conditions, all fixed in advance and all on the POOL (no firm needs them on its own):
the report's size gates (:mod:`shared.thresholds`: at least ``MIN_TREATED`` treated and
``MIN_CONTROL_RATIO`` controls per treated), and the two DP stop rules checked after describe
(:func:`shared.dp.workflow.after_describe`: the propensity fit and the strata must resolve).
Both searches bisect a monotone condition (more ε or more treated only ever helps), each step
being the same public arithmetic the study does after describe, so no data are touched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shared import thresholds as th
from shared.study import StudySpec

#: Search bounds: ε beyond 50 is no privacy worth the name; 10⁶ treated is beyond any pool.
EPSILON_RANGE = (0.01, 50.0)
TREATED_MAX = 1_000_000


@dataclass(frozen=True)
class Requirements:
    """The pool's needs at the planned counts; ``None`` where no value in range suffices."""

    min_epsilon: float | None  # smallest ε (this split, δ, accountant) at which the study runs
    min_treated_dp: int | None  # fewest treated (same control ratio) the DP rules need at this ε
    min_treated: int | None  # max of that and the size gate: what the pool must bring
    min_controls: int | None  # controls beside ``min_treated`` (planned ratio, at least the gate's)
    size_gates_pass: bool  # the planned counts pass the pooled size gates
    treated_per_firm: int | None  # min_treated spread evenly over the firms (a guide, not a gate)


def runs(
    study: StudySpec, *, treated: float, controls: float, nodes: int, epsilon: float | None = None
) -> bool:
    """The study would run past describe (both stop rules pass) at these pooled counts."""
    from shared.dp.workflow import after_describe
    from shared.driver import noise_plan

    if epsilon is not None:
        study = study.model_copy(update={"privacy": study.privacy.model_copy(update={"epsilon": epsilon})})
    gate = after_describe(
        counts=(float(controls), float(treated)),
        n_covariates=len(study.design_covariates),
        plan=noise_plan(study),
        split=study.privacy.split,
        n_nodes=nodes,
        secure_aggregation=study.privacy.secure_aggregation,
    )
    return gate.check.passed and (gate.strata is None or gate.strata.passed)


def requirements(study: StudySpec, *, treated: int, controls: int, nodes: int) -> Requirements:
    """Smallest ε at these counts, fewest treated at the spec's ε (controls in the same ratio)."""
    ratio = controls / treated
    min_eps = _bisect_epsilon(study, treated=treated, controls=controls, nodes=nodes)
    min_dp = _bisect_treated(study, ratio=ratio, nodes=nodes)
    gate_treated = th.MIN_TREATED
    need = None if min_dp is None else max(min_dp, gate_treated)
    return Requirements(
        min_epsilon=min_eps,
        min_treated_dp=min_dp,
        min_treated=need,
        min_controls=None if need is None else math.ceil(max(ratio, th.MIN_CONTROL_RATIO) * need),
        size_gates_pass=treated >= th.MIN_TREATED and controls >= th.MIN_CONTROL_RATIO * treated,
        treated_per_firm=None if need is None else math.ceil(need / nodes),
    )


def _bisect_epsilon(study: StudySpec, *, treated: int, controls: int, nodes: int) -> float | None:
    lo, hi = EPSILON_RANGE
    if not runs(study, treated=treated, controls=controls, nodes=nodes, epsilon=hi):
        return None
    if runs(study, treated=treated, controls=controls, nodes=nodes, epsilon=lo):
        return lo
    for _ in range(40):  # on log ε: relative precision far below the 2 digits printed
        mid = math.sqrt(lo * hi)
        lo, hi = (
            (lo, mid)
            if runs(study, treated=treated, controls=controls, nodes=nodes, epsilon=mid)
            else (mid, hi)
        )
    return hi


def _bisect_treated(study: StudySpec, *, ratio: float, nodes: int) -> int | None:
    def ok(t: int) -> bool:
        return runs(study, treated=t, controls=ratio * t, nodes=nodes)

    if not ok(TREATED_MAX):
        return None
    lo, hi = 0, TREATED_MAX  # ok(hi) holds; ok(lo) does not (no treated resolve nothing)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi
