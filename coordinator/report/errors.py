"""Errors of the evidence report.

Hierarchy (under :class:`shared.errors.ReHealthError`)::

    ReportError                 the report cannot be built, serialised or rendered
    ├── CanonicalisationError   a value has no canonical JSON form (NaN, ±inf, non-str key)
    └── ReportVerificationError a signed report fails verification; ``reason`` is a stable code

Defined in :mod:`shared.errors` (the node verifies reports with the same code,
:mod:`shared.signed_report`); this module is where the coordinator's report code imports them.
"""

from __future__ import annotations

from shared.errors import CanonicalisationError, ReportError, ReportVerificationError

__all__ = ["CanonicalisationError", "ReportError", "ReportVerificationError"]
