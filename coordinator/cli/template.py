"""`rehealth study template small-firms`: a commented study spec for a pooled small-firm study.

Firms under 500 staff rarely have the 100 treated the size gate asks for on their own; pooled,
5–20 of them do. The template fixes the three things such a pool needs and explains each in a
comment, so the firms' HR and IT can read what they agree to: secure aggregation (no firm's own
table reaches the coordinator), size gates on the pool, and a report that names the firms but
shows no per-company figure.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from shared import thresholds as th
from shared.study import DEFAULT_OUTCOMES

TEMPLATES = ("small-firms",)
#: The pool's size bounds (issue 22): below 5 firms a firm's share of the pool is large enough
#: to matter in the sums; above 20 the SecAgg+ rounds (every node every round) get fragile.
MIN_FIRMS, MAX_FIRMS = 5, 20


def small_firms_template(
    *, companies: int = 5, epsilon: float = 1.0, name: str = "small_firms_pooled"
) -> str:
    """The commented TOML spec (loads with :class:`shared.study.StudySpec`)."""
    outcomes = "\n".join(
        f'[[outcomes]]\nname = "{o.name}"\nlo = {o.lo!r}\ncap = {o.cap!r}\nkind = "{o.kind}"\n'
        for o in DEFAULT_OUTCOMES
    )
    sites = "\n".join(
        f'[[sites]]\nname = "firm_{i:02d}"   # must equal the site = … of that firm\'s node\n'
        for i in range(1, companies + 1)
    )
    return f"""\
# A pooled cross-company study for small firms (5–20 companies of < 500 staff each).
#
# Each firm runs one node (a Flower SuperNode, `rehealth node …`) on its own machine; no row,
# pseudonym or score ever leaves it. Before anyone joins, check what the pool needs:
#
#     rehealth study plan --spec study.toml --treated <expected treated, all firms>
#
# It prints the smallest ε at that count and the fewest treated the pool needs at this ε.

[study]
name = "{name}"
seed = 0
description = "Pooled study of a workplace health programme across {companies} small companies."

[treatment]
column = "treated"            # 1 = took part in the programme (from each node's trajectory log)
# intervention = "lifestyle_coaching"   # or derive treatment from an intervention code
cost_per_person = 400.0       # programme cost per participant: gives savings net of cost in HR's summary

# Covariates: the 16 clinical features with their public bounds (shared.features) by default.

{outcomes}
[privacy]
enabled = true                # differential privacy: every release carries noise
epsilon = {epsilon:g}                 # each firm's budget for this study (δ below); see `study plan`
delta = 1e-6
# Secure aggregation (SecAgg+): after describe the coordinator sees only the masked SUM over all
# firms, never one firm's table, and the sum carries the noise of one central release. Every
# firm must answer every round, so federation.min_nodes stays unset.
secure_aggregation = true
unresolved_fit = "stop"       # stop after describe (5 % of ε) if the pool is too small to resolve

[report]
# The report names the participating firms but shows no per-company figure (no people,
# treated or control counts per firm). Size gates (≥ {th.MIN_TREATED} treated, controls ≥
# {th.MIN_CONTROL_RATIO:g} × treated) apply to the pool, not to each company.
per_site = false

[federation]
# superlink = "coordinator.example:9093"   # the SuperLink the firms' nodes connect to
round_timeout_s = 300.0

# One [[sites]] per firm ({MIN_FIRMS}–{MAX_FIRMS}): the node's site name, nothing else (each node
# points at its own data in its --node-config).
{sites}"""


def template(
    kind: str = typer.Argument(..., help=f"Template: {', '.join(TEMPLATES)}."),
    out: Path = typer.Option(Path("study.toml"), "--out", help="Where to write the spec."),
    companies: int = typer.Option(
        MIN_FIRMS, "--companies", min=MIN_FIRMS, max=MAX_FIRMS, help="Number of firms in the pool."
    ),
    epsilon: float = typer.Option(1.0, "--epsilon", min=0.01, help="Each firm's ε for this study."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Write a commented study spec for a pooled small-firm study: SecAgg+ on, size gates on the
    pool, a report that names the firms but shows no per-company figure."""
    console = Console()
    if kind not in TEMPLATES:
        raise typer.BadParameter(f"must be one of {', '.join(TEMPLATES)}", param_hint="KIND")
    if out.exists() and not force:
        console.print(f"[red]{escape(str(out))} exists[/red]: pass --force to overwrite it")
        raise typer.Exit(1)
    out.write_text(small_firms_template(companies=companies, epsilon=epsilon))
    console.print(
        f"wrote {escape(str(out))}: edit the {escape('[[sites]]')} names and cost_per_person, then\n"
        f"  rehealth study plan --spec {escape(str(out))} --treated <expected treated, all firms>"
    )
