"""Seeded synthetic federation with ground truth (docs/STATISTICS.md, "Synthetic data").

``generate_federation`` and ``generate_cohort`` are pure (numpy/pandas in memory). Writing a
federation to files and the ``rehealth synth`` command are the operator's tooling and live in
:mod:`coordinator.synth` (``shared`` does no I/O).
"""

from shared.synth.dgp import DGP_NAMES, DGPS, Dgp
from shared.synth.federation import Federation, SiteData, generate_cohort, generate_federation

__all__ = ["DGPS", "DGP_NAMES", "Dgp", "Federation", "SiteData", "generate_cohort", "generate_federation"]
