"""`rehealth study run`: run a study against a federation, or on a local one (--local)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from coordinator.cli.progress import study_progress
from coordinator.cli.register import register
from coordinator.cli.study_runs import list_runs, logs, status, stop
from coordinator.cli.template import template
from coordinator.files import load_spec, write_result
from coordinator.study.requirements import requirements
from shared.errors import ReHealthError, SpecError
from shared.result import StudyResult

app = typer.Typer(help="Run federated studies.", no_args_is_help=True, pretty_exceptions_show_locals=False)
app.command("register")(register)
app.command("list")(list_runs)
app.command("status")(status)
app.command("logs")(logs)
app.command("stop")(stop)
app.command("template")(template)


@app.command("run")
def run(
    spec: Path = typer.Option(..., "--spec", exists=True, dir_okay=False, help="Study spec (TOML)."),
    local: bool = typer.Option(False, "--local", help="Start a SuperLink and one SuperNode per site."),
    superlink: str = typer.Option(None, help="SuperLink address (default: [federation] superlink)."),
    root_certificates: Path = typer.Option(None, help="CA certificate for TLS to the SuperLink."),
    out: Path = typer.Option(Path("result.json"), "--out", help="Where to write the result JSON."),
    report_key: Path = typer.Option(None, help="Sign and render the evidence report with this key."),
    registration: Path = typer.Option(
        None, "--registration", exists=True, dir_okay=False, help="The study's registration (study register)."
    ),
    key: Path = typer.Option(
        None,
        "--key",
        help="The operator's Ed25519 key that signs the study "
        "(its .pub is pinned in every node). With --local: made on first use "
        "beside the result; against a SuperLink: required.",
    ),
    timeout: float = typer.Option(900.0, "--timeout", min=1, help="Seconds the study may take once started."),
    connect_timeout: float = typer.Option(
        60.0, "--connect-timeout", min=0, help="Seconds to wait for every site's node to be online."
    ),
    fmt: str = typer.Option("text", "--format", help="text or json"),
) -> None:
    """Run the study described by SPEC, signed with the operator's key, and write its result.

    Against a SuperLink (--superlink HOST:PORT or the spec's [federation] superlink) from any
    machine that reaches it: the spec and the signed grant travel with the run, progress and
    the result come back through its Control API; nothing is read from or written to the
    SuperLink's host. The run's id is printed; `study status|logs|stop` take it."""
    from coordinator.study.runner import run_local, run_remote

    console = Console(stderr=fmt == "json")
    work = out.resolve().parent / f".{out.stem}-run"
    runs: list[int] = []
    try:
        with study_progress(console, enabled=fmt != "json") as show:

            def on_event(ev: dict) -> None:
                if ev.get("event") == "submitted":
                    runs.append(int(ev["run_id"]))
                show(ev)

            if local:
                result = run_local(spec, work, on_event=on_event, key_path=key, timeout_s=timeout)
            else:
                if key is None:
                    raise SpecError(
                        "--key: a study sent to a running federation is signed with "
                        "the operator's key, whose public half its nodes pin"
                    )
                result = run_remote(
                    spec,
                    work,
                    key_path=key,
                    superlink=superlink,
                    root_certificates=root_certificates,
                    on_event=on_event,
                    timeout_s=timeout,
                    connect_timeout_s=connect_timeout,
                )
    except ReHealthError as e:
        console.print(f"[red]study failed:[/red] {escape(str(e))}")
        raise typer.Exit(1) from None
    write_result(result, out)
    paths = {"result": str(out)}
    if report_key:
        from coordinator.report import write_signed_report

        paths.update(
            {
                k: str(v)
                for k, v in write_signed_report(
                    result, key_path=report_key, out_dir=out.resolve().parent, registration=registration
                ).items()
            }
        )
    if fmt == "json":
        typer.echo(
            json.dumps(
                {
                    "run-id": runs[-1] if runs else None,
                    "paths": paths,
                    "outcomes": [o.model_dump(mode="json") for o in result.outcomes],
                }
            )
        )
    else:
        print_estimates(console, result)
        for k, v in paths.items():
            console.print(f"{k}: {v}", markup=False)


def print_estimates(console: Console, result: StudyResult) -> None:
    """The ATT per outcome with its CI (and the simulated truth, when known)."""
    t = Table(title=f"Study {result.study}: ATT per outcome")
    for col in ("outcome", "ATT", "95% CI", "treated", "controls", "dropped"):
        t.add_column(col, justify="right" if col != "outcome" else "left")
    if result.truth:
        t.add_column("true ATT", justify="right")
        t.add_column("covered")
    for o in result.outcomes:
        row = [
            o.name,
            f"{o.att:,.4g}",
            f"[{o.ci[0]:,.4g}, {o.ci[1]:,.4g}]",
            str(o.n_treated),
            str(o.n_control),
            str(o.n_treated_dropped),
        ]
        if result.truth:
            truth = result.truth.get(o.name)
            row += [
                f"{truth:,.4g}" if truth is not None else "-",
                ("yes" if o.ci[0] <= truth <= o.ci[1] else "[red]no") if truth is not None else "-",
            ]
        t.add_row(*row)
    console.print(t)
    tm = result.timings
    console.print("timings: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in tm.items()))


@app.command("plan")
def plan(
    spec: Path = typer.Option(..., "--spec", exists=True, dir_okay=False, help="Study spec (TOML)."),
    treated: int = typer.Option(..., "--treated", min=1, help="Expected treated people, all nodes."),
    controls: int = typer.Option(
        None, "--controls", min=0, help="Expected controls, all nodes (default: 4 × treated)."
    ),
    nodes: int = typer.Option(None, "--nodes", min=1, help="Nodes taking part (default: the spec's sites)."),
    fmt: str = typer.Option("text", "--format", help="text or json"),
) -> None:
    """Preview a DP study before it spends any budget: every release's noise, and whether the
    propensity fit would resolve the confounding at these counts (the stop rule fixed in
    advance, shared.dp.stoprule: else the study stops after describe, by default) or what ε it
    would need."""
    from shared.dp.workflow import after_describe
    from shared.driver import noise_plan

    console = Console()
    try:
        study = load_spec(spec)
        if not study.privacy.enabled:
            raise ReHealthError(
                "the spec's study is exact ([privacy] enabled = false): it "
                "releases no noisy statistics and spends no privacy budget"
            )
        k = nodes or len(study.sites)
        if k < 1:
            raise ReHealthError("the spec names no sites: give --nodes")
        before = noise_plan(study)
        gate = after_describe(
            counts=(float(4 * treated if controls is None else controls), float(treated)),
            n_covariates=len(study.design_covariates),
            plan=before,
            split=study.privacy.split,
            n_nodes=k,
            secure_aggregation=study.privacy.secure_aggregation,
        )
    except ReHealthError as e:
        console.print(f"[red]cannot plan:[/red] {escape(str(e))}")
        raise typer.Exit(1) from None
    stops = not gate.decisive.passed and study.privacy.unresolved_fit == "stop"
    # a pooled study (SecAgg+ or no per-site figures): what the pool needs, told in advance
    pooled = study.privacy.secure_aggregation or not study.report.per_site
    n_controls = 4 * treated if controls is None else controls
    needs = requirements(study, treated=treated, controls=n_controls, nodes=k) if pooled else None
    if fmt == "json":
        typer.echo(
            json.dumps(
                {
                    "study": study.study.name,
                    "treated": treated,
                    "nodes": k,
                    "plan": before.to_dict(),
                    "fit_noise_share": gate.check.value,
                    "fit_resolves": gate.check.passed,
                    "message": gate.check.message,
                    "strata": None if gate.strata is None else gate.strata.value,
                    "strata_resolve": gate.strata is None or gate.strata.passed,
                    "strata_message": None if gate.strata is None else gate.strata.message,
                    "stops_after_describe": stops,
                    **({} if needs is None else {"pooled": asdict(needs)}),
                }
            )
        )
        return
    _print_plan(console, study, gate, before, treated, k, stops)
    if needs is not None:
        _print_pooled(console, study, needs, treated, n_controls, k)


def _print_pooled(console: Console, study, needs, treated: int, controls: int, k: int) -> None:
    """What the firms of a pooled study need, before any of them joins."""
    from shared import thresholds as th

    eps = study.privacy.epsilon
    console.print(
        f"\n[bold]Pooled study over {k} companies[/bold] (size gates apply to the pool, not to each company):"
    )
    console.print(
        f"  size gates: ≥ {th.MIN_TREATED} treated and ≥ {th.MIN_CONTROL_RATIO:g} × as many controls in the "
        f"pool; {treated:,} treated and {controls:,} controls "
        + ("pass." if needs.size_gates_pass else "[red]do not pass[/red].")
    )
    console.print(
        "  at these counts the study needs ε ≥ "
        + (f"{needs.min_epsilon:.2g}" if needs.min_epsilon is not None else "more than any ε up to 50 gives")
        + f" (planned ε = {eps:g})."
    )
    if needs.min_treated is None:
        console.print(f"  at ε = {eps:g} no pool of up to a million treated resolves the study: raise ε.")
    else:
        console.print(
            f"  at ε = {eps:g} the pool needs ≥ {needs.min_treated:,} treated and ≥ {needs.min_controls:,} "
            f"controls, about {needs.treated_per_firm:,} treated per company over {k} companies "
            "(an average: a company may bring fewer if others bring more)."
        )


def _print_plan(console: Console, study, gate, before, treated: int, k: int, stops: bool) -> None:
    from shared.secure_sum import secured

    p = study.privacy
    console.print(
        f"DP study {escape(study.study.name)}: ε = {p.epsilon:g}, δ = {p.delta:g} per "
        f"node ({p.accountant.upper()} accountant), {k} nodes, {treated:,} treated"
    )
    t = Table(
        title="Noise per release (the noise each node adds, and what the summed release "
        "carries)" + (": SecAgg+ after describe" if p.secure_aggregation else "")
    )
    for col in ("release", "rounds", "Δ₂", "σ per node", "σ of the sum"):
        t.add_column(col, justify="left" if col == "release" else "right")
    for q in dict.fromkeys(r.query for r in gate.plan.releases):
        r = gate.plan.release(q)
        n = sum(1 for x in gate.plan.releases if x.query == q)
        secure = p.secure_aggregation and secured(q)
        node = r.sigma / math.sqrt(k) if secure else r.sigma
        total = r.total_sigma(k, secure_aggregation=secure)
        if q == "psm_wsum":  # Δ₂ follows the largest weight the study asks for (shared/dp/wsum.py)
            unit = "×Δ₂"
            sens = f"≤ {math.sqrt(len(study.analysed_outcomes)) / 2:.3g}·v_max"
        else:
            unit, sens = "", f"{r.sensitivity:.3g}"
        t.add_row(q, str(n), sens, f"{node:.3g}{unit}", f"{total:.3g}{unit}")
    console.print(t)
    verdict = (
        '[red]the study would stop after describe[/red] (unresolved_fit = "stop")'
        if stops
        else "the study would run"
        + ("" if gate.decisive.passed else ' and flag its estimate (unresolved_fit = "warn")')
    )
    console.print(f"propensity fit: {escape(gate.check.message)}")
    if gate.strata is not None:
        console.print(f"strata: {escape(gate.strata.message)}")
    console.print(verdict)


@app.command("train-risk")
def train_risk(
    spec: Path = typer.Option(
        ...,
        "--spec",
        exists=True,
        dir_okay=False,
        help="Study spec whose sites train (their data carry cv_event).",
    ),
    epsilon: float = typer.Option(8.0, help="Each node's total ε for the whole training."),
    eval_epsilon: float = typer.Option(
        0.2, "--eval-epsilon", help="Each node's ε for the one DP evaluation release."
    ),
    delta: float = typer.Option(1e-5, help="δ of the DP-SGD guarantee."),
    rounds: int = typer.Option(8, help="FedAvg rounds."),
    kind: str = typer.Option("logistic", help="logistic or mlp"),
    out: Path = typer.Option(Path("risk-model"), "--out", help="Folder for the model and metrics."),
    fmt: str = typer.Option("text", "--format", help="text or json"),
) -> None:
    """Train the cardiovascular risk model by FedAvg over local DP-SGD on a local federation."""
    import hashlib
    import time as _time

    from coordinator.study.runner import train_risk_local
    from shared.protocol import RiskJob

    console = Console(stderr=fmt == "json")
    job_id = "risk-" + hashlib.sha256(f"{spec}{_time.time_ns()}".encode()).hexdigest()[:16]
    try:
        sites = tuple(s.name for s in load_spec(spec).sites)
    except ReHealthError as e:
        console.print(f"[red]cannot read the spec:[/red] {escape(str(e))}")
        raise typer.Exit(1) from None
    job = RiskJob(
        job_id=job_id,
        kind=kind,
        rounds=rounds,
        target_epsilon=epsilon,
        delta=delta,
        sites=sites,
        eval_epsilon=eval_epsilon,
    )
    try:
        with study_progress(console, enabled=fmt != "json") as on_event:
            summary = train_risk_local(spec, out, job, on_event=on_event)
    except ReHealthError as e:
        console.print(f"[red]training failed:[/red] {escape(str(e))}")
        raise typer.Exit(1) from None
    ev = summary["evaluation"]
    if fmt == "json":
        typer.echo(json.dumps(summary))
    else:
        pv = summary.get("evaluation_privacy", {})
        console.print(
            f"risk model after {rounds} rounds at ε={epsilon:g}: AUC {ev['auc']:.3f}, "
            f"Brier {ev['brier']:.4f} over ≈{ev['n']:,.0f} people (DP evaluation at "
            f"ε={pv.get('epsilon', eval_epsilon):g} per node, σ={pv.get('sigma_per_node', 0):.1f} "
            "per entry; sent models are candidates until each node's operator approves "
            "them: rehealth node model approve)"
        )
        console.print(f"model: {out / 'risk_model.npz'}  metrics: {out / 'risk_result.json'}", markup=False)
