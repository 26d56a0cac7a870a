"""`rehealth node groups`: HR risk profiles by department, age band and job type, at the node.

The same views as ``GET /v1/groups`` (:mod:`node.api.groups`), drawn from the same ledger under
the same keys: a view released through the API is printed here at no cost and vice versa. The
population is the node store's persons unless ``--book`` names a file.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from node.cli._app import app
from node.cli._dataplane import errors_to_exit
from node.cli._risk import model_dir, node_config, parse_cutoffs
from node.config import NodeConfig
from shared.errors import SpecError

FORMATS = ("table", "json", "csv")


def group_policy(cfg: NodeConfig | None, *, k: int | None, sigma: float):
    """k from the node policy's ``min_cell`` (``--k`` may only raise it), σ, and the budget's δ."""
    from node.api.groups import GroupPolicy
    from node.policy import NodePolicy

    fed = cfg.federation if cfg is not None else None
    floor = NodePolicy.load(fed.policy_path if fed is not None else None).min_cell
    if k is not None and k < floor:
        raise SpecError(f"--k {k} is below this node's policy min_cell = {floor} (it may only be raised)")
    return GroupPolicy(k=k if k is not None else floor, sigma=sigma, delta=cfg.budget.delta if cfg else 1e-6)


def population(cfg: NodeConfig | None, book: Path | None):
    """``--book`` if given, else the node store's persons (None without either)."""
    if book is not None:
        return book
    if cfg is None:
        return None
    from node.api.groups import persons_frame

    return persons_frame(cfg.store_url)


@app.command("groups")
def groups(
    by: str = typer.Option(..., "--by", help="Dimensions, comma-separated: department, age_band, job_type."),
    config: Path = typer.Option(None, "--config", "-c", help="The node's node.toml."),
    book: Path = typer.Option(None, "--book", help="CSV/Parquet population (default: the node store)."),
    models: Path = typer.Option(None, "--model-dir", help="Model store (default <node dir>/models)."),
    version: str = typer.Option(None, "--version", help="Model version (default: the latest)."),
    cutoffs: str = typer.Option(None, "--cutoffs", help="Tier cut-offs, e.g. 0.05,0.1,0.2."),
    k: int = typer.Option(None, "--k", help="Suppress cells below k (default: the policy's min_cell)."),
    sigma: float = typer.Option(2.0, "--sigma", help="Gaussian noise per count and risk sum."),
    fmt: str = typer.Option("table", "--format", help="table, json or csv."),
    output: Path = typer.Option(None, "--output", "-o", help="Write the json/csv export here."),
) -> None:
    """Print (or export) a group risk profile: people per tier and mean risk, noised, suppressed,
    charged to the node's budget once and served again at no cost."""
    from node.api.app import group_views
    from node.api.groups import parse_by, view_csv
    from node.ledger_anchor import StoreAnchor, open_anchored_ledger
    from node.risk.model_store import ModelStore
    from node.risk.scoring import Scorer

    with errors_to_exit():
        if fmt not in FORMATS:
            raise SpecError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
        if output is not None and fmt == "table":
            raise SpecError("--output writes an export: give --format csv or json")
        parse_by(by)  # a bad dimension fails before anything is read
        cfg = node_config(config)
        if cfg is None:
            raise SpecError("give --config node.toml: a group view is charged to the node's ledger")
        store = ModelStore(model_dir(cfg, config, models))
        stored = store.load(version) if version else store.latest()
        scorer = Scorer.from_model(stored, cutoffs=parse_cutoffs(cutoffs))
        ledger = open_anchored_ledger(cfg.ledger_url, StoreAnchor(cfg.store_url))
        ledger.ensure_budget(epsilon=cfg.budget.epsilon, delta=cfg.budget.delta)
        views = group_views(
            population(cfg, book),
            scorer=scorer,
            policy=group_policy(cfg, k=k, sigma=sigma),
            ledger=ledger,
        )
        view = views.get(by)
    text = view_csv(view) if fmt == "csv" else json.dumps(view, indent=2) + "\n"
    if output is not None:
        output.write_text(text)
    if fmt != "table":
        if output is None:
            typer.echo(text, nl=False)
        else:
            typer.echo(view["note"], err=True)
        return
    _print_table(view)


def _print_table(view: dict) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from shared.risk.tiers import TIERS

    console = Console()
    t = Table(box=box.SIMPLE, title=f"risk profile by {view['by']} (model {view['model_version']})")
    for d in view["dimensions"]:
        t.add_column(d)
    t.add_column("people", justify="right")
    t.add_column("mean risk", justify="right")
    for tier in TIERS:
        t.add_column(tier, justify="right")
    counts = {(c["group"], c["tier"]): c["count"] for c in view["cells"]}
    for g in view["groups"]:
        t.add_row(
            *(g["values"][d] for d in view["dimensions"]),
            _show(g["people"]),
            "suppressed" if g["mean_risk"] is None else f"{g['mean_risk']:.3f}",
            *(_show(counts[(g["group"], tier)]) for tier in TIERS),
        )
    console.print(t)
    console.print(
        f"{view['suppressed_cells']} of {len(view['cells'])} cells suppressed "
        f"({view['complementary_cells']} to protect others); k = {view['k']}, σ = {view['sigma']:g}, "
        f"ε = {view['epsilon']:.3f} at δ = {view['delta']:g}",
        highlight=False,
        markup=False,
    )
    console.print(view["note"], highlight=False, markup=False)


def _show(v) -> str:
    return "suppressed" if v is None else str(v)
