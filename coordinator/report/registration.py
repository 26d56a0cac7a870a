"""Pre-registration: the spec and the analysis plan signed and timestamped before any outcome
is read.

An actuary or regulator trusts an estimate more when the analysis was fixed before the data
could steer it (OHDSI's "unblinding" gate). ``rehealth study register`` hashes the study spec
(the same :meth:`shared.study.StudySpec.spec_hash` that names the study in every ledger and in
the result) and, if given, the analysis plan file, stamps the time, and signs the canonical
JSON with the operator's Ed25519 key. The evidence report then states whether a registration
signed by its own key names exactly the spec the study ran, and whether its time precedes the
study's start — which precedes every outcome-bearing release, since outcomes are read only
after describe and the propensity fit. A spec changed after registration hashes differently,
and the report says so.

Limits, stated in the report: the time is the registrar's clock, signed by the operator's key;
it proves order only to someone who trusts that key's holder not to back-date. For proof
against the operator, send :attr:`Registration.digest` to a third-party RFC 3161 time-stamping
authority (none is reachable from this machine).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, ValidationError

from coordinator.report.document import Check, RegistrationSection
from coordinator.report.errors import ReportError
from coordinator.report.signing import key_id
from shared.canonical import canonical_bytes
from shared.result import StudyResult

KIND = "rehealth.study-registration"


class RegistrationError(ReportError):
    """A registration that cannot be read, or whose signature does not verify."""


class AnalysisPlan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    file: str  # the plan's file name (not its path: the path is the registrar's business)
    sha256: str


class Registration(BaseModel):
    """The signed registration record (``signature`` over the canonical JSON of the rest)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str = KIND
    version: int = 1
    study: str
    spec_hash: str
    analysis_plan: AnalysisPlan | None = None
    registered_at: str  # ISO 8601 UTC
    key_id: str
    signature: str = ""

    def unsigned(self) -> bytes:
        return canonical_bytes(self.model_dump(mode="json", exclude={"signature"}))

    @property
    def digest(self) -> str:
        """SHA-256 of the signed record (what a time-stamping authority would be sent)."""
        return hashlib.sha256(canonical_bytes(self.model_dump(mode="json"))).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def register(
    *, study: str, spec_hash: str, key: Ed25519PrivateKey, plan: Path | None = None, at: str | None = None
) -> Registration:
    """A signed registration of ``spec_hash`` (and the plan file's hash) at ``at`` (now)."""
    record = Registration(
        study=study,
        spec_hash=spec_hash,
        analysis_plan=None
        if plan is None
        else AnalysisPlan(file=plan.name, sha256=hashlib.sha256(plan.read_bytes()).hexdigest()),
        registered_at=at or _now(),
        key_id=key_id(key.public_key()),
    )
    signature = key.sign(record.unsigned())
    return record.model_copy(update={"signature": base64.b64encode(signature).decode()})


def dump(record: Registration) -> bytes:
    return canonical_bytes(record.model_dump(mode="json"))


def load_verified(data: bytes, public_key: Ed25519PublicKey) -> Registration:
    """Parse and verify a registration against ``public_key``.

    Raises:
        RegistrationError: not a registration, or its signature does not verify under the key.
    """
    try:
        record = Registration.model_validate(json.loads(data))
    except (ValueError, ValidationError) as e:
        raise RegistrationError(f"not a study registration: {type(e).__name__}") from None
    if record.kind != KIND:
        raise RegistrationError(f"not a study registration (kind {record.kind!r})")
    try:
        public_key.verify(base64.b64decode(record.signature, validate=True), record.unsigned())
    except (InvalidSignature, binascii.Error, ValueError):
        raise RegistrationError(
            "the registration's signature does not verify under the report's key "
            f"(registration key id {record.key_id}, report key id {key_id(public_key)})"
        ) from None
    return record


def _instant(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def preceded(record: Registration, started_at: str) -> bool:
    """True if the registration is strictly earlier than the study's start."""
    return _instant(record.registered_at) < _instant(started_at)


def registration_section(record: Registration, result: StudyResult) -> RegistrationSection:
    return RegistrationSection(
        record=record.model_dump(mode="json"),
        spec_matches=record.spec_hash == result.spec_hash,
        preceded_start=preceded(record, result.started_at),
    )


REGISTRATION_RULE = "spec and analysis plan signed before the study started, spec unchanged since"


def unregistered_check() -> Check:
    """``pre_registration`` for a study with no registration: a failed gate. Nothing shows the
    analysis was fixed before the data could steer it, so the estimate is not billable."""
    return Check(
        name="pre_registration",
        label="Pre-registration",
        rule=REGISTRATION_RULE,
        kind="gate",
        passed=False,
        value=None,
        threshold=None,
        source="report",
        detail="no registration was given (rehealth study register before the run; "
        "rehealth report render --registration)",
    )


def registration_check(record: Registration, result: StudyResult) -> Check:
    """``pre_registration``: passes when the registration names this study's spec and precedes
    its start; says which failed otherwise (a spec changed after registration hashes otherwise)."""
    matches = record.spec_hash == result.spec_hash
    before = preceded(record, result.started_at)
    problems = [
        *(
            []
            if matches
            else [
                f"the spec changed after registration (registered {record.spec_hash[:12]}…, "
                f"ran {result.spec_hash[:12]}…)"
            ]
        ),
        *(
            []
            if before
            else [f"registered at {record.registered_at}, not before the study started ({result.started_at})"]
        ),
    ]
    return Check(
        name="pre_registration",
        label="Pre-registration",
        rule=REGISTRATION_RULE,
        kind="gate",
        passed=matches and before,
        value=None,
        threshold=None,
        source="report",
        detail="; ".join(problems)
        or f"registered at {record.registered_at}, before the study started ({result.started_at}); "
        "the time is the registrar's clock signed with the report's key",
    )
