"""Typed errors shared by node and coordinator.

Hierarchy::

    ReHealthError
    ├── SpecError            a study spec or config is invalid (names the field)
    ├── DataError            input data is invalid (names the row and field)
    │   └── CovariateBoundsError   a covariate lies outside its public bounds
    ├── EstimationError      the statistics cannot support an estimate
    │   ├── EmptyArmError         an arm has no rows
    │   ├── NoOverlapError        no stratum holds both arms
    │   └── ConvergenceError      the propensity fit did not converge
    ├── PrivacyError         a release would break the privacy contract
    │   ├── BudgetExceededError   the node's budget cannot pay for a release
    │   └── ReplayRefused         the signed study already had every release it was signed for
    ├── QueryRefused         a node refused a query it does not know or cannot validate
    │   ├── PolicyRefused         the query disagrees with the node's own policy
    │   └── UnauthorizedQuery     the query carries no valid grant signed by the pinned key
    ├── FederationError      a node failed or timed out in a round (names node and round)
    └── ReportError          an evidence report cannot be built, serialised or rendered
        ├── CanonicalisationError   a value has no canonical JSON form (NaN, ±inf, non-str key)
        └── ReportVerificationError a signed report fails verification; ``reason`` is a stable code
            └── WrongReportKey      it is intact but signed by another key than the one given
"""

from __future__ import annotations


class ReHealthError(Exception):
    """Base of every error this product raises on purpose."""


class SpecError(ReHealthError, ValueError):
    """A study spec or configuration is invalid."""


class DataError(ReHealthError, ValueError):
    """Input data is invalid; the message names the row and the field."""

    def __init__(self, message: str, *, row: int | None = None, field: str | None = None):
        super().__init__(message)
        self.row = row
        self.field = field


class CovariateBoundsError(DataError):
    """A covariate value lies outside its declared public bounds."""


class EstimationError(ReHealthError):
    """The statistics cannot support the requested estimate."""


class EmptyArmError(EstimationError):
    """The treated or the control arm has no rows."""


class NoOverlapError(EstimationError):
    """No stratum contains both treated and controls."""


class ConvergenceError(EstimationError):
    """The propensity fit did not converge within its iteration cap."""


class UnresolvedFitError(EstimationError):
    """A DP study stopped after describe: its noisy propensity fit could not resolve the
    confounding, and the spec asked to stop rather than spend the budget on a biased estimate."""


class PrivacyError(ReHealthError):
    """A release would break the privacy contract."""


class BudgetExceededError(PrivacyError):
    """The node's privacy budget cannot pay for the requested release."""


class ReplayRefused(PrivacyError):
    """A signed study asked for a release it has already had as often as its plan allows."""


class QueryRefused(ReHealthError):
    """A node refused a query it does not know or that fails validation.

    Its message is built from the query and the node's policy only (both known to the
    coordinator), never from the node's data: it may cross the wire.
    """


class PolicyRefused(QueryRefused):
    """The query disagrees with the node's own policy (a column, a bound, a cap, exact answers)."""


class UnauthorizedQuery(QueryRefused):
    """The query is unsigned, signed by another key, altered, or outside what its grant covers."""


class FederationError(ReHealthError):
    """A node failed or timed out during a round."""

    def __init__(self, message: str, *, node: str | None = None, round_name: str | None = None):
        super().__init__(message)
        self.node = node
        self.round_name = round_name


class ReportError(ReHealthError):
    """The evidence report cannot be built, serialised or rendered."""


class CanonicalisationError(ReportError, ValueError):
    """A value has no canonical JSON form; the message names its path (``report.outcomes[0].att``)."""


class ReportVerificationError(ReportError):
    """A signed report is not intact, not signed, or not signed by the expected key.

    Here rather than in the coordinator because both sides verify reports
    (:mod:`shared.signed_report`): the coordinator's ``rehealth report verify`` and the node's
    ``rehealth node report import``.

    Args:
        message: what a reader should be told, e.g. ``"report altered: signature does not match"``.
        reason: a stable machine code: ``unreadable``, ``not-canonical``, ``signature-missing``,
            ``old-format``, ``bad-signature-block``, ``wrong-key``, ``signature-mismatch``, ``schema``
            (``certify``: ``no-certificate``, ``bad-certificate``, ``issuer-mismatch``).
    """

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason


class WrongReportKey(ReportVerificationError):
    """The report is signed by another key than the one given (reason ``wrong-key``); both key
    ids (SHA-256 hex of the raw public keys) are kept so a caller can word its own message."""

    def __init__(self, message: str, *, signed_by: str, given: str):
        super().__init__(message, reason="wrong-key")
        self.signed_by = signed_by
        self.given = given
