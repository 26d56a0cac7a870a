"""A ledger file that disappears must not give the whole budget back.

Restoring an old backup does not (``test_backup_rollback.py``), and deleting ``ledger.db`` (or
pointing ``ledger_url`` at a new path) used to: the next release found no ledger, created an
empty one with the configured budget, and released the same view again — a second, independent
draw of a view already paid for. Only the node's own account (or the operator) can delete the
file, so this is the operator's decision or accident, not a coordinator's attack; but nothing
told the operator either. Closed: the store remembers the ledger it was charged through (its id
and a high-water mark in ``store_meta``, :mod:`node.ledger_anchor`) and every opener checks it
(deploy/TRUST.md, "What the node enforces itself"); the other cases are in
``tests/unit/test_ledger_anchor.py``.
"""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from node.cli import app
from node.ledger import PrivacyLedger
from tests.security.hr_company import company, risk_model


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


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
