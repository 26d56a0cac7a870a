"""``rehealth node intervention add``: append one event to the trajectory log as it happens."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer
from rich.console import Console

from node.cli._app import app
from node.cli._dataplane import (
    CONFIG_OPTION,
    FORMAT_OPTION,
    check_format,
    echo_json,
    errors_to_exit,
    opened_node,
)
from node.trajectory import record_intervention
from shared.schemas import CHANNELS, INTERVENTION_CODES

intervention_app = typer.Typer(
    help="The intervention trajectory log: who received what, when.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(intervention_app, name="intervention")


@intervention_app.command("add")
def add(
    person_id: str = typer.Option(..., "--person-id", help="The site's own id (pseudonymised)."),
    code: str = typer.Option(..., "--code", help=f"One of: {', '.join(INTERVENTION_CODES)}."),
    start: str = typer.Option(..., "--start", help="Start date, YYYY-MM-DD."),
    end: str = typer.Option(None, "--end", help="End date, YYYY-MM-DD (optional)."),
    channel: str = typer.Option("in_person", "--channel", help=f"One of: {', '.join(CHANNELS)}."),
    config: Path = CONFIG_OPTION,
    fmt: str = FORMAT_OPTION,
) -> None:
    """Record that a person started an intervention.

    The id is pseudonymised before storage and never echoed.
    """
    check_format(fmt)
    with errors_to_exit():
        with opened_node(config) as (_, store, pseudo):
            rec = record_intervention(
                store,
                pseudo,
                person_id=person_id,
                code=code,
                start=start,
                end=end,
                channel=channel,
                source="cli",
            )
    if fmt == "json":
        echo_json(dataclasses.asdict(rec))
    else:
        until = f" until {rec.end}" if rec.end else ""
        Console().print(
            f"[green]recorded[/green] {rec.code} from {rec.start}{until} ({rec.channel})", highlight=False
        )
