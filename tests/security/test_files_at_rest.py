"""The node's files at rest: a local user who is not the node's (another account on its host)
reads nothing of a person from them, and the node's log names no value and no pseudonym.

The attack runs the node's own commands the way an operator does, under the most common umask
(022: new files world-readable unless the code says otherwise) — ``init``, an API key, an
ingest with a quarantined row, the budget (which creates the ledger), ``score`` to a file —
then lists what another account could read. Before this test the ledger (``ledger.db``: every
release the node made, the group views' bodies, the studies' charges) and the per-person score
file (``rehealth node score -o``: each person's id, department, probability and tier) were
created 0644.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select
from typer.testing import CliRunner

from node.cli import app
from node.store.models import persons
from tests.security.hr_company import company, risk_model

#: a value no real row holds: it must appear nowhere but in the input file
CANARY = "canary-8513"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _run(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


def test_another_account_reads_no_person_and_the_log_names_none(tmp_path: Path, umask_022, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    node = tmp_path / "node"
    _run("init", "--dir", str(node), "--site-id", "acme")
    cfg = str(node / "node.toml")
    _run("apikey", "create", "--config", cfg, "--role", "hr")
    book = company(n=40)
    book["sbp"] = book["sbp"].astype(object)
    book.loc[3, "sbp"] = CANARY  # quarantined: named in the node's log by row and field only
    (tmp_path / "persons.csv").write_text(book.to_csv(index=False))
    _run("ingest", "--config", cfg, "--kind", "persons", str(tmp_path / "persons.csv"))
    _run("budget", "--config", cfg)  # opens (creates) the ledger
    risk_model(node / "models")
    scorable = company(n=40).drop(index=3)
    scorable.to_csv(tmp_path / "book.csv", index=False)
    _run("score", "--config", cfg, str(tmp_path / "book.csv"), "-o", str(node / "scores.csv"))
    _run("score", "--config", cfg, str(tmp_path / "book.csv"), "-o", str(node / "scores.parquet"))

    private = {"node.db", "node.key", "ledger.db", "api_keys.toml", "scores.csv", "scores.parquet"}
    present = {p.name for p in node.iterdir()}
    assert private <= present, present
    readable = {
        str(p.relative_to(node)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in node.rglob("*")
        if p.is_file() and p.name.split("-")[0] in private and p.stat().st_mode & 0o077
    }
    assert readable == {}, f"readable by other accounts: {readable}"

    engine = create_engine(f"sqlite:///{node / 'node.db'}")
    with engine.connect() as conn:
        pseudonyms = [r[0] for r in conn.execute(select(persons.c.pseudonym))]
    engine.dispose()
    assert len(pseudonyms) == 39
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    assert CANARY not in log_text
    assert not [p for p in pseudonyms if p in log_text]


def test_an_approval_note_of_exact_calibration_figures_is_private(tmp_path: Path, umask_022) -> None:
    """``rehealth node model approve`` records the calibration check it rests on — exact
    figures of the node's own rows: row and event counts, the observed event rate per decile of
    predicted risk. Before this test the note was created 0644."""
    from node.risk.calibration import calibration_check
    from node.risk.model_store import ModelStore
    from shared.risk.record import TrainingRecord

    store = ModelStore(tmp_path / "models")
    served = risk_model(tmp_path / "models")
    sent = store.save_candidate(arrays=served.arrays, record=TrainingRecord(rounds=2))
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.4, 300)
    check = calibration_check(prob=p, y=(rng.random(300) < p).astype(float)).to_dict()
    store.approve(sent.version, check=check)
    note = tmp_path / "models" / f"{sent.version}.approved.json"
    assert str(check["events"]) in note.read_text()
    assert stat.S_IMODE(note.stat().st_mode) == 0o600
