"""Charge, then release: the only path by which a DP answer leaves the node.

:func:`charged_release` withholds every array the release does not name
(:func:`shared.dp.forms.release_arrays`), commits the charge to the ledger, and only then
adds the Gaussian noise. If the ledger refuses, nothing is computed or returned; if the process
dies after the charge, the ledger over-counts, never under-counts.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from node.ledger import Charge, PrivacyLedger
from shared.answer import noisy_release
from shared.dp.forms import release_arrays
from shared.dp.mechanisms import secure_rng

__all__ = ["charged_release"]


def charged_release(
    *,
    ledger: PrivacyLedger,
    study_id: str,
    query: str,
    arrays: Mapping[str, np.ndarray],
    sigma: float,
    sensitivity: float,
    rng: np.random.Generator | None = None,
    share: int = 1,
    dataset: str | None = None,
) -> tuple[dict[str, np.ndarray], Charge]:
    """Charge the node's population budget for one Gaussian release of ``query``, then return
    the noisy arrays.

    Args:
        ledger: the node's ledger (one population, one budget).
        dataset: None or :data:`node.ledger.POPULATION`; any other name is refused (it does
            not select another budget).
        study_id: the study asking (recorded).
        query: a release name (``describe``, ``ps_fit``, ``score_hist``, ``psm_main``,
            ``psm_sumsq``, ``psm_balance``: :data:`shared.dp.sensitivity.RELEASE_KEYS`).
        arrays: the exact answer; only the release's keys leave, in release form
            (:mod:`shared.dp.forms`: covariates centred).
        sigma: noise SD (the study plan's).
        sensitivity: the release's L2 sensitivity (:mod:`shared.dp.sensitivity`).
        rng: the noise generator; leave it None in production (a fresh
            :func:`shared.dp.mechanisms.secure_rng`, seeded from the OS CSPRNG — never from
            anything the coordinator sent). Tests inject a seeded one.
        share: K when this answer is one of K nodes' masked inputs to a SecAgg+ sum: the node
            adds σ/√K and is charged for σ, the noise of the only thing the coordinator sees.

    Returns:
        ``(noisy arrays, charge)``.

    Raises:
        PrivacyError: unknown release, or a named array is missing.
        BudgetExceededError: the ledger refused (nothing is released).
        PrivacyError: also for a ``dataset`` other than the population.
    """
    release_arrays(query, arrays)  # an unknown release or a missing array fails before the charge
    charge = ledger.charge(
        dataset=dataset, study_id=study_id, query=query, sigma=sigma, sensitivity=sensitivity
    )
    return noisy_release(
        query=query, arrays=arrays, sigma=sigma, share=share, rng=rng if rng is not None else secure_rng()
    ), charge
