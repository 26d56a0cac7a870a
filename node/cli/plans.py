"""``rehealth node plans``: personalised intervention plans, their delivery and trajectory.

Plans are generated from the served risk model and the catalogue named in ``[plans]`` of
node.toml, stored by pseudonym, delivered by signed webhook and followed through opened and
completed events (docs/USAGE.md, "Personalised intervention plans").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from node.cli._app import app
from node.cli._dataplane import (
    CONFIG_OPTION,
    FORMAT_OPTION,
    check_format,
    echo_json,
    errors_to_exit,
    opened_node,
)
from node.config import NodeConfig, PlansSection
from shared.errors import SpecError

plans_app = typer.Typer(
    help="Personalised intervention plans: generate, deliver, opt-outs, events.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(plans_app, name="plans")


def _section(cfg: NodeConfig) -> PlansSection:
    if cfg.plans is None:
        raise SpecError("node.toml has no [plans] section (catalogue, webhook_url; see docs/USAGE.md)")
    return cfg.plans


def _recipient_key(cfg: NodeConfig) -> bytes:
    from node.plans.signing import recipient_key
    from node.pseudonym import load_or_create_key

    return recipient_key(load_or_create_key(cfg.key_path, create=False))


def _report(fmt: str, data: dict) -> None:
    if fmt == "json":
        echo_json(data)
    else:
        typer.echo("  ".join(f"{k}={v}" for k, v in data.items()))


@plans_app.command("secret")
def secret(path: Path = typer.Argument(..., help="Where to create the secret (mode 0600).")) -> None:
    """Create a random signing secret (webhook or callback); share it with the gateway out of band."""
    from node.plans.signing import write_secret

    with errors_to_exit():
        write_secret(path)
    typer.echo(f"created {path}")


@plans_app.command("generate")
def generate(
    min_risk: float = typer.Option(None, "--min-risk", help="Risk threshold (default: the catalogue's)."),
    models: Path = typer.Option(None, "--model-dir", help="Model store (default <node dir>/models)."),
    version: str = typer.Option(None, "--version", help="Model version (default: the served latest)."),
    config: Path = CONFIG_OPTION,
    fmt: str = FORMAT_OPTION,
) -> None:
    """Generate and store plans for everyone at or above the risk threshold."""
    from node.cli._risk import model_dir
    from node.plans.catalogue import Catalogue
    from node.plans.generate import generate_plans
    from node.risk.model_store import ModelStore
    from node.risk.scoring import Scorer

    check_format(fmt)
    with errors_to_exit():
        if min_risk is not None and not 0 <= min_risk <= 1:
            raise SpecError("--min-risk: a probability between 0 and 1")
        with opened_node(config) as (cfg, store, _):
            catalogue = Catalogue.from_toml(_section(cfg).catalogue)
            ms = ModelStore(model_dir(cfg, config, models))
            scorer = Scorer.from_model(ms.load(version) if version else ms.latest())
            summary = generate_plans(store, scorer, catalogue, min_risk=min_risk)
    _report(fmt, dataclasses.asdict(summary))


@plans_app.command("deliver")
def deliver(
    requeue: bool = typer.Option(False, "--requeue", help="Also resend dead-lettered and interrupted plans."),
    config: Path = CONFIG_OPTION,
    fmt: str = FORMAT_OPTION,
) -> None:
    """Send pending plans to the webhook: signed, retried with backoff, dead-lettered after N tries."""
    from node.plans.delivery import DeliverySettings, deliver_plans
    from node.plans.signing import read_secret

    check_format(fmt)
    with errors_to_exit():
        with opened_node(config) as (cfg, store, _):
            sec = _section(cfg)
            if sec.webhook_url is None:
                raise SpecError("[plans] webhook_url is not set: where should plans go?")
            settings = DeliverySettings(
                url=sec.webhook_url,
                secret=read_secret(sec.webhook_secret_path, what="webhook secret"),
                recipient_key=_recipient_key(cfg),
                max_attempts=sec.max_attempts,
                backoff_ms=sec.backoff_ms,
                max_backoff_ms=sec.max_backoff_ms,
                timeout_s=sec.timeout_s,
            )
            summary = deliver_plans(store, settings, requeue=requeue)
    _report(fmt, dataclasses.asdict(summary))
    if summary.dead_lettered:
        raise typer.Exit(2)  # something needs the operator: the gateway refused or stayed down


@plans_app.command("opt-out")
def opt_out(
    person_id: str = typer.Option(..., "--person-id", help="The site's own id (pseudonymised)."),
    undo: bool = typer.Option(False, "--undo", help="Take the person off the opt-out list."),
    config: Path = CONFIG_OPTION,
) -> None:
    """Put a person on the opt-out list: they receive no plan (each skip is logged)."""
    from node.plans.events import set_opt_out

    with errors_to_exit():
        with opened_node(config) as (_, store, pseudo):
            changed = set_opt_out(store, pseudo(person_id), out=not undo)
    state = "opted in" if undo else "opted out"
    typer.echo(f"{state}" + ("" if changed else " (already)"))


@plans_app.command("recipient")
def recipient(
    person_id: str = typer.Option(..., "--person-id", help="The site's own id."),
    config: Path = CONFIG_OPTION,
) -> None:
    """Print the recipient id plans name this person by, for the app's enrolment."""
    from node.plans.signing import recipient_id

    with errors_to_exit():
        with opened_node(config) as (cfg, store, pseudo):
            rid = recipient_id(_recipient_key(cfg), pseudo(person_id))
    typer.echo(rid)


@plans_app.command("import-events")
def import_events_cmd(
    path: Path = typer.Argument(..., help="JSON lines: plan_id, event (opened|completed), code, at."),
    config: Path = CONFIG_OPTION,
    fmt: str = FORMAT_OPTION,
) -> None:
    """Import opened/completed events (the operator's alternative to signed callbacks)."""
    from node.plans.events import import_events

    check_format(fmt)
    with errors_to_exit():
        with opened_node(config) as (_, store, _):
            counts = import_events(store, path)
    _report(fmt, counts)


@plans_app.command("status")
def status(config: Path = CONFIG_OPTION, fmt: str = FORMAT_OPTION) -> None:
    """Plans per delivery status and trajectory events per kind (counts only)."""
    from sqlalchemy import func, select

    from node.store.models import plan_events, plans

    check_format(fmt)
    with errors_to_exit():
        with opened_node(config) as (_, store, _):
            with store.engine.connect() as conn:
                q_status = select(plans.c.status, func.count()).group_by(plans.c.status)
                q_event = select(plan_events.c.event, func.count()).group_by(plan_events.c.event)
                by_status = {str(k): int(v) for k, v in conn.execute(q_status).all()}
                by_event = {str(k): int(v) for k, v in conn.execute(q_event).all()}
    data = {"plans": by_status, "events": by_event}
    if fmt == "json":
        echo_json(data)
    else:
        for title, counts in data.items():
            typer.echo(f"{title}: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
