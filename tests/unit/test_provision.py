"""Provisioning kits (``rehealth federation provision|add-site|revoke-site``) and the node's
side of them (``node.toml``'s ``[federation]`` section, the SuperNode command ``node run`` builds)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from coordinator.cli.federation import app
from coordinator.federation.kit_files import CoordinatorKit
from coordinator.federation.provision import (
    FederationFile,
    load_encrypted_key,
    load_signing_key,
)
from node.config import NodeConfig
from shared.errors import SpecError
from shared.grant import Grant, load_public_key, sign_grant, verify_grant

PASS = "a-long-enough-passphrase"
SITES = ("insurer_a", "insurer_b")
SITE_FILES = {
    "ca.crt",
    "supernode.key",
    "supernode.pub",
    "coordinator.pub",
    "node.toml",
    "README.md",
    "start.sh",
}


def _federation_toml(tmp_path: Path, sites=SITES) -> Path:
    body = 'name = "t"\ncoordinator = "coord.example.org:9093"\ncoordinator_hosts = ["10.0.0.5"]\n\n'
    body += "".join(f'[[sites]]\nname = "{s}"\n\n' for s in sites)
    path = tmp_path / "federation.toml"
    path.write_text(body)
    return path


def _invoke(*args: str, passphrase: str | None = PASS):
    env = {"REHEALTH_KEY_PASSPHRASE": passphrase or "", "REHEALTH_KEY_PASSPHRASE_FILE": ""}
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture
def kits(tmp_path) -> Path:
    out = tmp_path / "kits"
    cp = _invoke("provision", str(_federation_toml(tmp_path)), "--out", str(out))
    assert cp.exit_code == 0, cp.output
    return out


def test_kits_hold_what_each_side_needs(kits):
    coord = CoordinatorKit(kits / "coordinator")
    for path in (coord.ca_cert, coord.ca_key, coord.server_cert, coord.server_key, coord.superexec_secret):
        assert path.is_file(), path
    assert coord.signing_key.is_file() and coord.signing_pub.is_file()
    assert set(coord.registered_sites()) == set(SITES)
    for site in SITES:
        kit = kits / "sites" / site
        assert {p.name for p in kit.iterdir()} == SITE_FILES
        # the registered key is the site's own public key; the pinned key is the signing key's
        assert (kit / "supernode.pub").read_bytes() == coord.registered_sites()[site].read_bytes()
        assert (kit / "coordinator.pub").read_bytes() == coord.signing_pub.read_bytes()
        assert (kit / "ca.crt").read_bytes() == coord.ca_cert.read_bytes()
        assert (kit / "supernode.key").read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")


def test_superlink_certificate_names_the_coordinators_hosts_and_chains_to_the_ca(kits):
    from cryptography import x509

    coord = CoordinatorKit(kits / "coordinator")
    cert = x509.load_pem_x509_certificate(coord.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(coord.ca_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    cert.verify_directly_issued_by(ca)


def test_private_files_are_0600_and_folders_0700(kits):
    for path in [kits, *kits.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_dir():
            assert mode == 0o700, path
        elif path.name == "start.sh":
            assert mode == 0o700, path
        else:
            assert mode == 0o600, (path, oct(mode))


def test_ca_and_signing_keys_are_encrypted_and_refuse_a_wrong_passphrase(kits):
    coord = CoordinatorKit(kits / "coordinator")
    for path in (coord.ca_key, coord.signing_key):
        assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
        with pytest.raises(SpecError, match="cannot decrypt"):
            load_encrypted_key(path, b"the-wrong-passphrase")
        with pytest.raises(SpecError, match="cannot decrypt"):
            load_encrypted_key(path, None)
        assert load_encrypted_key(path, PASS.encode()) is not None


def test_a_study_signed_with_the_kits_key_verifies_against_the_pinned_key(kits, monkeypatch):
    coord = CoordinatorKit(kits / "coordinator")
    monkeypatch.setenv("REHEALTH_KEY_PASSPHRASE", PASS)
    grant = Grant(kind="risk", grant_id="job-0001-abcdef", sites=SITES, terms={"rounds": 1})
    signed = sign_grant(grant, load_signing_key(coord.signing_key))
    pinned = load_public_key((kits / "sites" / SITES[0] / "coordinator.pub").read_bytes())
    assert verify_grant(signed, pinned).grant_id == grant.grant_id
    monkeypatch.setenv("REHEALTH_KEY_PASSPHRASE", "not-the-passphrase")
    with pytest.raises(SpecError):
        load_signing_key(coord.signing_key)


def test_no_passphrase_no_kit_unless_plaintext_is_asked_for(tmp_path):
    spec = _federation_toml(tmp_path)
    cp = _invoke("provision", str(spec), "--out", str(tmp_path / "k1"), passphrase=None)
    assert cp.exit_code == 1 and "REHEALTH_KEY_PASSPHRASE" in cp.output
    assert not (tmp_path / "k1" / "coordinator").exists()
    cp = _invoke(
        "provision", str(spec), "--out", str(tmp_path / "k2"), "--insecure-plaintext-key", passphrase=None
    )
    assert cp.exit_code == 0, cp.output
    key = (tmp_path / "k2" / "coordinator" / "signing" / "coordinator.key").read_bytes()
    assert b"ENCRYPTED" not in key
    assert serialization.load_pem_private_key(key, password=None)


def test_an_existing_kit_is_not_overwritten_without_force(kits, tmp_path):
    spec = tmp_path / "federation.toml"
    key = (kits / "sites" / SITES[0] / "supernode.key").read_bytes()
    cp = _invoke("provision", str(spec), "--out", str(kits))
    assert cp.exit_code == 1 and "--force" in cp.output
    assert (kits / "sites" / SITES[0] / "supernode.key").read_bytes() == key
    cp = _invoke("provision", str(spec), "--out", str(kits), "--force")
    assert cp.exit_code == 0, cp.output
    assert (kits / "sites" / SITES[0] / "supernode.key").read_bytes() != key


def test_revoke_removes_the_key_from_the_registered_set(kits):
    coord = CoordinatorKit(kits / "coordinator")
    cp = _invoke("revoke-site", SITES[1], "--kit", str(coord.root))
    assert cp.exit_code == 0, cp.output
    assert set(coord.registered_sites()) == {SITES[0]}
    assert len(list((coord.root / "revoked").glob(f"{SITES[1]}-*.pub"))) == 1
    cp = _invoke("revoke-site", SITES[1], "--kit", str(coord.root))
    assert cp.exit_code == 1 and "not registered" in cp.output


def test_add_site_needs_the_passphrase_and_registers_the_new_key(kits):
    coord = CoordinatorKit(kits / "coordinator")
    out = kits / "sites"
    cp = _invoke(
        "add-site", "insurer_c", "--kit", str(coord.root), "--out", str(out), passphrase="wrong-passphrase!"
    )
    assert cp.exit_code == 1 and "cannot decrypt" in cp.output
    assert "insurer_c" not in coord.registered_sites() and not (out / "insurer_c").exists()
    cp = _invoke("add-site", "insurer_c", "--kit", str(coord.root), "--out", str(out))
    assert cp.exit_code == 0, cp.output
    assert (
        coord.registered_sites()["insurer_c"].read_bytes()
        == (out / "insurer_c" / "supernode.pub").read_bytes()
    )
    cp = _invoke("add-site", "insurer_c", "--kit", str(coord.root), "--out", str(out))
    assert cp.exit_code == 1 and "already registered" in cp.output


def test_node_toml_parses_with_the_nodes_own_loader(kits):
    kit = kits / "sites" / SITES[0]
    cfg = NodeConfig.from_toml(kit / "node.toml")
    assert cfg.site_id == SITES[0]
    fed = cfg.federation
    assert fed is not None and fed.superlink == "coord.example.org:9093"
    assert fed.root_certificates == kit.resolve() / "ca.crt"
    assert fed.private_key == kit.resolve() / "supernode.key"
    assert fed.coordinator_key == kit.resolve() / "coordinator.pub"
    assert cfg.api is None


def test_a_site_kit_holds_no_secret_but_its_own_node_key(kits):
    coord = CoordinatorKit(kits / "coordinator")
    others = {
        "ca.key": coord.ca_key.read_bytes(),
        "superlink.key": coord.server_key.read_bytes(),
        "superexec.secret": coord.superexec_secret.read_bytes(),
        "signing key": coord.signing_key.read_bytes(),
    }
    for site in SITES:
        kit = kits / "sites" / site
        for other in SITES:
            if other != site:
                others[f"{other}'s key"] = (kits / "sites" / other / "supernode.key").read_bytes()
        for path in kit.iterdir():
            data = path.read_bytes()
            if path.name != "supernode.key":
                assert b"PRIVATE KEY" not in data, path
            for what, secret in others.items():
                if what != f"{site}'s key":
                    assert secret not in data, (path, what)
                    if secret.startswith(b"-----"):  # a PEM body line alone would leak it too
                        lines = secret.strip().splitlines()
                        assert lines[len(lines) // 2] not in data, (path, what)


def test_federation_file_refuses_bad_addresses_and_duplicate_sites(tmp_path):
    path = tmp_path / "f.toml"
    path.write_text('coordinator = "no-port"\n[[sites]]\nname = "a"\n')
    with pytest.raises(SpecError, match="host:port"):
        FederationFile.load(path)
    path.write_text('coordinator = "h:1"\n[[sites]]\nname = "a"\n[[sites]]\nname = "a"\n')
    with pytest.raises(SpecError, match="unique"):
        FederationFile.load(path)


def test_node_run_builds_the_secured_supernode_from_node_toml(kits):
    from node.flower.node_run import plan

    kit = kits / "sites" / SITES[0]
    cfg = NodeConfig.from_toml(kit / "node.toml")
    p = plan(cfg, kit / "node.toml")
    cmd = p.supernode
    assert cmd[cmd.index("--root-certificates") + 1] == str(kit.resolve() / "ca.crt")
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(kit.resolve() / "supernode.key")
    assert cmd[cmd.index("--superlink") + 1] == "coord.example.org:9093"
    assert cmd[cmd.index("--isolation") + 1] == "process" and "--insecure" not in cmd
    node_config = cmd[cmd.index("--node-config") + 1]
    # one config: the ledger, budget and pinned key of node.toml reach the SuperNode
    assert f'site="{SITES[0]}"' in node_config and "budget-delta=1e-06" in node_config
    assert f'coordinator-key="{kit.resolve() / "coordinator.pub"}"' in node_config
    assert "ledger.db" in node_config and p.api is None
    # the Runtime API's credentials are made at start, not shipped in the kit
    assert p.runtime.server_key.parent == kit.resolve() / "flower" / "runtime"
    guard = kit / "flower" / "guard-bin" / "flwr-clientapp"
    assert os.readlink(guard).endswith("rehealth-clientapp")
    assert p.env["PATH"].split(os.pathsep)[0] == str(guard.parent.resolve())


def test_node_run_refuses_a_node_key_others_can_read(kits):
    from node.flower.node_run import plan

    kit = kits / "sites" / SITES[0]
    os.chmod(kit / "supernode.key", 0o644)
    with pytest.raises(SpecError, match="readable by others"):
        plan(NodeConfig.from_toml(kit / "node.toml"), kit / "node.toml")


def test_the_launcher_and_node_run_share_one_supernode_command():
    """Both build the SuperNode's argv with shared.flower_commands (no second copy to drift)."""
    import inspect

    import coordinator.federation.launcher as launcher
    import node.flower.node_run as node_run

    for mod in (launcher, node_run):
        src = inspect.getsource(mod)
        assert "supernode_command(" in src and '"--auth-supernode-private-key"' not in src


def test_node_run_explains_a_node_toml_without_federation_section(tmp_path):
    from node.config import default_config_text
    from node.flower.node_run import plan

    path = tmp_path / "node.toml"
    path.write_text(default_config_text(site_id="solo"))
    with pytest.raises(SpecError, match=r"no \[federation\] section"):
        plan(NodeConfig.from_toml(path), path)
