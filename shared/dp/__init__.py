"""Differential privacy for studies: sensitivities, the Gaussian mechanism, accounting with
Opacus, the study's public noise plan, DP strata and the privacy part of the CI.

Pure numpy (no I/O, no Flower); the node's persisted ledger lives in :mod:`node.ledger`.
docs/PRIVACY.md. Flow of a DP study::

    plan_study(...)                      both sides, deterministic: sigma per release
    node:   charged_release(...)         node.privacy: ledger charge, then release()
    coord:  workflow.dp_start_beta -> dp_fitter/dp_ps_stats x R -> dp_edges -> dp_table
            -> dp_estimate (CI includes the noise; privacy share of the CI width; CI width
               against the physical limit of one release of the ATT, :mod:`shared.dp.limit`)
"""

from shared.dp.accounting import epsilon_spent
from shared.dp.mechanisms import gaussian_noise, project_psd, release, secure_rng
from shared.dp.plan import DEFAULT_PS_ROUNDS, NoisePlan, PlannedRelease, plan_study
from shared.dp.sensitivity import RELEASE_KEYS

__all__ = [
    "DEFAULT_PS_ROUNDS",
    "NoisePlan",
    "PlannedRelease",
    "RELEASE_KEYS",
    "epsilon_spent",
    "gaussian_noise",
    "plan_study",
    "project_psd",
    "release",
    "secure_rng",
]
