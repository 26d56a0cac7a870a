"""A node with data and a ledger, for the backup and restore tests (unit and security)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from sqlalchemy import select
from typer.testing import CliRunner

from node.cli import app
from node.config import NodeConfig
from node.ledger import PrivacyLedger
from node.store import models, open_store

SITE = "employer_x"


@dataclass
class BackupNode:
    dir: Path
    config: Path

    @property
    def cfg(self) -> NodeConfig:
        return NodeConfig.from_toml(self.config)

    def cli(self, *args: str):
        return CliRunner().invoke(app, [*args, "--config", str(self.config)])

    def ingest(self, rows: list[dict], name: str, kind: str = "persons") -> None:
        path = self.dir / f"{name}.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        res = self.cli("ingest", str(path), "--kind", kind)
        assert res.exit_code == 0, res.output

    def pseudonyms(self) -> list[str]:
        store = open_store(self.cfg.store_url)
        try:
            with store.engine.connect() as conn:
                p = models.persons.c.pseudonym
                return list(conn.scalars(select(p).order_by(p)))
        finally:
            store.engine.dispose()

    def ledger(self) -> PrivacyLedger:
        return PrivacyLedger(self.cfg.ledger_url)

    def charge(self, study: str, n: int, *, sigma: float = 8.0) -> None:
        led = self.ledger()
        try:
            for i in range(n):
                led.charge(study_id=study, query=f"q{i}", sigma=sigma, sensitivity=1.0)
        finally:
            led.engine.dispose()


def make_node(tmp_path: Path, store_url: str, *, site: str = SITE, name: str = "node") -> BackupNode:
    """A node whose store is ``store_url`` (SQLite file or a PostgreSQL schema) and whose
    ledger is its own SQLite file (SQLite) or shares the store's schema (PostgreSQL)."""
    d = tmp_path / name
    d.mkdir()
    ledger_url = "sqlite:///ledger.db" if store_url.startswith("sqlite") else store_url
    if store_url.startswith("sqlite"):
        store_url = "sqlite:///node.db"
    (d / "node.toml").write_text(
        f'site_id = "{site}"\nstore_url = "{store_url}"\nledger_url = "{ledger_url}"\nkey_path = "node.key"\n'
    )
    node = BackupNode(d, d / "node.toml")
    led = node.ledger()
    led.ensure_budget(epsilon=1.0, delta=1e-6)
    led.engine.dispose()
    return node
