"""The operator's demo tooling around :mod:`shared.synth`: writing a synthetic federation to
disk (:mod:`coordinator.synth.io`) and the ``rehealth synth`` command (:mod:`coordinator.synth.cli`).

The generator itself stays in :mod:`shared.synth` (pure, in memory); files and the CLI live here
because ``shared`` holds no I/O and no CLI code, and because it is the operator who stages a
synthetic federation (``rehealth synth``, ``rehealth demo``, ``deploy/local-federation.sh``).
"""

from coordinator.synth.io import write_federation

__all__ = ["write_federation"]
