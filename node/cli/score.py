"""`rehealth node score`: score a whole book (CSV/Parquet) with a stored model, at the node."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from node.cli._app import app
from node.cli._dataplane import errors_to_exit
from node.cli._risk import model_dir, node_config, parse_cutoffs


@app.command("score")
def score(
    book: Path = typer.Argument(..., help="CSV or Parquet with the 16 features by name."),
    output: Path = typer.Option(..., "--output", "-o", help="Scores out (.csv or .parquet)."),
    config: Path = typer.Option(None, "--config", "-c", help="The node's node.toml."),
    models: Path = typer.Option(None, "--model-dir", help="Model store (default <node dir>/models)."),
    version: str = typer.Option(None, "--version", help="Model version (default: the latest)."),
    cutoffs: str = typer.Option(None, "--cutoffs", help="Tier cut-offs, e.g. 0.05,0.1,0.2."),
    fmt: str = typer.Option("table", "--format", help="Summary: table or json."),
) -> None:
    """Write probability and tier per person; print counts per tier."""
    from node.risk.model_store import ModelStore
    from node.risk.scoring import Scorer, read_book, score_book, write_scores
    from shared.risk.tiers import TIERS

    with errors_to_exit():
        cfg = node_config(config)
        store = ModelStore(model_dir(cfg, config, models))
        stored = store.load(version) if version else store.latest()
        scorer = Scorer.from_model(stored, cutoffs=parse_cutoffs(cutoffs))
        frame = read_book(book)
        t0 = time.perf_counter()
        scored = score_book(frame, scorer)
        seconds = time.perf_counter() - t0
        write_scores(scored, output)
    counts = scored["tier"].value_counts().reindex(list(TIERS), fill_value=0)
    summary = {
        "model_version": stored.version,
        "rows": len(scored),
        "output": str(output),
        "seconds": round(seconds, 4),
        "tiers": {t: int(c) for t, c in counts.items()},
    }
    if fmt == "json":
        typer.echo(json.dumps(summary))
        return
    typer.echo(f"scored {len(scored)} persons with model {stored.version} in {seconds:.3f} s → {output}")
    for t, c in counts.items():
        typer.echo(f"  {t:<10} {c:>9}")
