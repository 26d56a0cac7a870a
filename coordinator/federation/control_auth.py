"""Who may use a SuperLink's Control API: the operator and the coordinator, nobody else.

Open-source Flower 1.41 authenticates Control API calls through a pluggable
``ControlAuthnPlugin`` whose only open-source implementation (``NoOp``) accepts every caller
(account authentication is Enterprise's OIDC). The Control API shares the SuperLink's one port with
the Fleet API the SuperNodes must reach, so anyone who reached that port could list runs, read a
run's log — where the study's result travels (:mod:`.run_events`) — and stop or submit runs.

This module closes that: the SuperLink is started through :func:`main`, which runs Flower's own
``flower-superlink`` with :class:`ControlAuthn` in place of the NoOp plugin. Every Control API
request must carry a bearer token, minted per request and valid for minutes:

- an **operator token**, signed with the operator's study-signing key (Ed25519; the operator's
  workstation already holds it to sign studies), checked against the public key the coordinator
  kit pins (``signing/coordinator.pub``);
- a **coordinator token**, an HMAC under the SuperLink's SuperExec secret, for the coordinator's
  own processes on its host (registering node keys at start, the loopback federation), which
  hold that secret already and with it the SuperLink's runtime.

A token is ``rh1.<claims>.<tag>`` (base64url): claims ``{"aud", "kind", "iat", "exp", "jti"}`` in
RFC 8785 form, lifetime at most :data:`MAX_LIFETIME_S`, clock skew :data:`SKEW_S`, each ``jti``
accepted once (a captured token cannot be replayed, though TLS already hides it). Refusals are
logged by kind, never with the token. Flower's login routes stay open and say that account login is
not available.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from coordinator.federation.superlink_load import configure_superlink

log = logging.getLogger("rehealth.coordinator.control_auth")

AUDIENCE = "rehealth-control-api"
PREFIX = "rh1"
LIFETIME_S = 120  # what a client mints
MAX_LIFETIME_S = 600  # what the SuperLink accepts
SKEW_S = 60  # clocks of the operator's workstation and the SuperLink may differ by this much
OPERATOR, COORDINATOR = "operator", "coordinator"
#: the console script of :func:`main` (pyproject.toml), installed beside Flower's own
SUPERLINK_SCRIPT = "rehealth-superlink"
#: the flag :func:`main` takes off the command line before Flower parses it
OPERATOR_KEY_FLAG = "--rehealth-operator-key"


class ControlAuthError(Exception):
    """A token the SuperLink refuses (the reason is logged, never the token)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _claims_bytes(claims: dict) -> bytes:
    import rfc8785

    return rfc8785.dumps(claims)


def _mac(secret: bytes, message: bytes) -> bytes:
    return hmac.new(secret, b"rehealth control token v1\0" + message, hashlib.sha256).digest()


class Credential(Protocol):
    """What a Control API client presents: a fresh bearer token per request."""

    def token(self) -> str: ...


def _mint(kind: str, tag: Any, now: float | None) -> str:
    iat = int(time.time() if now is None else now)
    claims = {
        "aud": AUDIENCE,
        "kind": kind,
        "iat": iat,
        "exp": iat + LIFETIME_S,
        "jti": secrets.token_hex(16),
    }
    body = _claims_bytes(claims)
    return f"{PREFIX}.{_b64(body)}.{_b64(tag(body))}"


@dataclass(frozen=True)
class OperatorCredential:
    """The operator's tokens, signed with the study-signing key."""

    key: Ed25519PrivateKey

    def token(self, now: float | None = None) -> str:
        return _mint(OPERATOR, self.key.sign, now)


@dataclass(frozen=True)
class CoordinatorCredential:
    """The coordinator's own tokens, MACed under the SuperLink's SuperExec secret."""

    secret: bytes

    @classmethod
    def from_file(cls, path: Path) -> CoordinatorCredential:
        return cls(Path(path).read_bytes())

    def token(self, now: float | None = None) -> str:
        return _mint(COORDINATOR, lambda body: _mac(self.secret, body), now)


class TokenVerifier:
    """The SuperLink's side: checks a token's tag, audience, kind, lifetime and freshness."""

    def __init__(self, *, secret: bytes, operator_key: Ed25519PublicKey | None = None):
        self._secret = secret
        self._operator_key = operator_key
        self._seen: dict[str, int] = {}  # jti -> exp
        self._lock = threading.Lock()

    def verify(self, token: str, now: float | None = None) -> str:
        """The token's kind (``operator`` or ``coordinator``).

        Raises:
            ControlAuthError: anything wrong with it.
        """
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != PREFIX:
            raise ControlAuthError("not a ReHealth control token")
        try:
            body, tag = _unb64(parts[1]), _unb64(parts[2])
            claims = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise ControlAuthError("malformed token") from e
        if not isinstance(claims, dict) or body != _claims_bytes(claims):
            raise ControlAuthError("claims not in canonical form")
        kind = claims.get("kind")
        if kind == COORDINATOR:
            if not hmac.compare_digest(tag, _mac(self._secret, body)):
                raise ControlAuthError("coordinator token with a wrong MAC")
        elif kind == OPERATOR:
            if self._operator_key is None:
                raise ControlAuthError("operator token, but this SuperLink pins no operator key")
            try:
                self._operator_key.verify(tag, body)
            except InvalidSignature as e:
                raise ControlAuthError("operator token not signed by the pinned operator key") from e
        else:
            raise ControlAuthError("unknown token kind")
        self._check_claims(claims, time.time() if now is None else now)
        return str(kind)

    def _check_claims(self, claims: dict, now: float) -> None:
        iat, exp, jti = claims.get("iat"), claims.get("exp"), claims.get("jti")
        if claims.get("aud") != AUDIENCE:
            raise ControlAuthError("token for another audience")
        if not (isinstance(iat, int) and isinstance(exp, int) and isinstance(jti, str) and len(jti) >= 16):
            raise ControlAuthError("token claims incomplete")
        if exp - iat > MAX_LIFETIME_S or exp <= iat:
            raise ControlAuthError("token lifetime out of bounds")
        if now < iat - SKEW_S or now > exp + SKEW_S:
            raise ControlAuthError("token expired or not yet valid")
        with self._lock:
            for old in [j for j, e in self._seen.items() if e + SKEW_S < now]:
                del self._seen[old]
            if jti in self._seen:
                raise ControlAuthError("token replayed")
            self._seen[jti] = exp


