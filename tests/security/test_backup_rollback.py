"""Attacks on backup and restore.

1. **Budget rollback.** An operator (or anyone who can run ``rehealth node restore``) restores a
   backup made before the budget was spent, to get the ε back. The ledger must keep every
   release: ε spent never drops, and a release the budget cannot pay for stays refused. A
   restore that replaced the ledger with the backup's would hand the budget back.
2. **A tampered archive.** Someone with write access to the backup disk alters an archive (a
   flipped bit, a cut tail, chunks dropped, swapped or appended, an edited header), or forges
   one without the node's key (a store and ledger of their choosing). Every such archive is
   refused before it touches the store or the ledger.
"""

from __future__ import annotations

import os
import struct

import pytest
from backup_node import make_node

from node.backup import archive as archive_mod
from node.backup import backup_node, restore_node
from node.backup.archive import ArchiveError, write_archive
from shared.errors import BudgetExceededError


@pytest.fixture
def node(tmp_path, store_url, valid_person):
    n = make_node(tmp_path, store_url)
    n.ingest([valid_person(f"E-{i}") for i in range(30)], "first")
    return n


def test_restoring_an_old_backup_does_not_give_the_budget_back(node, tmp_path):
    node.charge("early", 1, sigma=20.0)
    archive = tmp_path / "early.rhb"
    backup_node(node.cfg, archive)
    led = node.ledger()
    late = 0
    while True:  # after the backup, the rest of the budget is spent, to the last release it pays
        try:
            led.charge(study_id="late", query=f"q{late}", sigma=10.0, sensitivity=1.0)
        except BudgetExceededError:
            break
        late += 1
    spent, n = led.spent(), led.state().releases
    assert late >= 2 and spent > 0.8 and n == late + 1
    led.engine.dispose()

    out = restore_node(node.cfg, archive)  # the attack: roll back to "early"
    led = node.ledger()
    assert led.spent() == pytest.approx(spent) and led.spent() >= spent
    assert led.state().releases == n  # the releases made after the backup are all still there
    assert out["ledger"]["releases_added"] == 0 and out["ledger"]["spent_after"] >= spent
    with pytest.raises(BudgetExceededError):  # still refused after the restore
        led.charge(study_id="attack", query="q", sigma=10.0, sensitivity=1.0)
    assert {r.study_id for r in led.history()} == {"early", "late"}
    led.engine.dispose()


def test_a_release_only_the_backup_knows_is_kept(node, tmp_path):
    # a ledger rebuilt from scratch after the backup (the operator "starts over"): the backup's
    # releases come back on top of the new ones, so the union counts both
    node.charge("before", 2)
    archive = tmp_path / "b.rhb"
    backup_node(node.cfg, archive)
    led = node.ledger()
    spent_before = led.spent()
    from node.ledger import releases

    with led.engine.begin() as conn:  # the attacker wipes the history
        conn.execute(releases.delete())
    led.engine.dispose()
    node.charge("after", 1)
    out = restore_node(node.cfg, archive)
    led = node.ledger()
    assert out["ledger"]["releases_added"] == 2
    assert {r.study_id for r in led.history()} == {"before", "after"}
    assert led.spent() > spent_before
    restore_node(node.cfg, archive)  # restoring again adds nothing (no double count either)
    assert node.ledger().state().releases == 3
    led.engine.dispose()


def _archive(node, tmp_path, monkeypatch) -> tuple:
    """An archive of several chunks (small chunks, so that the store spans many)."""
    monkeypatch.setattr(archive_mod, "CHUNK", 512)
    node.charge("s", 2)
    path = tmp_path / "b.rhb"
    backup_node(node.cfg, path)
    raw = path.read_bytes()
    (hlen,) = struct.unpack(">I", raw[30:34])
    start = 34 + hlen
    chunks, i = [], start
    while i < len(raw):
        (n,) = struct.unpack(">I", raw[i : i + 4])
        chunks.append(raw[i : i + 4 + n])
        i += 4 + n
    assert len(chunks) >= 4
    return path, raw[:start], chunks


def _refused(node, path, data: bytes, match: str) -> None:
    before, spent, n = node.pseudonyms(), node.ledger().spent(), node.ledger().state().releases
    node.ingest([{**_ROW, "person_id": f"Z-{len(before)}"}], f"extra-{len(before)}")
    after_ingest = node.pseudonyms()
    path.write_bytes(data)
    with pytest.raises(ArchiveError, match=match):
        restore_node(node.cfg, path)
    assert node.pseudonyms() == after_ingest  # the store was not touched
    led = node.ledger()
    assert (led.spent(), led.state().releases) == (spent, n)  # nor the ledger
    led.engine.dispose()


_ROW: dict = {}


def test_a_tampered_archive_is_refused_and_changes_nothing(node, tmp_path, monkeypatch, valid_person):
    _ROW.update(valid_person("Z"))
    path, head, chunks = _archive(node, tmp_path, monkeypatch)
    body = b"".join(chunks)
    flipped = bytearray(body)
    flipped[len(chunks[0]) + 4 + 10] ^= 0x01  # inside the second chunk's ciphertext
    huge = chunks[0] + struct.pack(">I", 1 << 31) + chunks[1][4:] + b"".join(chunks[2:])
    cases = {
        "a flipped bit": (head + bytes(flipped), "altered"),
        "an edited header": (head.replace(b'"key"', b'"kez"') + body, "another key|altered"),
        "a forged chunk length": (head + huge, "too long"),
        "the last chunk cut off": (head + b"".join(chunks[:-1]), "truncated"),
        "the tail cut short": (head + body[:-7], "truncated"),
        "a chunk dropped": (head + chunks[0] + b"".join(chunks[2:]), "altered"),
        "two chunks swapped": (head + chunks[1] + chunks[0] + b"".join(chunks[2:]), "another key|altered"),
        "data appended": (head + body + chunks[-1], "after its last chunk"),
        "not an archive": (b"SQLite format 3\x00" + body, "not a ReHealth node backup"),
    }
    for what, (data, match) in cases.items():
        try:
            _refused(node, path, data, match)
        except AssertionError as e:  # name the case that got through
            raise AssertionError(f"{what}: {e}") from None


def test_an_archive_forged_without_the_key_is_refused(node, tmp_path, monkeypatch, valid_person):
    _ROW.update(valid_person("Z"))
    path, _, _ = _archive(node, tmp_path, monkeypatch)
    # the forger makes a well-formed archive of their choosing (an empty ledger) under a key
    # of their own; the header claims the node's key fingerprint
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "ledger.json").write_text('{"privacy_releases": []}')
    forged = tmp_path / "forged.rhb"
    header = {"key": node.cfg.key_path.read_bytes().hex()[:8]}
    write_archive(forged, os.urandom(32), header, {n: tmp_path / n for n in ("manifest.json", "ledger.json")})
    _refused(node, path, forged.read_bytes(), "another key")
