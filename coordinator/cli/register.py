"""`rehealth study register`: sign and timestamp the spec and analysis plan before the study runs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from coordinator.files import load_spec
from shared.errors import ReHealthError


def register(
    spec: Path = typer.Option(..., "--spec", exists=True, dir_okay=False, help="Study spec (TOML)."),
    key: Path = typer.Option(
        ...,
        "--key",
        exists=True,
        dir_okay=False,
        help="The operator's Ed25519 key (it signs the report too).",
    ),
    plan: Path = typer.Option(
        None, "--plan", exists=True, dir_okay=False, help="The analysis plan document to register with it."
    ),
    out: Path = typer.Option(
        Path("registration.json"), "--out", help="Where to write the signed registration."
    ),
) -> None:
    """Register SPEC (and --plan) before any outcome is read: the evidence report then states that
    registration preceded the study, or that the spec changed after it (pass --registration to
    `study run` or `report render`)."""
    from coordinator.report import load_private_key
    from coordinator.report.registration import dump
    from coordinator.report.registration import register as sign_registration

    console = Console()
    try:
        study = load_spec(spec)
        record = sign_registration(
            study=study.study.name, spec_hash=study.spec_hash(), key=load_private_key(key), plan=plan
        )
    except ReHealthError as e:
        console.print(f"[red]register failed:[/red] {e}", markup=True)
        raise typer.Exit(1) from None
    if out.exists():
        console.print(f"[red]register failed:[/red] {out} exists: a registration is never overwritten")
        raise typer.Exit(1)
    out.write_bytes(dump(record))
    console.print(
        f"registered {record.study} (spec {record.spec_hash[:16]}…) at {record.registered_at}; "
        f"record SHA-256 {record.digest}: {out}",
        markup=False,
    )
