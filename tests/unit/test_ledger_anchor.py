"""The ledger's anchor (node/ledger_anchor.py): the node refuses a ledger that is missing,
another one, or behind the charges its store recorded, and releases again only after the
operator adopts one. The deleted-ledger attack itself is tests/security/test_ledger_deleted.py."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli import app
from node.config import NodeConfig
from node.ledger import LedgerMark, PrivacyLedger
from node.ledger_anchor import FileAnchor, LedgerAnchorError, StoreAnchor, open_anchored_ledger
from node.runtime import ANCHOR_FILE, NodeRuntime
from node.store import open_store
from tests.security.hr_company import company, risk_model


def _run(*args: str, input: str | None = None):
    return CliRunner().invoke(app, list(args), input=input)


@pytest.fixture
def hr_node(tmp_path: Path) -> Path:
    """An initialised node with persons and an approved-looking risk model: `groups` releases."""
    node = tmp_path / "node"
    assert _run("init", "--dir", str(node), "--site-id", "acme").exit_code == 0
    company(n=120).to_csv(tmp_path / "persons.csv", index=False)
    cfg = str(node / "node.toml")
    assert _run("ingest", "--config", cfg, "--kind", "persons", str(tmp_path / "persons.csv")).exit_code == 0
    risk_model(node / "models")
    return node


def _groups(node: Path, by: str = "department"):
    return _run("groups", "--config", str(node / "node.toml"), "--by", by)


def _anchor(node: Path) -> LedgerMark | None:
    anchor = StoreAnchor(NodeConfig.from_toml(node / "node.toml").store_url)
    try:
        return anchor.read()
    finally:
        anchor.close()


def _charges(url: str) -> int:
    led = PrivacyLedger(url)
    try:
        return led.mark().charges
    finally:
        led.engine.dispose()


def test_a_fresh_node_creates_and_anchors_its_ledger(hr_node: Path) -> None:
    assert _anchor(hr_node) is None  # nothing charged yet: nothing anchored
    first = _groups(hr_node)
    assert first.exit_code == 0 and "new release" in first.output, first.output
    led = PrivacyLedger(NodeConfig.from_toml(hr_node / "node.toml").ledger_url)
    assert _anchor(hr_node) == led.mark() == LedgerMark(led.ledger_id, 1)
    again = _groups(hr_node, "job_type")  # each charge advances the mark
    assert again.exit_code == 0, again.output
    assert _anchor(hr_node) == LedgerMark(led.ledger_id, 2)


def test_a_new_ledger_url_is_refused(hr_node: Path) -> None:
    assert _groups(hr_node).exit_code == 0
    toml = hr_node / "node.toml"
    toml.write_text(toml.read_text().replace("sqlite:///ledger.db", "sqlite:///elsewhere.db"))
    res = _groups(hr_node)
    assert res.exit_code != 0 and "ledger is missing" in res.output, res.output
    assert "ledger adopt" in res.output
    assert not (hr_node / "elsewhere.db").exists()  # a missing ledger is not created either


def test_another_existing_ledger_is_refused(hr_node: Path) -> None:
    assert _groups(hr_node).exit_code == 0
    other = PrivacyLedger(f"sqlite:///{hr_node / 'other.db'}")  # another ledger, further along
    other.ensure_budget(epsilon=3.0, delta=1e-5)
    for i in range(3):
        other.charge(study_id="s", query=f"q{i}", sigma=50.0, sensitivity=1.0)
    other.engine.dispose()
    toml = hr_node / "node.toml"
    toml.write_text(toml.read_text().replace("sqlite:///ledger.db", "sqlite:///other.db"))
    res = _groups(hr_node)
    assert res.exit_code != 0 and "not the ledger this node was charged through" in res.output, res.output
    assert _charges(f"sqlite:///{hr_node / 'other.db'}") == 3  # nothing charged to it


def test_a_ledger_restored_behind_the_mark_is_refused(hr_node: Path, tmp_path: Path) -> None:
    """A file-level copy of the same ledger (same id) from before a release: a rollback."""
    assert _groups(hr_node).exit_code == 0
    saved = tmp_path / "ledger-copy.db"
    shutil.copy(hr_node / "ledger.db", saved)
    assert _groups(hr_node, "job_type").exit_code == 0  # charged after the copy
    for f in hr_node.glob("ledger.db*"):
        f.unlink()
    shutil.copy(saved, hr_node / "ledger.db")
    res = _groups(hr_node, "job_type")  # would be drawn again from the rolled-back ledger
    assert res.exit_code != 0 and "behind the charges" in res.output, res.output
    assert _charges(f"sqlite:///{hr_node / 'ledger.db'}") == 1
    budget = _run("budget", "--config", str(hr_node / "node.toml"))
    assert budget.exit_code != 0 and "behind the charges" in budget.output, budget.output


def test_budget_refuses_a_missing_ledger_without_creating_one(hr_node: Path) -> None:
    assert _groups(hr_node).exit_code == 0
    for f in hr_node.glob("ledger.db*"):
        f.unlink()
    res = _run("budget", "--config", str(hr_node / "node.toml"))
    assert res.exit_code != 0 and "ledger is missing" in res.output, res.output
    assert not (hr_node / "ledger.db").exists()


def test_adopt_re_anchors_after_the_operators_decision(hr_node: Path, caplog) -> None:
    assert _groups(hr_node).exit_code == 0
    old = _anchor(hr_node)
    for f in hr_node.glob("ledger.db*"):
        f.unlink()
    cfg = str(hr_node / "node.toml")
    declined = _run("ledger", "adopt", "--config", cfg, input="n\n")
    assert declined.exit_code != 0 and "may be spent again" in declined.output, declined.output
    assert _anchor(hr_node) == old and _groups(hr_node).exit_code != 0
    with caplog.at_level(logging.WARNING, logger="rehealth.node.ledger"):
        adopted = _run("ledger", "adopt", "--config", cfg, "--yes")
    assert adopted.exit_code == 0 and "adopted" in adopted.output, adopted.output
    assert any("adopted by the operator" in r.getMessage() for r in caplog.records)
    new = _anchor(hr_node)
    assert new is not None and old is not None and new.ledger_id != old.ledger_id and new.charges == 0
    again = _groups(hr_node)
    assert again.exit_code == 0 and "new release" in again.output, again.output
    nothing = _run("ledger", "adopt", "--config", cfg, "--yes")  # already anchored there
    assert nothing.exit_code != 0 and "nothing to adopt" in nothing.output


def test_a_store_anchored_before_anchors_existed_is_anchored_at_first_open(store_url: str, tmp_path) -> None:
    """A node upgraded with a ledger that already holds charges: anchored to it as it is."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    led = PrivacyLedger(url)
    led.ensure_budget(epsilon=5.0, delta=1e-5)
    led.charge(study_id="old", query="q", sigma=50.0, sensitivity=1.0)
    led.engine.dispose()
    open_store(store_url).engine.dispose()
    anchor = StoreAnchor(store_url)
    try:
        assert anchor.read() is None
        led = open_anchored_ledger(url, anchor)
        assert anchor.read() == LedgerMark(led.ledger_id, 1)
        led.charge(study_id="new", query="q", sigma=50.0, sensitivity=1.0)
        assert anchor.read() == LedgerMark(led.ledger_id, 2)
        anchor.advance(LedgerMark(led.ledger_id, 1))  # a late writer never lowers the mark
        assert anchor.read() == LedgerMark(led.ledger_id, 2)
        with pytest.raises(LedgerAnchorError, match="replaced while in use"):
            anchor.advance(LedgerMark("f" * 32, 9))
        led.engine.dispose()
    finally:
        anchor.close()


