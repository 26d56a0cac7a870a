"""Errors of the evidence report.

Hierarchy (under :class:`shared.errors.ReHealthError`)::

    ReportError                 the report cannot be built, serialised or rendered
    ├── CanonicalisationError   a value has no canonical JSON form (NaN, ±inf, non-str key)
    └── ReportVerificationError a signed report fails verification; ``reason`` is a stable code
"""

from __future__ import annotations

from shared.errors import ReHealthError


class ReportError(ReHealthError):
    """The evidence report cannot be built, serialised or rendered."""


class CanonicalisationError(ReportError, ValueError):
    """A value has no canonical JSON form; the message names its path (``report.outcomes[0].att``)."""


class ReportVerificationError(ReportError):
    """A signed report is not intact, not signed, or not signed by the expected key.

    Args:
        message: what a reader should be told, e.g. ``"report altered: signature does not match"``.
        reason: a stable machine code: ``unreadable``, ``not-canonical``, ``signature-missing``,
            ``old-format``, ``bad-signature-block``, ``wrong-key``, ``signature-mismatch``, ``schema``
            (``certify``: ``no-certificate``, ``bad-certificate``, ``issuer-mismatch``).
    """

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason
