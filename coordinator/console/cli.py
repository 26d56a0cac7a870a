"""``rehealth coordinator console``: serve the operator console; ``… console adduser``: add an operator."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(
    help="The operator console (a web page behind login) of a provisioned federation.",
    pretty_exceptions_show_locals=False,
)

DIR_HELP = "The provisioning folder (rehealth federation provision --out): coordinator/, sites/, studies/."
DEFAULT_LISTEN = "127.0.0.1:8480"


def server(federation_dir: Path, listen: str, *, tls: bool, superlink: str | None = None):
    """The console's uvicorn server, not yet started, after checking the kit and that the
    signing key opens (the console signs studies and reports with it).

    Raises:
        ReHealthError: plain HTTP off loopback, not a coordinator kit, or the key does not open.
    """
    import logging

    import uvicorn

    from coordinator.console.app import ConsoleConfig, create_app
    from shared.errors import ReHealthError
    from shared.flower_commands import is_loopback, split_address

    log = logging.getLogger("rehealth.console")
    host, port = split_address(listen)
    if not tls and not is_loopback(host):
        raise ReHealthError(
            f"the console would send operator passwords, session cookies and API tokens in the "
            f"clear on {host}: serve it over HTTPS (--tls, or `coordinator run --console-tls`) "
            "or listen on loopback"
        )
    cfg = ConsoleConfig(Path(federation_dir), tls=tls, superlink=superlink)
    cfg.hosts = sorted(
        {host, "127.0.0.1", "localhost", f"{host}:{port}", f"127.0.0.1:{port}", f"localhost:{port}"}
    )
    app = create_app(cfg)  # opens the signing key: it signs studies, reports and API tokens
    if not cfg.users_file.exists():
        log.warning(
            "no operator yet: add one with `rehealth coordinator console adduser --federation-dir %s NAME`",
            federation_dir,
        )
    log.info("operator console on %s://%s", "https" if tls else "http", listen)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        # the coordinator's certificate, signed by the federation's CA
        ssl_certfile=str(cfg.kit.server_cert) if tls else None,
        ssl_keyfile=str(cfg.kit.server_key) if tls else None,
    )
    return uvicorn.Server(config)


def start_in_thread(federation_dir: Path, listen: str, *, tls: bool = False, timeout_s: float = 15.0):
    """Serve the console from a thread of this process (``rehealth coordinator run --console``);
    returns the server once it listens (set ``server.should_exit = True`` to stop it)."""
    import threading
    import time

    srv = server(federation_dir, listen, tls=tls)
    thread = threading.Thread(target=srv.run, name="rehealth-console", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            from shared.errors import FederationError

            raise FederationError(f"the operator console did not start on {listen}")
        time.sleep(0.05)
    srv.thread = thread
    return srv


def serve(federation_dir: Path, listen: str, *, tls: bool, superlink: str | None = None) -> int:
    """Serve the console until SIGINT/SIGTERM."""
    import logging

    from shared.errors import ReHealthError

    try:
        srv = server(federation_dir, listen, tls=tls, superlink=superlink)
    except ReHealthError as e:
        logging.getLogger("rehealth.console").error("%s", e)
        return 1
    srv.run()
    return 0


@app.callback(invoke_without_command=True)
def console(
    ctx: typer.Context,
    federation_dir: Path = typer.Option(None, "--federation-dir", file_okay=False, help=DIR_HELP),
    listen: str = typer.Option(DEFAULT_LISTEN, "--listen", help="host:port (loopback by default)."),
    tls: bool = typer.Option(False, "--tls", help="Serve HTTPS with the coordinator kit's certificate."),
    superlink: str = typer.Option(None, "--superlink", help="SuperLink address (default: the kit's)."),
) -> None:
    """Serve the operator console for the federation in --federation-dir."""
    if ctx.invoked_subcommand is not None:
        return
    if federation_dir is None:
        raise typer.BadParameter("give the provisioning folder", param_hint="--federation-dir")
    from shared.logsetup import setup_logging

    setup_logging("text", "INFO")
    raise typer.Exit(serve(federation_dir, listen, tls=tls, superlink=superlink))


@app.command("adduser")
def adduser(
    name: str = typer.Argument(..., help="The operator's user name."),
    federation_dir: Path = typer.Option(..., "--federation-dir", file_okay=False, help=DIR_HELP),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
    replace: bool = typer.Option(False, "--replace", help="Set a new password for an existing user."),
) -> None:
    """Add an operator who may sign in to the console (password hashed with scrypt)."""
    from coordinator.console.app import ConsoleConfig
    from coordinator.console.users import MIN_PASSWORD, UserStore
    from shared.errors import ReHealthError

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt(
            f"Password for {name} (at least {MIN_PASSWORD} characters)",
            hide_input=True,
            confirmation_prompt=True,
        )
    store = UserStore(ConsoleConfig(federation_dir).users_file)
    try:
        store.add(name, password, replace=replace)
    except ReHealthError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"user {name} added to {store.path}")
