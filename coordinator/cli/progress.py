"""Rich progress for a running study, fed by the ServerApp's progress events."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


@contextmanager
def study_progress(console: Console, *, enabled: bool = True):
    """Yields an ``on_event`` callback that advances a progress bar per finished round."""
    if not enabled:
        yield lambda ev: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} rounds"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("starting federation", total=None)

        def on_event(ev: dict) -> None:
            kind = ev.get("event")
            if kind == "federation_up":
                bar.update(task, description=f"federation up ({ev['nodes']} nodes, {ev['seconds']:.1f} s)")
            elif kind == "submitted":
                console.log(f"run {ev['run_id']} started (study status|logs|stop {ev['run_id']})")
            elif kind == "connected":
                bar.update(task, description=f"{ev['nodes']} nodes connected")
            elif kind == "round_start":
                bar.update(task, description=f"round {ev['round']} ({'+'.join(ev['ops'])})")
            elif kind == "round_end":
                bar.advance(task)
                console.log(f"round {ev['round']}: {len(ev['sites'])} sites, {ev['seconds']:.1f} s")
            elif kind == "dropped":
                # printed when it happens (escaped: a reason is text, not markup); the result
                # and the report name the site again
                console.log(
                    f"[yellow]site {escape(str(ev['site']))} dropped in round "
                    f"{escape(str(ev['round']))}[/yellow]: {escape(str(ev.get('reason', '')))}; "
                    "the study goes on without it (federation.min_nodes)"
                )
            elif kind == "selected":  # a selecting study ([terms] select) chose its basis
                console.log(f"propensity basis chosen: {ev['terms']} terms, {ev['rounds']} rounds")
            elif kind == "estimated":
                bar.update(task, description="estimated")
            elif kind == "failed":
                # the caller prints the whole error; a one-line bar would cut it (and rich
                # would read "[privacy]" in it as markup)
                bar.update(task, description="[red]failed[/red]")

        yield on_event
