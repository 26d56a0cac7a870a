"""`rehealth synth`: write a seeded synthetic federation and print its per-site truth.

rehealth synth --sites 3 --out data --seed 7 [--scale 0.1] [--format parquet]
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from coordinator.synth.io import DEFAULT_EPSILON, FORMATS, write_federation
from shared.synth.dgp import DGP_NAMES
from shared.synth.federation import generate_federation
from shared.synth.sites import MAX_SMALL_FIRMS, PROFILE_SETS, PROFILES

app = typer.Typer(
    help="Generate a seeded synthetic federation with ground truth (true ATT per outcome).",
    add_completion=False,
    subcommand_metavar="",  # a single command: no "[COMMAND] [ARGS]" in its usage line
    pretty_exceptions_show_locals=False,
)


def _num(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def summary_table(truth: dict) -> Table:
    """Per-site rows (people, treated, CV event rate, true ATT per outcome) and a pooled row."""
    table = Table(
        title=f"Synthetic federation: seed {truth['seed']}, scale {truth['scale']:g}",
        box=box.SIMPLE_HEAD,
        caption="ATT: true mean of (y1 - y0) over the treated",
    )
    table.add_column("site")
    for col in ("people", "treated", "CV events\nper year", "high-risk\nbaseline"):
        table.add_column(col, justify="right")
    for col in ("ATT claims\ncost", "ATT CV\nevent", "ATT absence\ndays"):
        table.add_column(col, justify="right", style="bold")

    def row(name: str, t: dict, **style) -> None:
        table.add_row(
            name,
            f"{t['n']:,}",
            f"{t['n_treated']:,} ({t['uptake']:.0%})",
            _num(t["event_rate"], ".1%"),
            _num(t["event_rate_high_risk_baseline"], ".1%"),
            _num(t["att"]["claims_cost"], ",.0f"),
            _num(t["att"]["cv_event"], "+.4f"),
            _num(t["att"]["absence_days"], "+.2f"),
            **style,
        )

    for name, t in truth["sites"].items():
        row(name, t)
    table.add_section()
    row("pooled", truth["pooled"], style="bold")
    return table


def generate_and_summarise(
    *,
    out: Path,
    seed: int,
    sites: int | None,
    scale: float = 1.0,
    fmt: str = "csv",
    epsilon: float | None = None,
    secure_aggregation: bool = False,
    console: Console | None = None,
    profile_set: str = "default",
    negative_controls: bool = False,
    dgp: str = "baseline",
) -> Path:
    """Generate, write and print the per-site summary; returns the ``study.toml`` path."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: do not squeeze the table to 80 columns
            console = Console(width=120)
    t0 = time.perf_counter()
    fed = generate_federation(seed=seed, sites=sites, scale=scale, profile_set=profile_set, dgp=dgp)
    t1 = time.perf_counter()
    study = write_federation(
        fed,
        Path(out),
        fmt=fmt,
        epsilon=epsilon,
        secure_aggregation=secure_aggregation,
        negative_controls=negative_controls,
    )
    t2 = time.perf_counter()
    console.print(summary_table(fed.truth))
    console.print(
        f"Generated {fed.truth['pooled']['n']:,} people in {t1 - t0:.2f} s, wrote {fmt} in "
        f"{t2 - t1:.2f} s.\nStudy spec: {study}\nGround truth: {study.parent / 'truth.json'}"
    )
    return study


@app.callback(invoke_without_command=True)
def synth(
    sites: int | None = typer.Option(
        None,
        min=1,
        max=max(len(PROFILES), MAX_SMALL_FIRMS),
        help=f"Take the first N of the profile set's sites ({len(PROFILES)} in default, large insurer "
        f"first; {MAX_SMALL_FIRMS} in small-firms); all when omitted.",
    ),
    profile: str = typer.Option(
        "default",
        "--profile",
        help="default (insurers and companies) or small-firms (5–20 companies of < 500 staff: "
        "the study is pooled, over SecAgg+, with no per-company figure in the report).",
    ),
    out: Path = typer.Option(Path("out/synth"), help="Output folder."),
    seed: int = typer.Option(7, help="Master seed: equal seeds give byte-identical files."),
    scale: float = typer.Option(1.0, min=0.0001, help="Multiply every site's size."),
    fmt: str = typer.Option("csv", "--format", help=f"File format: {' or '.join(FORMATS)}."),
    epsilon: float = typer.Option(
        DEFAULT_EPSILON, min=0.01, help="study.toml is a DP study at this ε (δ = 1e-6)."
    ),
    exact: bool = typer.Option(
        False,
        "--exact",
        help="Write an exact (non-DP) study instead: "
        "only nodes whose operator allows exact answers answer it.",
    ),
    negative_controls: bool = typer.Option(
        False,
        "--negative-controls",
        help="Declare the cohort's 24 negative-control outcomes in study.toml (EASE and calibrated "
        "p/CI in the report). Under DP they share the outcomes' releases: more noise per outcome.",
    ),
    dgp: str = typer.Option(
        "baseline",
        "--dgp",
        help="Data-generating process (e.g. unmeasured_confounding: a latent confounder the "
        "negative controls reveal): " + ", ".join(DGP_NAMES) + ".",
    ),
) -> None:
    """Write per-site persons, interventions, outcomes and cohort tables, study.toml and
    truth.json, and print the true ATT per site."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}", param_hint="--format")
    if dgp not in DGP_NAMES:
        raise typer.BadParameter(f"must be one of {', '.join(DGP_NAMES)}", param_hint="--dgp")
    if profile not in PROFILE_SETS:
        raise typer.BadParameter(f"must be one of {', '.join(PROFILE_SETS)}", param_hint="--profile")
    if sites is not None and sites > len(PROFILE_SETS[profile]):
        raise typer.BadParameter(f"{profile} has {len(PROFILE_SETS[profile])} sites", param_hint="--sites")
    small = profile == "small-firms"
    if small and sites is not None and sites < 2:
        raise typer.BadParameter("a pooled small-firm study needs at least 2 companies", param_hint="--sites")
    generate_and_summarise(
        out=out,
        seed=seed,
        sites=sites,
        scale=scale,
        fmt=fmt,
        epsilon=None if exact else epsilon,
        secure_aggregation=small and not exact,  # pooled: SecAgg+ whenever the study is DP
        profile_set=profile,
        negative_controls=negative_controls,
        dgp=dgp,
    )