def test_a_data_file_node_keeps_its_anchor_in_its_state_folder(tmp_path: Path) -> None:
    """The SuperNode's runtime without a store: the mark lives in <state-dir>/ledger-anchor.json."""
    state = tmp_path / "state"
    rt = NodeRuntime(site="a", data_path=tmp_path / "cohort.csv", state_dir=state)
    led = rt.ledger()
    led.charge(study_id="s", query="q", sigma=50.0, sensitivity=1.0)
    assert FileAnchor(state / ANCHOR_FILE).read() == LedgerMark(led.ledger_id, 1)
    led.engine.dispose()
    for f in state.glob("ledger.db*"):
        f.unlink()
    with pytest.raises(LedgerAnchorError, match="ledger is missing"):
        rt.ledger()
    assert not (state / "ledger.db").exists()


def _anchored_charges(node, study: str, n: int) -> None:
    cfg = node.cfg
    anchor = StoreAnchor(cfg.store_url)
    led = open_anchored_ledger(cfg.ledger_url, anchor)
    try:
        for i in range(n):
            led.charge(study_id=study, query=f"q{i}", sigma=20.0, sensitivity=1.0)
    finally:
        led.engine.dispose()
        anchor.close()


@pytest.fixture
def backed_up(tmp_path, valid_person):
    """A SQLite node with two anchored charges, a backup, then two more charges."""
    from backup_node import make_node

    from node.backup import backup_node

    node = make_node(tmp_path, "sqlite:///node.db")
    node.ingest([valid_person(f"E-{i}") for i in range(12)], "first")
    _anchored_charges(node, "early", 2)
    archive = tmp_path / "early.rhb"
    backup_node(node.cfg, archive)
    _anchored_charges(node, "late", 2)
    return node, archive


