"""``rehealth node report import``: receive a signed evidence report for the HR view.

The report is verified against the issuer's public key before it is kept
(:mod:`node.report_inbox`); the HR view (``/hr/evidence``) shows the latest one's HR and ESG
summary. Reports are kept in ``reports/`` beside node.toml.
"""

from __future__ import annotations

from pathlib import Path

import typer

from node.cli._app import app
from node.cli._dataplane import errors_to_exit
from node.report_inbox import REPORTS_DIR

report_app = typer.Typer(
    help="Evidence reports received by this node (shown in the HR view).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(report_app, name="report")


def reports_folder(config: Path | None) -> Path:
    """``reports/`` beside the node config."""
    return (config or Path("node.toml")).resolve().parent / REPORTS_DIR


@report_app.command("import")
def import_cmd(
    report: Path = typer.Argument(..., help="The signed report.json."),
    key: Path = typer.Option(..., "--key", help="The issuer's Ed25519 public key (PEM or raw 32 bytes)."),
    config: Path = typer.Option(None, "--config", "-c", help="The node's node.toml."),
) -> None:
    """Verify a signed report and keep it as the latest the HR view shows (refused if it does
    not verify)."""
    from node.cli._risk import node_config
    from node.report_inbox import import_report

    with errors_to_exit():
        node_config(config)  # a node must be configured here
        stored = import_report(reports_folder(config), report, key)
    typer.echo(
        f"verified and kept {stored.path} (key id {stored.key_id[:16]}…, SHA-256 {stored.sha256}); "
        "the HR view shows it at /hr/evidence"
    )
