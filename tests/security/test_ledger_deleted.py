"""A ledger file that disappears gives the whole budget back.

Restoring an old backup does not (``test_backup_rollback.py``), but deleting ``ledger.db`` (or
pointing ``ledger_url`` at a new path) does: the next release finds no ledger, creates an empty
one with the configured budget, and releases the same view again — a second, independent draw
of a view already paid for. Only the node's own account (or the operator) can delete the file,
so this is the operator's decision or accident, not a coordinator's attack; but nothing tells
the operator either. Closing it needs the store to remember the ledger it was charged through
(an id and a high-water mark in ``store_meta``) and every opener of the ledger to check it —
open in deploy/TRUST.md, "What remains open".
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from node.cli import app
from node.ledger import PrivacyLedger
from tests.security.hr_company import company, risk_model


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.xfail(
    strict=True,
    reason="the ledger is not anchored in the store: a deleted ledger.db is a fresh budget (TRUST.md open 9)",
)
def test_deleting_the_ledger_does_not_give_the_budget_back(tmp_path: Path) -> None:
    node = tmp_path / "node"
    assert _run("init", "--dir", str(node), "--site-id", "acme").exit_code == 0
    cfg = str(node / "node.toml")
    company(n=120).to_csv(tmp_path / "persons.csv", index=False)
    assert _run("ingest", "--config", cfg, "--kind", "persons", str(tmp_path / "persons.csv")).exit_code == 0
    risk_model(node / "models")
    first = _run("groups", "--config", cfg, "--by", "department")
    assert first.exit_code == 0 and "new release" in first.output, first.output
    for f in node.glob("ledger.db*"):
        f.unlink()
    again = _run("groups", "--config", cfg, "--by", "department")
    charged = PrivacyLedger(f"sqlite:///{node / 'ledger.db'}").history()
    assert again.exit_code != 0 and charged == [], again.output
