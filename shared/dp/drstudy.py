r"""The coordinator's side of a doubly robust DP study (``estimator = "dr"``), over released sums.

A DR study's PSM-statistics round asks ``psm_stats`` with ``slope``: each node releases, as
planned releases charged to its ledger (:mod:`shared.dp.plan`), the table's cells
(``psm_main``: counts and Σ(y − ½); ``psm_sumsq``: Σ(y − ½)²), the balance sums
(``psm_balance``: Σ(z − ½) per cell, the d release's centres) and the slope release
``dr_slope`` (the controls' own copy of their cells and their pooled cross-products,
:mod:`shared.dp.forms`). Then, as in a stratified study, the weighted-sums round: ``psm_wsum``
with ``z_center``, the outcomes' weighted sums and the covariates' (``dr_dsum``, the imbalance
d) with the weights the counts fix (:mod:`shared.dp.drwsum`).

:func:`dp_dr_release` maps the summed PSM releases onto :class:`shared.psm.dr.DrRelease` with each
array's own noise SD (the slope :math:`\hat\gamma` reads ``dr_slope``), and
:func:`dp_dr_estimates` is the DP DR estimate: the stratified ATT and d from the weighted sums,
γ̂ from the slope (centring's noise mean added back, PSD projection, ridge), privacy SE the
weighted sums' analytic one on the residual plus the adjustment's parametric bootstrap
(:func:`shared.dp.drwsum.dr_wsum_estimates`), which :func:`shared.dp.workflow.dp_estimate` puts
in place of each outcome's stratified ATT. :func:`dp_dsum_imbalance` is the same d with its noise
SD for the balance table, whose SMD after weighting it is the numerator of
(:mod:`shared.psm.balance`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from shared.dp.drwsum import dr_wsum_estimates, dsum_centers, dsum_imbalance
from shared.dp.forms import slope_from_release
from shared.dp.plan import NoisePlan
from shared.dp.sensitivity import RELEASE_KEYS
from shared.dp.strata import dp_min_cell
from shared.dp.wsum import att_weights, wsum_sensitivity
from shared.protocol import PsmWsum
from shared.psm.balance import WeightedImbalance
from shared.psm.dr import DrEstimate, DrRelease, _release_from_centred
from shared.psm.table import PsmTable
from shared.study import Outcome

__all__ = [
    "DR_BOOTSTRAP_DRAWS",
    "DR_KEYS",
    "dp_dr_estimates",
    "dp_dr_release",
    "dp_dsum_imbalance",
    "dp_dsum_query",
]

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


def dp_dsum_query(op: PsmWsum, *, table: PsmTable, used: np.ndarray) -> PsmWsum:
    """The stratified study's ``psm_wsum`` operation ``op`` with the imbalance's centres added
    (``z_center``): the node then releases ``dr_dsum`` beside the outcomes' sums."""
    c = dsum_centers(table=table, used=used)
    return op.model_copy(update={"z_center": tuple(float(x) for x in c.reshape(-1))})


def _wsum_terms(*, op: PsmWsum, table: PsmTable, plan: NoisePlan, n_nodes: int, sa: dict):
    """What the ``psm_wsum`` operation ``op`` over ``table`` fixed, as the coordinator reads its
    answers: the used strata (both counts of the query > 0), the covariates' centres ``(S, 2,
    D)``, and σ(query, centres), the noise SD of one summed entry of a weighted-sums release at
    the Δ the nodes computed from the weights and those centres."""
    n = np.asarray(op.count, dtype=float).reshape(table.n_strata, 2)
    used = (n[:, 0] > 0) & (n[:, 1] > 0)
    v = att_weights(n, used)
    z_centers = np.asarray(op.z_center, dtype=float).reshape(table.n_strata, 2, table.n_covariates)

    def sigma(query: str, c: np.ndarray) -> float:
        return plan.release(query).for_sensitivity(wsum_sensitivity(v, c)).total_sigma(n_nodes, **sa)

    return used, z_centers, sigma


def dp_dsum_imbalance(
    *,
    plan: NoisePlan,
    n_nodes: int,
    table: PsmTable,
    op: PsmWsum,
    dsum: np.ndarray,
    sigma_count,
    secure_aggregation: bool = False,
) -> WeightedImbalance:
    """The imbalance d ``(D,)`` and its noise SD from the summed ``dr_dsum`` ``dsum`` of the
    ``psm_wsum`` operation ``op`` over ``table`` (:func:`shared.dp.drwsum.dsum_imbalance`), for
    the balance table's SMD after weighting (:mod:`shared.psm.balance`): the strata, weights and
    d of :func:`dp_dr_estimates`, read again — post-processing. ``sigma_count`` as there."""
    sa = {"secure_aggregation": secure_aggregation}
    used, z_centers, sigma = _wsum_terms(op=op, table=table, plan=plan, n_nodes=n_nodes, sa=sa)
    return dsum_imbalance(
        table=table,
        used=used,
        dsum=dsum,
        z_centers=z_centers,
        sigma_dsum=sigma("dr_dsum", z_centers),
        sigma_count=sigma_count,
    )


def dp_dr_estimates(
    release: DrRelease,
    *,
    plan: NoisePlan,
    n_nodes: int,
    outcomes: Sequence[Outcome],
    rng: np.random.Generator,
    table: PsmTable,
    op: PsmWsum,
    wsum: np.ndarray,
    dsum: np.ndarray,
    sigma_count,
    secure_aggregation: bool = False,
) -> tuple[DrEstimate, ...]:
    """Each outcome's DP DR estimate from the summed weighted sums ``wsum`` ``(O,)`` and
    ``dsum`` ``(D,)`` of the ``psm_wsum`` operation ``op`` over ``table`` (the merged strata the
    weights came from) and the slope of ``release``; common support and intercept groups as the
    stratified DP estimate's (``dp_min_cell`` of one released count). ``sigma_count``: the SD of
    each (merged) stratum's summed count. ``rng`` drives only the coordinator's bootstrap of
    the known noise (post-processing)."""
    sa = {"secure_aggregation": secure_aggregation}
    count_sigma = plan.release("psm_main").total_sigma(n_nodes, **sa)
    min_cell = dp_min_cell(count_sigma=count_sigma)
    used, z_centers, sigma = _wsum_terms(op=op, table=table, plan=plan, n_nodes=n_nodes, sa=sa)
    centers = np.asarray(op.center, dtype=float).reshape(table.n_strata, 2, len(outcomes))
    return dr_wsum_estimates(
        release=release,
        table=table,
        used=used,
        wsum=wsum,
        centers=centers,
        sigma_wsum=sigma("psm_wsum", centers),
        dsum=dsum,
        z_centers=z_centers,
        sigma_dsum=sigma("dr_dsum", z_centers),
        sigma_count=sigma_count,
        outcomes=outcomes,
        min_cell=min_cell,
        n_draws=DR_BOOTSTRAP_DRAWS,
        rng=rng,
    )
