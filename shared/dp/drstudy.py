r"""The coordinator's side of a doubly robust DP study (``estimator = "dr"``), over released sums.

A DR study's PSM-statistics round asks ``psm_stats`` with ``slope``: each node releases, as
planned releases charged to its ledger (:mod:`shared.dp.plan`), the table's cells
(``psm_main``: counts and Σ(y − ½); ``psm_sumsq``: Σ(y − ½)²), the balance sums
(``psm_balance``: Σ(z − ½) per cell) and the slope release ``dr_slope`` (the controls' own copy
of their cells and their pooled cross-products, :mod:`shared.dp.forms`). No weighted sums are
asked: the DR ATT replaces the stratified one they would give.

:func:`dp_dr_release` maps the summed releases onto :class:`shared.psm.dr.DrRelease` with each
array's own noise SD (the imbalance :math:`\hat d` reads Σz from ``psm_balance``, the slope
:math:`\hat\gamma` reads ``dr_slope``: independent noises, as :mod:`shared.psm.dr` requires),
and :func:`dp_dr_estimates` is the library's DP DR estimate on it
(:func:`shared.psm.dr.estimate_dr_release`: centring's noise mean added back, PSD projection,
ridge, privacy SE by the three-way parametric bootstrap), which
:func:`shared.dp.workflow.dp_estimate` puts in place of each outcome's stratified ATT.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from shared.dp.forms import slope_from_release
from shared.dp.plan import NoisePlan
from shared.dp.sensitivity import RELEASE_KEYS
from shared.dp.strata import dp_min_cell
from shared.psm.dr import DrEstimate, DrRelease, _release_from_centred, estimate_dr_release
from shared.study import Outcome

__all__ = ["DR_BOOTSTRAP_DRAWS", "DR_KEYS", "dp_dr_estimates", "dp_dr_release"]

#: The summed arrays a DR study's PSM round adds to the stratified ones.
DR_KEYS: tuple[str, ...] = RELEASE_KEYS["dr_slope"]
#: Re-draws of the privacy SE's parametric bootstrap (:func:`shared.psm.dr.redraw_dr_se`).
DR_BOOTSTRAP_DRAWS = 40


def dp_dr_release(
    *,
    sums: Mapping[str, np.ndarray],
    edges,
    plan: NoisePlan,
    n_nodes: int,
    secure_aggregation: bool = False,
) -> DrRelease:
    """The DR releases as the estimator reads them, from the summed (centred) ``psm_main``,
    ``psm_sumsq``, ``psm_balance`` and ``dr_slope`` arrays, with the noise SD of each sum."""
    sa = {"secure_aggregation": secure_aggregation}

    def sigma(query: str) -> float:
        return plan.release(query).total_sigma(n_nodes, **sa)

    main = sigma("psm_main")
    cells = {k: np.asarray(sums[k], dtype=float) for k in ("count", "sum_y", "sumsq_y", "sum_z")}
    slope = slope_from_release(**{k: sums[k] for k in DR_KEYS})
    return _release_from_centred(
        cells,
        slope,
        np.asarray(edges, dtype=float),
        {"count": main, "sum_y": main, "sumsq_y": sigma("psm_sumsq"), "sum_z": sigma("psm_balance")},
        sigma("dr_slope"),
    )


def dp_dr_estimates(
    release: DrRelease,
    *,
    plan: NoisePlan,
    n_nodes: int,
    outcomes: Sequence[Outcome],
    rng: np.random.Generator,
    secure_aggregation: bool = False,
) -> tuple[DrEstimate, ...]:
    """Each outcome's DP DR estimate; common support and intercept groups as the stratified
    DP estimate's (``dp_min_cell`` of one released count, :func:`shared.dp.workflow.dp_used`).
    ``rng`` drives only the coordinator's bootstrap of the known noise (post-processing)."""
    count_sigma = plan.release("psm_main").total_sigma(n_nodes, secure_aggregation=secure_aggregation)
    return estimate_dr_release(
        release,
        outcomes=outcomes,
        min_cell=dp_min_cell(count_sigma=count_sigma),
        n_draws=DR_BOOTSTRAP_DRAWS,
        rng=rng,
    )
