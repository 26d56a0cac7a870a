"""`rehealth node budget`: the node's privacy budget per dataset — total, spent, left, history."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from node.cli import app
from node.cli._dataplane import check_format, echo_json, errors_to_exit
from shared.errors import SpecError


@app.command("budget")
def budget(
    config: Path = typer.Option(None, "--config", "-c", help="The node's node.toml (ledger in its store)."),
    ledger_url: str = typer.Option(None, "--ledger", help="Ledger database URL instead of --config."),
    dataset: str = typer.Option(None, "--dataset", help="Only this dataset (default: all)."),
    history: bool = typer.Option(True, "--history/--no-history", help="List every release."),
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Show each dataset's ε budget, ε spent (Opacus accountant over every release), ε left."""
    check_format(fmt)
    with errors_to_exit():
        url, configured = _ledger_source(config, ledger_url)
        from node.ledger import PrivacyLedger  # SQLAlchemy and the accountant: only when run

        ledger = PrivacyLedger(url)
        names = [dataset] if dataset else ledger.datasets()
        states = [ledger.state(d) for d in names]
        hist = {d: ledger.history(d) for d in names} if history else {}
    if fmt == "json":
        echo_json({"ledger": _redact(url), "accountant": ledger.accountant, "configured": configured,
                   "datasets": [{**asdict(s), "history": [asdict(r) for r in hist.get(s.dataset, [])]}
                                for s in states]})
        return
    _print_tables(url, configured, states, hist)


def _ledger_source(config: Path | None, ledger_url: str | None) -> tuple[str, dict | None]:
    if ledger_url:
        return ledger_url, None
    if config is None:
        config = Path("node.toml")
        if not config.exists():
            raise SpecError("give --config node.toml or --ledger URL")
    from node.config import NodeConfig

    cfg = NodeConfig.from_toml(config)
    return cfg.store_url, {"epsilon": cfg.budget.epsilon, "delta": cfg.budget.delta}


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _print_tables(url, configured, states, hist) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"ledger: {_redact(url)}", highlight=False, markup=False)
    if not states:
        note = (f" (configured budget per dataset: ε={configured['epsilon']:g}, "
                f"δ={configured['delta']:g})") if configured else ""
        console.print(f"no dataset has a privacy budget yet: nothing was released{note}")
        return
    summary = Table(title="Privacy budget per dataset")
    for col in ("dataset", "ε budget", "δ", "ε spent", "ε left", "releases"):
        summary.add_column(col, justify="left" if col == "dataset" else "right")
    for s in states:
        left = f"[red]{s.left:.3f}[/red]" if s.left <= 0.05 * s.epsilon else f"{s.left:.3f}"
        summary.add_row(s.dataset, f"{s.epsilon:g}", f"{s.delta:g}", f"{s.spent:.3f}", left,
                        str(s.releases))
    console.print(summary)
    for name, rows in hist.items():
        if not rows:
            continue
        t = Table(title=f"Releases of {name} (ε: this release's increment; total: after it)",
                  box=box.SIMPLE_HEAD)
        for col in ("#", "UTC", "study", "query", "σ", "Δ₂", "ε", "total"):
            t.add_column(col, no_wrap=True,
                         justify="left" if col in ("UTC", "study", "query") else "right")
        for r in rows:
            t.add_row(str(r.id), r.created_at[5:16].replace("T", " "), r.study_id[:8], r.query,
                      f"{r.sigma:.1f}", f"{r.sensitivity:.2f}", f"{r.epsilon:.4f}",
                      f"{r.epsilon_after:.4f}")
        console.print(t)
