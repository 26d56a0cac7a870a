"""`rehealth demo`: the whole product on loopback with synthetic sites.

Generates a synthetic federation with known ground truth, starts a SuperLink and one SuperNode
per site on 127.0.0.1 in the secure configuration (TLS, registered node keys, Flower's auth
secret; every node pinning the operator's key), runs the operator-signed DP study over Flower,
prints the ATT per outcome next to the true ATT, and writes the result and the signed evidence
report.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from coordinator.cli.progress import study_progress
from coordinator.cli.study import print_estimates
from shared.errors import ReHealthError


def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for the data, result and report."),
    seed: int = typer.Option(7, help="Seed of the synthetic federation."),
    sites: int = typer.Option(None, help="Number of synthetic sites (default: all profiles)."),
    scale: float = typer.Option(1.0, help="Scale the synthetic site sizes."),
    epsilon: float = typer.Option(
        1.0, min=0.01, help="The study's ε (δ = 1e-6), charged to every node's ledger."
    ),
    exact: bool = typer.Option(
        False,
        "--exact",
        help="An exact (non-DP) study instead, its nodes "
        "opted into exact answers as one data owner's federation.",
    ),
    secure_aggregation: bool = typer.Option(
        False, "--secure-aggregation", help="With --epsilon: every release after describe as a SecAgg+ sum."
    ),
) -> None:
    """Run a complete federated study on loopback with synthetic sites, ending in a signed report."""
    from coordinator.study.runner import FolderBusy, exclusive_folder

    console = Console()
    if secure_aggregation and exact:
        console.print("[red]--secure-aggregation splits the DP noise: not with --exact[/red]")
        raise typer.Exit(2)
    try:
        # the whole demo (data, study, report) is one run of this folder: a second demo into it
        # would regenerate the data under the first one's nodes
        with exclusive_folder(out.resolve()) as folder:
            _demo(console, folder, seed, sites, scale, epsilon, exact, secure_aggregation)
    except FolderBusy as e:
        console.print(f"[red]demo refused:[/red] {escape(str(e))}")
        raise typer.Exit(1) from None


def _demo(
    console: Console,
    out: Path,
    seed: int,
    sites: int | None,
    scale: float,
    epsilon: float,
    exact: bool,
    secure_aggregation: bool,
) -> None:
    from coordinator.files import write_result
    from coordinator.report import ensure_keypair
    from coordinator.study.runner import run_local
    from coordinator.synth.cli import generate_and_summarise

    started = time.perf_counter()
    console.rule("1. Synthetic federation")
    spec_path = generate_and_summarise(
        out=out / "data",
        seed=seed,
        sites=sites,
        scale=scale,
        epsilon=None if exact else epsilon,
        secure_aggregation=secure_aggregation,
    )
    synth_s = time.perf_counter() - started
    registration = _register(spec_path, out)
    console.print(f"registered the spec before any outcome is read: {registration}", markup=False)
    console.rule("2. Federated study over Flower (SuperLink + SuperNodes on 127.0.0.1)")
    try:
        with study_progress(console) as on_event:
            result = run_local(
                spec_path, out / "study", on_event=on_event, key_path=ensure_keypair(out / "keys")[0]
            )
    except ReHealthError as e:
        console.print(f"[red]study failed:[/red] {escape(str(e))}")
        raise typer.Exit(1) from None
    result_path = out / "result.json"
    write_result(result, result_path)
    print_estimates(console, result)
    console.rule("3. Evidence report")
    paths = _report(result, out, registration)
    console.print(f"result: {result_path}", markup=False)
    for k, v in paths.items():
        console.print(f"{k}: {v}", markup=False)
    console.print(f"demo finished in {time.perf_counter() - started:.1f} s (synthetic data {synth_s:.1f} s)")


def _register(spec_path: Path, out: Path) -> Path:
    """Pre-register the spec with the demo's coordinator key, as an operator would before a
    billable study (``rehealth study register``); the report then states that it came first."""
    from coordinator.files import load_spec
    from coordinator.report import ensure_keypair, load_private_key
    from coordinator.report.registration import dump, register

    spec = load_spec(spec_path)
    record = register(
        study=spec.study.name,
        spec_hash=spec.spec_hash(),
        key=load_private_key(ensure_keypair(out / "keys")[0]),
    )
    path = out / "registration.json"
    path.write_bytes(dump(record))
    return path


def _report(result, out: Path, registration: Path) -> dict[str, Path]:
    """Sign and render the evidence report with a coordinator key made for this demo."""
    from coordinator.report import ensure_keypair, write_signed_report

    key_path, pub_path = ensure_keypair(out / "keys")
    paths = write_signed_report(result, key_path=key_path, out_dir=out / "report", registration=registration)
    phrase = key_path.with_name("passphrase")  # the throw-away key's, unless REHEALTH_KEY_PASSPHRASE is set
    extra = {"key passphrase": phrase} if phrase.exists() else {}
    return {**paths, "public key": pub_path, "registration": registration, **extra}
