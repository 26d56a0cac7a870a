import hashlib
import hmac
import os
import stat
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.pseudonym import KEY_BYTES, KeyFileError, Pseudonymizer, load_or_create_key


def test_key_is_created_once_with_mode_0600_and_then_reused(tmp_path):
    path = tmp_path / "node.key"
    key = load_or_create_key(path)
    assert len(key) == KEY_BYTES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    assert load_or_create_key(tmp_path / "other.key") != key  # random, not derived


def test_concurrent_first_starts_agree_on_one_key(tmp_path):
    """Every start gets the key (none reads a file another has created but not yet filled),
    and all get the same one; no temporary file is left behind."""
    for attempt in range(20):
        path, keys, errors = tmp_path / f"node{attempt}.key", [], []

        def start():
            try:
                keys.append(load_or_create_key(path))
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)

        threads = [threading.Thread(target=start) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(keys) == 8 and len(set(keys)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"node{a}.key" for a in range(20))


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_key_readable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "node.key"
    load_or_create_key(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_key(path)


def test_a_truncated_key_is_refused(tmp_path):
    path = tmp_path / "node.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"short")
    os.close(fd)
    with pytest.raises(KeyFileError, match="32 bytes"):
        load_or_create_key(path)


def test_pseudonym_is_hmac_sha256_of_site_and_id():
    key = bytes(range(32))
    p = Pseudonymizer(key=key, site_id="insurer_a")
    want = hmac.new(key, b"insurer_a\x1fA-000123", hashlib.sha256).hexdigest()
    assert p("A-000123") == want
    assert p.many(["A-000123", "A-000124"]) == [want, p("A-000124")]
    assert Pseudonymizer(key=key, site_id="insurer_b")("A-000123") != want
    assert Pseudonymizer(key=bytes(32), site_id="insurer_a")("A-000123") != want


def test_key_material_is_not_shown():
    key = bytes(range(32))
    p = Pseudonymizer(key=key, site_id="s")
    assert key.hex() not in repr(p) and "hidden" in repr(p)
    with pytest.raises(AttributeError):
        p.__dict__  # noqa: B018 - slots only: no accidental vars() dump


@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    site=st.from_regex(r"[A-Za-z0-9_.-]{1,20}", fullmatch=True),
    raw=st.text(min_size=1, max_size=128),
)
def test_fast_path_equals_stdlib_hmac(key, site, raw):
    want = hmac.new(key, (site + "\x1f" + raw).encode(), hashlib.sha256).hexdigest()
    assert Pseudonymizer(key=key, site_id=site).many([raw, raw]) == [want, want]
