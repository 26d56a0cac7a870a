"""Control API tokens (coordinator/federation/control_auth.py): each attack on a token is refused.

Without the verifier, Flower 1.41's open-source SuperLink accepts every Control API caller
(``NoOpControlAuthnPlugin``): each forged token below would have been let in. The live check —
that a real SuperLink started through ``control_auth.main`` refuses ``flwr ls`` and accepts the
coordinator's own client — is in tests/security/test_control_plane.py.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from coordinator.federation import control_auth as ca

SECRET = b"s" * 32


@pytest.fixture()
def operator():
    return Ed25519PrivateKey.generate()


@pytest.fixture()
def verifier(operator):
    return ca.TokenVerifier(secret=SECRET, operator_key=operator.public_key())


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _forge(claims: dict, tag: bytes) -> str:
    return f"rh1.{_b64(rfc8785.dumps(claims))}.{_b64(tag)}"


def _claims(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_genuine_tokens_of_both_kinds_pass(verifier, operator):
    assert verifier.verify(ca.OperatorCredential(operator).token()) == "operator"
    assert verifier.verify(ca.CoordinatorCredential(SECRET).token()) == "coordinator"


def test_a_token_is_accepted_once(verifier, operator):
    token = ca.OperatorCredential(operator).token()
    verifier.verify(token)
    with pytest.raises(ca.ControlAuthError, match="replayed"):
        verifier.verify(token)


@pytest.mark.parametrize(
    "attack",
    [
        "another_operator_key",
        "wrong_secret",
        "no_token_format",
        "changed_claims",
        "unknown_kind",
        "empty_tag",
    ],
)
def test_forged_tokens_are_refused(verifier, attack):
    good = ca.CoordinatorCredential(SECRET).token()
    forged = {
        "another_operator_key": lambda: ca.OperatorCredential(Ed25519PrivateKey.generate()).token(),
        "wrong_secret": lambda: ca.CoordinatorCredential(b"t" * 32).token(),
        "no_token_format": lambda: "Bearer-anything",
        # the claims of a genuine token with the operator's kind swapped in: its MAC no longer fits
        "changed_claims": lambda: _forge({**_claims(good), "kind": "operator"}, b"x" * 64),
        "unknown_kind": lambda: _forge({**_claims(good), "kind": "admin"}, b""),
        "empty_tag": lambda: good.rsplit(".", 1)[0] + ".",
    }[attack]()
    with pytest.raises(ca.ControlAuthError):
        verifier.verify(forged)


def test_an_operator_token_needs_a_pinned_operator_key(operator):
    bare = ca.TokenVerifier(secret=SECRET)  # a SuperLink that pins no operator key
    with pytest.raises(ca.ControlAuthError, match="pins no operator key"):
        bare.verify(ca.OperatorCredential(operator).token())


def test_expired_future_and_long_lived_tokens_are_refused(verifier, operator):
    cred = ca.OperatorCredential(operator)
    now = time.time()
    with pytest.raises(ca.ControlAuthError, match="expired"):
        verifier.verify(cred.token(now=now - ca.LIFETIME_S - ca.SKEW_S - 5), now=now)
    with pytest.raises(ca.ControlAuthError, match="not yet valid"):
        verifier.verify(cred.token(now=now + ca.SKEW_S + 5), now=now)
    iat = int(now)
    long_lived = {"aud": ca.AUDIENCE, "kind": "operator", "iat": iat, "exp": iat + 86400, "jti": "a" * 32}
    with pytest.raises(ca.ControlAuthError, match="lifetime"):
        verifier.verify(_forge(long_lived, operator.sign(rfc8785.dumps(long_lived))), now=now)
    other_aud = {**long_lived, "exp": iat + 60, "aud": "someone-else"}
    with pytest.raises(ca.ControlAuthError, match="audience"):
        verifier.verify(_forge(other_aud, operator.sign(rfc8785.dumps(other_aud))), now=now)


def test_non_canonical_claims_are_refused_even_when_signed(verifier, operator):
    """The signed bytes must be the claims' RFC 8785 form: no second encoding of one claim set."""
    iat = int(time.time())
    body = json.dumps(
        {"jti": "b" * 32, "kind": "operator", "aud": ca.AUDIENCE, "iat": iat, "exp": iat + 60}, indent=1
    ).encode()
    with pytest.raises(ca.ControlAuthError, match="canonical"):
        verifier.verify(f"rh1.{_b64(body)}.{_b64(operator.sign(body))}")


def test_guarded_superlink_replaces_only_a_secured_command():
    plain = ["flower-superlink", "--insecure", "--port", "1"]
    assert ca.guarded_superlink(plain) == plain
    secured = ["flower-superlink", "--superexec-auth-secret-file", "s", "--port", "1"]
    cmd = ca.guarded_superlink(secured, operator_key=None)
    assert cmd[0].endswith("rehealth-superlink") and cmd[1:] == secured[1:]  # installed script
    assert hasattr(ca.superlink_module(), "load_control_authn_plugin")  # the site main() replaces
