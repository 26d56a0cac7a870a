"""Operator-signed grants: what a node may be asked, signed by the coordinator's key.

Open-source Flower lets anyone who reaches the SuperLink submit a run, and a hijacked ServerApp
task can send any message. So a node does not take a query's word for what study it belongs
to: the operator signs a :class:`Grant` (the study's id, its sites, and its terms — columns,
bounds, caps, privacy parameters; or a risk-training job) with the coordinator's Ed25519 key
*before* the run is submitted, the grant travels with every message, and every node verifies it
against the coordinator public key pinned in its own config (:func:`verify_grant`). A query must
then match its grant exactly; a node also bounds how often one grant may be answered (the
ledger's per-study release counts), so a stolen grant buys no more than what it was signed for.

The signed bytes are the grant's canonical JSON (sorted keys, no whitespace, UTF-8); both
sides are this module, so no cross-language canonicalisation is needed here.

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> key = Ed25519PrivateKey.generate()
>>> g = Grant(kind="risk", grant_id="job-0001-abcdef", sites=("a",), terms={"rounds": 2})
>>> verify_grant(sign_grant(g, key), key.public_key()) == g
True
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import UnauthorizedQuery

__all__ = ["Grant", "SignedGrant", "canonical_json", "key_id", "new_grant_id", "sign_grant", "verify_grant"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class Grant(_Model):
    """What the operator authorises: one study (or risk-training job) over named sites."""

    kind: Literal["study", "risk"]
    #: the id every query of the study carries (and the ledger records): unique per signing,
    #: so re-running a spec is a new, separately charged grant
    grant_id: str = Field(min_length=8, max_length=128)
    sites: tuple[str, ...] = Field(min_length=1)
    #: the fixed part of every query: StudyQuery.terms() / the RiskJob, as JSON-able data
    terms: dict[str, Any]
    issued_at: str = ""


class SignedGrant(_Model):
    """A grant's canonical JSON and its Ed25519 signature (base64), as it travels."""

    body: str = Field(max_length=200_000)
    signature: str = Field(max_length=200)
    key_id: str = Field(default="", max_length=64)  # which coordinator key signed (informative)


def canonical_json(data: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8; non-finite floats refused."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def new_grant_id(prefix: str) -> str:
    """``prefix`` (e.g. the spec hash) plus a random suffix: one id per signing."""
    return f"{prefix[:40]}-{secrets.token_hex(8)}"


def sign_grant(grant: Grant, private_key: Ed25519PrivateKey) -> SignedGrant:
    """Sign ``grant`` (stamping ``issued_at`` if empty)."""
    if not grant.issued_at:
        grant = grant.model_copy(
            update={"issued_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        )
    body = canonical_json(grant.model_dump(mode="json")).decode()
    sig = private_key.sign(body.encode())
    return SignedGrant(
        body=body, signature=base64.b64encode(sig).decode(), key_id=key_id(private_key.public_key())
    )


def verify_grant(signed: SignedGrant | None, public_key: Ed25519PublicKey) -> Grant:
    """The grant, if ``signed`` carries a valid signature by ``public_key`` over canonical bytes.

    Raises:
        UnauthorizedQuery: no grant, a bad signature (another key, altered bytes), or a body
            that is not a canonical grant.
    """
    if signed is None:
        raise UnauthorizedQuery(
            "the query carries no signed grant; this node answers only "
            "studies signed by its pinned coordinator key"
        )
    try:
        sig = base64.b64decode(signed.signature, validate=True)
        public_key.verify(sig, signed.body.encode())
    except (InvalidSignature, ValueError):
        raise UnauthorizedQuery(
            "the query's grant is not signed by this node's pinned "
            "coordinator key (unsigned, foreign-signed or altered)"
        ) from None
    try:
        grant = Grant.model_validate_json(signed.body)
    except ValidationError:
        raise UnauthorizedQuery("the signed grant is malformed") from None
    if canonical_json(grant.model_dump(mode="json")).decode() != signed.body:
        raise UnauthorizedQuery("the signed grant is not in canonical form")
    return grant


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (the node's pinned coordinator key)."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("the coordinator key must be an Ed25519 public key")
    return key
