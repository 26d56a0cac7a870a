"""Seeded synthetic federation with ground truth (docs/STATISTICS.md, "Synthetic data").

``generate_federation`` and ``generate_cohort`` are pure (numpy/pandas in memory);
``write_federation`` (in :mod:`shared.synth.io`) is the only part that touches files.
"""

from shared.synth.federation import Federation, SiteData, generate_cohort, generate_federation
from shared.synth.io import write_federation

__all__ = ["Federation", "SiteData", "generate_cohort", "generate_federation", "write_federation"]