# -- Flower's plugin interfaces -------------------------------------------------------------------


def server_plugin(verifier: TokenVerifier):
    """A ``ControlAuthnPlugin`` (the SuperLink's side) over ``verifier``."""
    from flwr.common.constant import ACCESS_TOKEN_KEY, NOOP_FLWR_AID
    from flwr.supercore.auth.typing import AccountInfo
    from flwr.supercore.error import ApiErrorCode, FlowerError
    from flwr.superlink.auth_plugin import ControlAuthnPlugin

    class ControlAuthn(ControlAuthnPlugin):
        def __init__(self) -> None:
            self.verifier = verifier

        def get_login_details(self):
            return None  # `flwr login`: account login is not offered here

        def validate_tokens_in_metadata(self, metadata: Sequence[tuple[str, str | bytes]]):
            token = next((v for k, v in metadata if k == ACCESS_TOKEN_KEY), None)
            if not isinstance(token, str):
                log.warning("control API call refused: no token")
                return False, None
            try:
                kind = self.verifier.verify(token)
            except ControlAuthError as e:
                log.warning("control API call refused: %s", e)
                return False, None
            # one account for both kinds: runs, federations and nodes stay visible to both
            return True, AccountInfo(flwr_aid=NOOP_FLWR_AID, account_name=kind)

        def get_auth_tokens(self, device_code: str):
            raise FlowerError(
                ApiErrorCode.NO_ACCOUNT_AUTH, "Account login is not available on this SuperLink."
            )

        def refresh_tokens(self, metadata):
            return None, None

    return ControlAuthn()


def cli_plugin(credential: Credential, host: str):
    """A ``CliAuthPlugin`` (the client's side) that writes a fresh token into every request."""
    from flwr.cli.auth_plugin.auth_plugin import CliAuthPlugin
    from flwr.common.constant import ACCESS_TOKEN_KEY

    class BearerAuth(CliAuthPlugin):
        @staticmethod
        def login(login_details, control_client):
            raise NotImplementedError("ReHealth control tokens need no login")

        def __init__(self, host: str):
            self.host = host

        def store_tokens(self, credentials) -> None:
            pass

        def load_tokens(self) -> None:
            pass

        def write_tokens_to_metadata(self, metadata):
            return [*metadata, (ACCESS_TOKEN_KEY, credential.token())]

        def read_tokens_from_metadata(self, metadata):
            return None

    return BearerAuth(host)


def load_operator_public_key(path: Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    key = load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def _take_flag(argv: list[str], flag: str) -> tuple[list[str], str | None]:
    if flag not in argv:
        return argv, None
    i = argv.index(flag)
    return argv[:i] + argv[i + 2 :], argv[i + 1]


def superlink_module():
    """Flower's ``flower-superlink`` module (its package re-exports the function under the same
    name, so ``import a.b.flower_superlink as m`` would give the function)."""
    import importlib

    return importlib.import_module("flwr.superlink.cli.flower_superlink")


def main(argv: list[str] | None = None) -> None:
    """``flower-superlink`` with :class:`ControlAuthn`: the SuperExec secret (its own flag) keys
    coordinator tokens; ``--rehealth-operator-key PEM`` pins the operator's key."""
    args = list(sys.argv[1:] if argv is None else argv)
    args, operator_pem = _take_flag(args, OPERATOR_KEY_FLAG)
    _, secret_file = _take_flag(args, "--superexec-auth-secret-file")
    if secret_file is None:
        sys.exit("rehealth superlink: --superexec-auth-secret-file is required (it keys coordinator tokens)")
    verifier = TokenVerifier(
        secret=Path(secret_file).read_bytes(),
        operator_key=load_operator_public_key(Path(operator_pem)) if operator_pem else None,
    )
    superlink_cli = superlink_module()
    plugin = server_plugin(verifier)
    if not hasattr(superlink_cli, "load_control_authn_plugin"):  # the patched site is gone: fail shut
        sys.exit("rehealth superlink: this Flower has no load_control_authn_plugin to replace")
    superlink_cli.load_control_authn_plugin = lambda: plugin
    configure_superlink()  # many nodes on a loaded machine: ServerApp start window, SQLite waits
    sys.argv = ["flower-superlink", *args]
    superlink_cli.flower_superlink()


if __name__ == "__main__":
    main()


def guarded_superlink(cmd: list[str], *, operator_key: Path | None = None) -> list[str]:
    """``cmd`` (a ``flower-superlink`` command line) started through :func:`main`, so its Control
    API takes only operator and coordinator tokens; an insecure (plaintext, debugging) SuperLink
    has no SuperExec secret to key tokens with and is left as it is."""
    if "--superexec-auth-secret-file" not in cmd:
        return cmd
    pin = [OPERATOR_KEY_FLAG, str(operator_key)] if operator_key is not None else []
    script = Path(sys.executable).with_name(SUPERLINK_SCRIPT)  # what `ps` and health checks see
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", __name__]
    return [*launcher, *pin, *cmd[1:]]
