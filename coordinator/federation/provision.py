"""Provisioning: one federation file in, one start-up kit per site and one for the coordinator out.

Joining a federation by hand took a CA, a server certificate, P-384 node keys, ``flwr supernode
register`` per site and a hand-written SuperNode command line (issue #20). ``rehealth federation
provision federation.toml --out kits/`` makes all of it, the way NVIDIA FLARE's ``nvflare
provision`` does:

- ``kits/coordinator/``: the federation's CA (key encrypted), the SuperLink's certificate for the
  coordinator's host and its key, the registered SuperNode public keys (``registered/*.pub``),
  the SuperExec auth secret, and the operator's Ed25519 study-signing key, **encrypted** with the
  passphrase in ``REHEALTH_KEY_PASSPHRASE`` (plaintext only with an explicit opt-out), and its
  certificate from the CA (``signing/coordinator.crt``) naming the operator who issues reports;
- ``kits/sites/<site>/``: the CA certificate, the site's SuperNode key pair, the coordinator's
  study-signing public key to pin, a commented ``node.toml`` (with its ``[federation]`` section)
  and ``start.sh``/``README.md``. Nothing in it is secret but the site's own SuperNode key.

The CA key stays in the coordinator's kit (encrypted) so sites can be added later
(:func:`add_site`); revoking a site (:func:`revoke_site`) removes its public key from the
registered set. Every private file is 0600 in 0700 folders; an existing kit is never overwritten
without ``force``.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from coordinator.federation.kit_files import (
    CoordinatorKit,
    SiteKit,
    coordinator_readme,
    node_toml,
    site_readme,
    site_start_sh,
)
from coordinator.federation.pki import private_dir, write_private
from coordinator.report.keys import private_key_pem
from shared.errors import SpecError
from shared.flower_commands import split_address
from shared.study import format_validation_error
from shared.tls import issue_server_cert, issue_signing_cert, new_ca, node_key_pair, pem_cert, pem_key

PASSPHRASE_ENV = "REHEALTH_KEY_PASSPHRASE"
SECRET_BYTES = 32
SITE_NAME = r"^[A-Za-z0-9_.-]+$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteEntry(_Model):
    name: str = Field(min_length=1, max_length=64, pattern=SITE_NAME)
    time_zone: str = "UTC"
    #: 127.0.0.1:PORT where the site's SuperNode serves its own Runtime API (its ClientApps)
    runtime_address: str = "127.0.0.1:9094"


class FederationFile(_Model):
    """``federation.toml``: the coordinator's address and the sites."""

    name: str = Field(default="rehealth", pattern=SITE_NAME)
    #: host:port where sites reach the SuperLink (Fleet API) and the operator its control API
    coordinator: str
    #: further names of the coordinator's host for its certificate (the address's host is always in)
    coordinator_hosts: tuple[str, ...] = ()
    #: who issues the evidence reports: the subject of the report-signing certificate, and the
    #: report's ``issuer`` (``rehealth report verify --ca`` checks they are equal)
    operator: str = Field(default="ReHealth Core coordinator", min_length=1, max_length=64)
    validity_days: int = Field(default=365, gt=0, le=3650)
    sites: tuple[SiteEntry, ...] = Field(min_length=1)

    @field_validator("coordinator")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, port = split_address(v)
        return f"{host}:{port}"

    @field_validator("sites")
    @classmethod
    def _unique(cls, v: tuple[SiteEntry, ...]) -> tuple[SiteEntry, ...]:
        names = [s.name for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"site names must be unique, repeated: {dup}")
        return v

    @property
    def host(self) -> str:
        return split_address(self.coordinator)[0]

    @classmethod
    def load(cls, path: Path) -> "FederationFile":
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise SpecError(f"federation file {path}: {e}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SpecError(format_validation_error(e, f"federation file {path}")) from None


def passphrase_from_env(*, insecure_plaintext: bool) -> bytes | None:
    """The key passphrase (env :data:`PASSPHRASE_ENV` or ``REHEALTH_KEY_PASSPHRASE_FILE``), or
    None when plaintext was asked for (:func:`coordinator.report.keys.passphrase_for_writing`).

    Raises:
        SpecError: no passphrase and no explicit opt-out: a signing key is never written in
            the clear by default.
    """
    from coordinator.report.errors import ReportError
    from coordinator.report.keys import passphrase_for_writing

    try:
        return passphrase_for_writing(insecure_plaintext=insecure_plaintext)
    except ReportError as e:
        raise SpecError(str(e)) from None


def load_encrypted_key(path: Path, passphrase: bytes | None):
    """A private key written by provisioning, opened with exactly ``passphrase``; SpecError on a
    wrong or missing one."""
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
    except (ValueError, TypeError):
        raise SpecError(f"{path}: cannot decrypt (wrong or missing {PASSPHRASE_ENV})") from None


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The operator's study-signing key, opened as every signing key is
    (:func:`coordinator.report.signing.load_private_key`: encrypted with the configured
    passphrase, or a plaintext one made on purpose)."""
    from coordinator.report.errors import ReportError
    from coordinator.report.signing import load_private_key

    try:
        return load_private_key(path)
    except ReportError as e:
        raise SpecError(str(e)) from None


@dataclass(frozen=True)
class Kits:
    coordinator: CoordinatorKit
    sites: dict[str, SiteKit]


def _refuse_existing(path: Path, force: bool) -> None:
    """Refuse to write over an existing kit unless ``force`` (then remove it first: a kit is
    replaced whole, never merged with an older one's keys)."""
    if not path.exists():
        return
    if not force:
        raise SpecError(f"{path} exists: refusing to overwrite a kit (pass --force to replace it)")
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def provision(spec: FederationFile, out: Path, *, passphrase: bytes | None, force: bool = False) -> Kits:
    """Write the coordinator's kit and one kit per site under ``out``."""
    out = Path(out)
    coord = CoordinatorKit(out / "coordinator")
    _refuse_existing(coord.root, force)
    for site in spec.sites:
        _refuse_existing(out / "sites" / site.name, force)
    try:
        return _provision(spec, out, coord, passphrase)
    except BaseException:
        # a half-written kit would be refused next time (and might hold an unmatched key)
        for folder in (coord.root, *(out / "sites" / s.name for s in spec.sites)):
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _provision(spec: FederationFile, out: Path, coord: CoordinatorKit, passphrase: bytes | None) -> Kits:
    private_dir(coord.registered)
    private_dir(coord.signing_key.parent)
    validity = dt.timedelta(days=spec.validity_days)
    ca_key, ca = new_ca(f"ReHealth federation {spec.name} CA", validity)
    hosts = tuple(dict.fromkeys((spec.host, *spec.coordinator_hosts)))
    server_key, server = issue_server_cert(ca_key, ca, hosts, validity)
    write_private(coord.ca_cert, pem_cert(ca))
    write_private(coord.ca_key, private_key_pem(ca_key, passphrase))
    write_private(coord.server_cert, pem_cert(server))
    write_private(coord.server_key, pem_key(server_key))  # Flower reads it without a passphrase
    write_private(coord.superexec_secret, secrets.token_bytes(SECRET_BYTES))
    signing = Ed25519PrivateKey.generate()
    write_private(coord.signing_key, private_key_pem(signing, passphrase))
    # the CA binds the operator's name to the report-signing key (rehealth report verify --ca)
    write_private(
        coord.signing_cert,
        pem_cert(issue_signing_cert(ca_key, ca, signing.public_key(), spec.operator, validity)),
    )
    write_private(
        coord.signing_pub,
        signing.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    coord.write_manifest(spec, encrypted=passphrase is not None)
    write_private(coord.root / "README.md", coordinator_readme(spec.coordinator))
    sites = {s.name: _site_kit(spec, s, SiteKit(out / "sites" / s.name), coord) for s in spec.sites}
    return Kits(coord, sites)


def _site_kit(spec: FederationFile, site: SiteEntry, kit: SiteKit, coord: CoordinatorKit) -> SiteKit:
    """One site's kit; its public key joins the coordinator's registered set."""
    private_dir(kit.root)
    priv, pub = node_key_pair()
    write_private(kit.private_key, priv)
    write_private(kit.public_key, pub)
    write_private(kit.ca_cert, coord.ca_cert.read_bytes())
    write_private(kit.coordinator_pub, coord.signing_pub.read_bytes())
    write_private(kit.node_toml, node_toml(site.name, spec.coordinator, site.time_zone, site.runtime_address))
    write_private(kit.readme, site_readme(site.name, spec.coordinator))
    write_private(kit.start_sh, site_start_sh())
    os.chmod(kit.start_sh, 0o700)
    write_private(coord.registered / f"{site.name}.pub", pub)
    return kit


def add_site(
    coordinator_kit: Path,
    site: SiteEntry,
    out: Path,
    *,
    passphrase: bytes | None,
    force: bool = False,
) -> SiteKit:
    """A kit for a site that joins later (``out/<site>``), its key registered in the
    coordinator's kit. The passphrase must open the CA key: only the coordinator's operator
    adds sites. A running SuperLink learns the key at its next start (``rehealth coordinator
    run`` registers every key of the set)."""
    coord = CoordinatorKit(Path(coordinator_kit))
    manifest = coord.manifest()
    if site.name in coord.registered_sites() and not force:
        raise SpecError(f"site {site.name} is already registered (pass --force to re-key it)")
    _refuse_existing(Path(out) / site.name, force)
    key = load_encrypted_key(coord.ca_key, passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SpecError(f"{coord.ca_key}: not the federation's CA key")
    x509.load_pem_x509_certificate(coord.ca_cert.read_bytes())
    spec = FederationFile.model_validate(
        {"name": manifest["name"], "coordinator": manifest["coordinator"], "sites": [site.model_dump()]}
    )
    kit = _site_kit(spec, site, SiteKit(Path(out) / site.name), coord)
    coord.update_manifest(added=site.name)
    return kit


def revoke_site(coordinator_kit: Path, site: str) -> Path:
    """Remove ``site``'s public key from the coordinator kit's registered set (moved to
    ``revoked/`` for the record). Takes effect when the SuperLink next starts; returns the
    moved key."""
    coord = CoordinatorKit(Path(coordinator_kit))
    coord.manifest()  # a coordinator kit, or SpecError
    key = coord.registered / f"{site}.pub"
    if not key.exists():
        raise SpecError(f"site {site} is not registered in {coord.root}")
    revoked = private_dir(coord.root / "revoked")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = revoked / f"{site}-{stamp}.pub"
    key.replace(target)
    coord.update_manifest(revoked=site)
    return target


def describe(kits: Kits) -> dict:
    """What was written (for the CLI's output): paths only."""
    return {
        "coordinator": str(kits.coordinator.root),
        "sites": {name: str(kit.root) for name, kit in kits.sites.items()},
    }


__all__ = [
    "PASSPHRASE_ENV",
    "FederationFile",
    "Kits",
    "SiteEntry",
    "add_site",
    "describe",
    "load_encrypted_key",
    "load_signing_key",
    "passphrase_from_env",
    "provision",
    "revoke_site",
    "split_address",
]
