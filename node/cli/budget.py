"""`rehealth node budget`: the node's one privacy budget — total, spent, reserved, left — and
what spent or holds it.

A node's ledger holds one budget for its whole population (:mod:`node.ledger`): study queries,
risk-model training and HR group views all draw from it. This command shows the budget, what
live DP studies hold reserved apart from what was spent, the releases grouped by kind (with the
study, job or grouping each came from) and the studies' reservations (live, completed,
cancelled, lapsed).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from node.cli._app import app
from node.cli._dataplane import check_format, echo_json, errors_to_exit
from shared.errors import SpecError

if TYPE_CHECKING:
    from node.ledger_anchor import StoreAnchor


@app.command("budget")
def budget(
    config: Path = typer.Option(None, "--config", "-c", help="The node's node.toml (its ledger_url)."),
    ledger_url: str = typer.Option(
        None, "--ledger-url", "--ledger", help="Ledger database URL instead of --config."
    ),
    history: bool = typer.Option(True, "--history/--no-history", help="List every release."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Show the node's ε budget, ε spent (accountant over every release), ε reserved by running
    DP studies (not yet spent), ε left, the releases by kind — study queries (per study), risk
    training (per job), group views — and the studies' reservations."""
    check_format(fmt)
    with errors_to_exit():
        url, configured, anchor = _ledger_source(config, ledger_url)
        from node.ledger_anchor import open_anchored_ledger  # SQLAlchemy and the accountant: only when run

        # with --config: the ledger the node releases from, checked against the store's anchor
        # (a missing one is not created); --ledger-url inspects any ledger as it is
        ledger = open_anchored_ledger(url, anchor, record=False)
        state = ledger.state() if ledger.has_budget() else None
        rows = ledger.history() if state is not None else []
        held = ledger.reservations() if state is not None else []
    kinds = _by_kind(rows)
    if fmt == "json":
        echo_json(
            {
                "ledger": _redact(url),
                "accountant": ledger.accountant,
                "configured": configured,
                "budget": asdict(state) if state is not None else None,
                "by_kind": kinds,
                "history": [{**asdict(r), "kind": r.kind} for r in rows] if history else [],
                "reservations": [asdict(r) for r in held],
            }
        )
        return
    _print_tables(url, configured, state, kinds, rows if history else [], held)


def _by_kind(rows) -> dict[str, list[dict]]:
    """Releases grouped by kind, then by study/job id (group views: by grouping), in order.

    ``epsilon`` of a group is the sum of its releases' increments; the increments of all
    groups add up to the total spent (each is what the accountant's total grew by)."""
    from node.ledger import KINDS

    groups: dict[str, dict[str, dict]] = {k: {} for k in KINDS}
    for r in rows:
        kind = r.kind
        ident = r.query.split(":", 1)[1] if kind == "group_view" and ":" in r.query else r.study_id
        g = groups[kind].setdefault(
            ident,
            {
                "id": ident,
                "releases": 0,
                "queries": defaultdict(int),
                "epsilon": 0.0,
                "first": r.created_at,
                "last": r.created_at,
            },
        )
        g["releases"] += 1
        g["queries"][r.query] += 1
        g["epsilon"] += r.epsilon
        g["last"] = r.created_at
    return {k: [{**g, "queries": dict(g["queries"])} for g in v.values()] for k, v in groups.items()}


def _ledger_source(
    config: Path | None, ledger_url: str | None
) -> tuple[str, dict | None, "StoreAnchor | None"]:
    """The ledger's URL, the configured budget and the node's anchor (None with --ledger-url,
    or when the node has no store yet: then nothing was charged through it)."""
    if ledger_url:
        return ledger_url, None, None
    if config is None:
        config = Path("node.toml")
        if not config.exists():
            raise SpecError("give --config node.toml or --ledger-url URL")
    from node.config import NodeConfig
    from node.ledger import ledger_exists
    from node.ledger_anchor import StoreAnchor

    cfg = NodeConfig.from_toml(config)
    # ledger_exists: the same test for any SQLite database (an inspection creates no store)
    anchor = StoreAnchor(cfg.store_url) if ledger_exists(cfg.store_url) else None
    return cfg.ledger_url, {"epsilon": cfg.budget.epsilon, "delta": cfg.budget.delta}, anchor


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _print_tables(url, configured, state, kinds, rows, held=()) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from node.ledger import KINDS

    console = Console()
    console.print(f"ledger: {_redact(url)}", highlight=False, markup=False)
    if state is None:
        note = (
            (f" (configured budget: ε={configured['epsilon']:g}, δ={configured['delta']:g})")
            if configured
            else ""
        )
        console.print(f"no privacy budget in this ledger yet: nothing was released{note}")
        return
    summary = Table(title="Privacy budget of this node's population")
    for col in ("ε budget", "δ", "ε spent", "ε reserved", "ε left", "releases"):
        summary.add_column(col, justify="right")
    left = f"[red]{state.left:.3f}[/red]" if state.left <= 0.05 * state.epsilon else f"{state.left:.3f}"
    reserved = f"{state.reserved:.3f} ({state.reservations} live)" if state.reservations else "0"
    summary.add_row(
        f"{state.epsilon:g}", f"{state.delta:g}", f"{state.spent:.3f}", reserved, left, str(state.releases)
    )
    console.print(summary)
    if held:
        res = Table(
            title="DP studies' reservations (ε: what reserving the whole plan added; "
            "a closed one frees what it did not release)",
            box=box.SIMPLE_HEAD,
        )
        for col in ("study", "status", "releases", "ε reserved", "since UTC", "lapses / closed UTC"):
            res.add_column(col, justify="right" if col in ("releases", "ε reserved") else "left")
        for r in held:
            res.add_row(
                r.study_id[:24],
                r.status,
                str(sum(r.releases.values())),
                f"{r.epsilon:.4f}",
                r.created_at[:16].replace("T", " "),
                (r.closed_at or r.expires_at)[:16].replace("T", " "),
            )
        console.print(res)
    by = Table(title="What spent it (ε: sum of the releases' increments)", box=box.SIMPLE_HEAD)
    for col in ("kind", "study / job / grouping", "releases", "queries", "ε", "last UTC"):
        by.add_column(col, justify="right" if col in ("releases", "ε") else "left")
    for kind, label in KINDS.items():
        for g in kinds[kind]:
            queries = ", ".join(q if n == 1 else f"{q}×{n}" for q, n in g["queries"].items())
            by.add_row(
                label,
                g["id"],
                str(g["releases"]),
                queries,
                f"{g['epsilon']:.4f}",
                g["last"][:16].replace("T", " "),
            )
    console.print(by)
    if not rows:
        return
    t = Table(title="Releases (ε: this release's increment; total: after it)", box=box.SIMPLE_HEAD)
    for col in ("#", "UTC", "kind", "study", "query", "σ", "Δ₂", "ε", "total", "status"):
        t.add_column(
            col,
            no_wrap=True,
            justify="left" if col in ("UTC", "kind", "study", "query", "status") else "right",
        )
    for r in rows:
        t.add_row(
            str(r.id),
            r.created_at[5:16].replace("T", " "),
            r.kind,
            r.study_id[:12],
            r.query,
            f"{r.sigma:.1f}",
            f"{r.sensitivity:.2f}",
            f"{r.epsilon:.4f}",
            f"{r.epsilon_after:.4f}",
            r.status,
        )
    console.print(t)