def test_restore_beside_the_live_ledger_keeps_the_anchor_satisfied(backed_up) -> None:
    from node.backup import restore_node

    node, archive = backed_up
    out = restore_node(node.cfg, archive)
    assert out["ledger_anchor"] is None
    assert _anchor(node.dir) is not None and _anchor(node.dir).charges == 4  # not the backup's 2
    anchor = StoreAnchor(node.cfg.store_url)
    open_anchored_ledger(node.cfg.ledger_url, anchor).engine.dispose()  # releases as before
    anchor.close()


def test_restore_without_the_live_ledger_is_behind_the_mark(backed_up) -> None:
    """The live ledger is lost; the backup's is older: the releases since are unknown, so the
    restored node refuses until the operator adopts what the backup brought back."""
    from node.backup import restore_node

    node, archive = backed_up
    for f in node.dir.glob("ledger.db*"):
        f.unlink()
    out = restore_node(node.cfg, archive)
    assert out["ledger"]["releases_after"] == 2
    assert "behind the charges" in out["ledger_anchor"]
    res = CliRunner().invoke(app, ["restore", "--from", str(archive), "--config", str(node.config)])
    assert "behind the charges" in res.output, res.output
    anchor = StoreAnchor(node.cfg.store_url)
    try:
        with pytest.raises(LedgerAnchorError, match="behind the charges"):
            open_anchored_ledger(node.cfg.ledger_url, anchor)
    finally:
        anchor.close()


def test_restore_onto_a_new_machine_takes_the_backups_ledger(backed_up, tmp_path) -> None:
    """No store and no ledger: the restored store's anchor names the backup's ledger, whose id
    the restored ledger keeps, so the node releases (what came after the backup is lost, as
    documented)."""
    from node.backup import restore_node

    node, archive = backed_up
    old = _anchor(node.dir)
    for f in [*node.dir.glob("ledger.db*"), *node.dir.glob("node.db*")]:
        f.unlink()
    out = restore_node(node.cfg, archive)
    assert out["ledger_anchor"] is None
    anchor = StoreAnchor(node.cfg.store_url)
    try:
        led = open_anchored_ledger(node.cfg.ledger_url, anchor)
        assert old is not None and led.ledger_id == old.ledger_id and led.mark().charges == 2
        led.engine.dispose()
    finally:
        anchor.close()
