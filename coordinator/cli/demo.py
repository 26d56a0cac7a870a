"""`rehealth demo`: the whole product on loopback with synthetic sites."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for the data, result and report."),
    seed: int = typer.Option(7, help="Seed of the synthetic federation."),
) -> None:
    """Generate a synthetic federation and print its per-site summary."""
    from shared.synth.cli import generate_and_summarise

    generate_and_summarise(out=out / "data", seed=seed, sites=None)
