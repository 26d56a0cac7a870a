"""`rehealth coordinator run`: the SuperLink from a provisioned coordinator kit."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Run the coordinator's SuperLink from its kit.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _group() -> None:
    """Coordinator services."""


def _mount_console() -> None:
    from coordinator.console.cli import app as console_app

    app.add_typer(console_app, name="console")


_mount_console()


@app.command("run")
def run(
    kit: Path = typer.Option(..., "--kit", exists=True, file_okay=False, help="The coordinator kit."),
    bind: str = typer.Option(None, "--bind", help="Listen host (default: the kit address's host)."),
    log_format: str = typer.Option(
        "text", "--log-format", envvar="REHEALTH_LOG_FORMAT", help="text or json."
    ),
    log_level: str = typer.Option("INFO", "--log-level", envvar="REHEALTH_LOG_LEVEL", help="DEBUG … ERROR."),
    console: str = typer.Option(
        None,
        "--console",
        help="Also serve the operator console on host:port (e.g. 127.0.0.1:8480) over the kit's "
        "provisioning folder; needs the signing key's passphrase (REHEALTH_KEY_PASSPHRASE).",
    ),
    console_tls: bool = typer.Option(
        False, "--console-tls", help="Serve the console over HTTPS with the kit's certificate."
    ),
) -> None:
    """Start the SuperLink (TLS, SuperNode authentication, the kit's registered node keys) and
    its SuperExec; stop both on SIGTERM or Ctrl-C."""
    from coordinator.federation import serve
    from shared.logsetup import setup_logging

    try:
        setup_logging(log_format, log_level)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--log-format/--log-level") from None
    raise typer.Exit(serve.run(kit, bind=bind, console=console, console_tls=console_tls))
