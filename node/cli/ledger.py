"""``rehealth node ledger adopt``: the operator's decision to release from the ledger at
``ledger_url`` although the node's anchor names another ledger, or more charges.

The node refuses a ledger that is missing, another one, or behind the charges its store
recorded (:mod:`node.ledger_anchor`): starting afresh would give back budget already spent.
When the old ledger is truly lost (a disk gone with no copy of the ledger), or the operator
moved to another ledger on purpose, this re-anchors the node to the ledger as it is now.
Whatever the lost ledger had spent is then forgotten by this node: the command says what it
replaces, asks first (``--yes`` skips the question), and logs a warning.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from node.cli._app import app
from node.cli._dataplane import CONFIG_OPTION, FORMAT_OPTION, check_format, echo_json, errors_to_exit
from node.config import NodeConfig
from shared.errors import SpecError

ledger_app = typer.Typer(
    help="The node's privacy ledger: adopt a ledger after a deliberate decision.", no_args_is_help=True
)
app.add_typer(ledger_app, name="ledger")


@ledger_app.command("adopt")
def adopt(
    config: Path = CONFIG_OPTION,
    yes: bool = typer.Option(False, "--yes", help="Do not ask: the operator has decided."),
    fmt: str = FORMAT_OPTION,
) -> None:
    """Anchor the node to the ledger at ledger_url as it is now (created if missing). Budget
    the old ledger recorded as spent is forgotten: only for a ledger lost for good."""
    check_format(fmt)
    from node.ledger import LedgerMark, PrivacyLedger, ledger_exists
    from node.ledger_anchor import FileAnchor, StoreAnchor, adopt_ledger

    with errors_to_exit():
        cfg = NodeConfig.from_toml(config)
        if not ledger_exists(cfg.store_url):  # the same test for the store's SQLite file
            raise SpecError("the node has no store at store_url: run rehealth node init first")
        anchor = StoreAnchor(cfg.store_url)
        try:
            before = anchor.read()
            ledger = PrivacyLedger(cfg.ledger_url)
            try:
                now = ledger.mark()
            finally:
                ledger.engine.dispose()
            if before == now:
                raise SpecError("the node is anchored to this ledger already: nothing to adopt")
            if fmt != "json" and not yes:
                _describe(before, now)
                if not typer.confirm("Release from this ledger from now on?", default=False):
                    raise typer.Exit(1)
            before, after = adopt_ledger(cfg.ledger_url, anchor)
        finally:
            anchor.close()
        # a SuperNode reading a data file keeps its own anchor in its state folder
        file_anchor = (
            cfg.federation.state_dir / "node-state" / "ledger-anchor.json" if cfg.federation else None
        )
        if file_anchor is not None and file_anchor.exists():
            FileAnchor(file_anchor).replace(LedgerMark(after.ledger_id, after.charges))
    if fmt == "json":
        echo_json({"before": before.__dict__ if before else None, "after": after.__dict__})
        return
    Console().print(
        f"[yellow]adopted[/yellow] ledger {after.ledger_id[:8]} ({after.charges} charge(s)); "
        "the node releases from it from now on",
        highlight=False,
    )


def _describe(before, now) -> None:
    out = Console()
    was = (
        "nothing (a node that never charged)"
        if before is None
        else f"ledger {before.ledger_id[:8]} at {before.charges} charge(s)"
    )
    out.print(f"the node's store is anchored to {was}", highlight=False)
    out.print(f"ledger_url holds ledger {now.ledger_id[:8]} at {now.charges} charge(s)", highlight=False)
    out.print(
        "adopting it forgets whatever the anchored ledger spent beyond this one: the budget it "
        "held may be spent again",
        highlight=False,
    )
