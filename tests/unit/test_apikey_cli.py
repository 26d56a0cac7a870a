"""`rehealth node apikey create|list|revoke`: keys that expire and can be revoked, listed
without ever showing a key (or its hash)."""

from __future__ import annotations

import json
import stat
from datetime import datetime, timedelta, timezone

from typer.testing import CliRunner

from node.api.auth import KeyRing
from node.cli import app


def _cli(*args: str):
    return CliRunner().invoke(app, ["apikey", *args])


def _create(keys, role="underwriter", *extra: str) -> dict:
    res = _cli("create", "--role", role, "--keys-file", str(keys), "--format", "json", *extra)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_create_with_expiry_stores_a_hash_only_mode_0600(tmp_path):
    keys = tmp_path / "api_keys.toml"
    made = _create(keys, "ops", "--expires-in", "30d")
    expires = datetime.fromisoformat(made["expires_at"].replace("Z", "+00:00"))
    left = expires - datetime.now(timezone.utc)
    assert timedelta(days=29, hours=23) < left <= timedelta(days=30)
    assert made["key"] not in keys.read_text() and made["id"] in keys.read_text()
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    key = KeyRing.from_file(keys).lookup(made["key"])
    assert key is not None and key.role == "ops" and key.refusal() is None


def test_list_shows_ids_roles_status_never_a_key_or_hash(tmp_path):
    keys = tmp_path / "api_keys.toml"
    a, b = _create(keys), _create(keys, "hr", "--expires-in", "12h")
    for fmt in ("json", "table"):
        res = _cli("list", "--keys-file", str(keys), "--format", fmt)
        assert res.exit_code == 0, res.output
        for secret in (a["key"], b["key"], *(k.sha256 for k in KeyRing.from_file(keys).keys)):
            assert secret not in res.output
    rows = json.loads(_cli("list", "--keys-file", str(keys), "--format", "json").output)
    assert [(r["id"], r["role"], r["status"]) for r in rows] == [
        (a["id"], "underwriter", "active"),
        (b["id"], "hr", "active"),
    ]
    assert rows[0]["expires_at"] is None and rows[1]["expires_at"].endswith("Z")


def test_revoke_marks_the_key_and_the_ring_refuses_it(tmp_path):
    keys = tmp_path / "api_keys.toml"
    a, b = _create(keys), _create(keys)
    ring = KeyRing.from_file(keys)  # as a running API holds it
    res = _cli("revoke", a["id"], "--keys-file", str(keys))
    assert res.exit_code == 0 and "revoked" in res.output
    assert ring.lookup(a["key"]).refusal() == "revoked"  # type: ignore[union-attr]
    assert ring.lookup(b["key"]).refusal() is None  # type: ignore[union-attr]
    rows = json.loads(_cli("list", "--keys-file", str(keys), "--format", "json").output)
    assert [r["status"] for r in rows] == ["revoked", "active"] and rows[0]["revoked_at"]


def test_revoke_unknown_id_is_an_error_naming_it(tmp_path):
    keys = tmp_path / "api_keys.toml"
    _create(keys)
    before = keys.read_text()
    res = _cli("revoke", "k-nothere", "--keys-file", str(keys))
    assert res.exit_code == 1 and "k-nothere" in res.output
    assert keys.read_text() == before


def test_bad_expiry_and_role_are_refused_without_writing(tmp_path):
    keys = tmp_path / "api_keys.toml"
    for args in (["--expires-in", "30x"], ["--expires-in", "0d"], ["--expires-in", "soon"]):
        res = _cli("create", "--role", "hr", "--keys-file", str(keys), *args)
        assert res.exit_code == 1 and "--expires-in" in res.output
    res = _cli("create", "--role", "root", "--keys-file", str(keys))
    assert res.exit_code == 1 and "root" in res.output
    assert not keys.exists()


def test_add_remains_an_alias_and_old_files_still_load(tmp_path):
    keys = tmp_path / "api_keys.toml"
    # a file as the first version wrote it: no dates
    keys.write_text('\n[[keys]]\nid = "k-0ld"\nrole = "hr"\nsha256 = "' + "ab" * 32 + '"\n')
    res = _cli("add", "--role", "underwriter", "--keys-file", str(keys), "--format", "json")
    assert res.exit_code == 0, res.output
    ring = KeyRing.from_file(keys)
    assert [k.key_id for k in ring.keys] == ["k-0ld", json.loads(res.output)["id"]]
    assert ring.keys[0].status() == "active"
