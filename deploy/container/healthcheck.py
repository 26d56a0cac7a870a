"""Health check of a ReHealth Core container (the image's HEALTHCHECK; usable under systemd too).

Docker runs it inside the container every 30 s. It finds the container's long-running
``rehealth`` command by reading ``/proc`` (so it works under an init such as ``docker run
--init``) and checks what that command must keep running:

- ``rehealth node run -c node.toml``: the node's SuperNode process; and when ``node.toml`` has
  an ``[api]`` section, the scoring API answering its readiness probe (``/readyz``; a server
  without one is asked ``/v1/health``) with 200.
- ``rehealth coordinator run --kit KIT``: the SuperLink process, and its port (the kit's
  address, or ``--bind``) accepting connections.
- ``rehealth node serve``: the API as above, at its ``--host``/``--port``.

Exit 0 when healthy; 1 with one line naming what is missing (Docker shows it in ``docker
inspect``). Standard library only, so a check costs a Python start and no package import. It
prints process names, host:port and HTTP statuses, never a response body or a config value.
``--root-pid PID`` limits the search to that process and its descendants (tests; a host with
several services).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

TIMEOUT_S = 5.0
#: probed in order; a 404 moves on to the next (a scoring API older than the readiness probe)
API_PATHS = ("/readyz", "/v1/health")


class Unhealthy(Exception):
    """What is missing, in one line."""


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    argv: tuple[str, ...]


def processes(proc_root: Path = Path("/proc")) -> list[Proc]:
    out = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if not raw:
            continue  # a kernel thread or a zombie
        # stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.append(
            Proc(int(entry.name), ppid, tuple(a for a in raw.decode(errors="replace").split("\0") if a))
        )
    return out


def descendants(procs: list[Proc], root: int) -> list[Proc]:
    children: dict[int, list[Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    found = [p for p in procs if p.pid == root]
    todo = list(found)
    while todo:
        kids = children.get(todo.pop().pid, [])
        found += kids
        todo += kids
    return found


def command_of(argv: tuple[str, ...]) -> tuple[str, list[str]] | None:
    """(``"node run"`` | ``"coordinator run"`` | ``"node serve"``, its arguments) if ``argv``
    runs the ``rehealth`` CLI with one of those commands."""
    for i, arg in enumerate(argv):
        if os.path.basename(arg) != "rehealth":
            continue
        rest = list(argv[i + 1 :])
        for cmd in ("node run", "coordinator run", "node serve"):
            if rest[:2] == cmd.split():
                return cmd, rest[2:]
    return None


def option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def local_host(host: str) -> str:
    """A wildcard listen address is reached on loopback."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def require_process(procs: list[Proc], marker: str, what: str) -> None:
    if not any(os.path.basename(a) == marker for p in procs for a in p.argv[:3]):
        raise Unhealthy(f"no {what} process ({marker}) is running")


def check_tcp(host: str, port: int, what: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_S):
            return
    except OSError as e:
        raise Unhealthy(f"{what} on {host}:{port} does not accept connections ({e.strerror or e})") from None


def check_api(host: str, port: int, *, tls: bool = False) -> str:
    base = f"{'https' if tls else 'http'}://{'[' + host + ']' if ':' in host else host}:{port}"
    # over TLS the probe asks its own machine, by an address the certificate need not name:
    # it checks that the API answers, not who it is
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    for path in API_PATHS:
        try:
            with urllib.request.urlopen(base + path, timeout=TIMEOUT_S, context=context) as resp:
                return f"scoring API {path} {resp.status}"
        except urllib.error.HTTPError as e:
            if e.code == 404 and path != API_PATHS[-1]:
                continue
            raise Unhealthy(f"scoring API {host}:{port}{path} answered {e.code}") from None
        except OSError as e:
            raise Unhealthy(f"scoring API {host}:{port} unreachable ({getattr(e, 'reason', e)})") from None
    raise AssertionError("unreachable")


def resolve(path: str, pid: int, proc_root: Path) -> Path:
    p = Path(path)
    if p.is_absolute():
        return p
    return Path(os.readlink(proc_root / str(pid) / "cwd")) / p


def check_node_run(main: Proc, args: list[str], procs: list[Proc], proc_root: Path) -> str:
    config = resolve(option(args, "-c", "--config") or "node.toml", main.pid, proc_root)
    try:
        cfg = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise Unhealthy(f"cannot read the node config {config} ({type(e).__name__})") from None
    require_process(procs, "flower-supernode", "SuperNode")
    said = ["SuperNode running"]
    api = cfg.get("api")
    if isinstance(api, dict):
        host, port = local_host(str(api.get("host", "127.0.0.1"))), int(api.get("port", 8080))
        said.append(check_api(host, port, tls="tls_cert" in api))
    return ", ".join(said)


def check_coordinator_run(main: Proc, args: list[str], procs: list[Proc], proc_root: Path) -> str:
    kit = option(args, "--kit")
    if kit is None:
        raise Unhealthy("coordinator run without --kit")
    manifest = resolve(kit, main.pid, proc_root) / "federation.json"
    try:
        host, port = split_address(json.loads(manifest.read_text())["coordinator"])
    except (OSError, ValueError, KeyError) as e:
        raise Unhealthy(f"cannot read the kit's address from {manifest} ({type(e).__name__})") from None
    require_process(procs, "rehealth-superlink", "SuperLink")
    host = local_host(option(args, "--bind") or host)
    check_tcp(host, port, "the SuperLink")
    return f"SuperLink running, {host}:{port} accepts connections"


def check_node_serve(main: Proc, args: list[str], procs: list[Proc], proc_root: Path) -> str:
    host = local_host(option(args, "--host") or "127.0.0.1")
    tls = option(args, "--tls-cert") is not None
    config = option(args, "-c", "--config")
    if not tls and config is not None:  # the certificate may come from node.toml's [api]
        try:
            api = tomllib.loads(resolve(config, main.pid, proc_root).read_text()).get("api")
        except (OSError, tomllib.TOMLDecodeError):
            api = None
        tls = isinstance(api, dict) and "tls_cert" in api
    return check_api(host, int(option(args, "--port") or 8080), tls=tls)


CHECKS = {
    "node run": check_node_run,
    "coordinator run": check_coordinator_run,
    "node serve": check_node_serve,
}


def check(proc_root: Path = Path("/proc"), root_pid: int | None = None) -> str:
    """What is healthy, in one line; raises :class:`Unhealthy`."""
    procs = processes(proc_root)
    if root_pid is not None:
        procs = descendants(procs, root_pid)
    # the innermost match: an init (`docker run --init`: docker-init -- rehealth node run ...)
    # carries the same words on its command line as the service it starts
    mains = [(p, c) for p in procs if (c := command_of(p.argv)) is not None]
    parents = {p.ppid for p, _ in mains}
    inner = [(p, c) for p, c in mains if p.pid not in parents]
    if not inner:
        raise Unhealthy("no `rehealth node run`, `coordinator run` or `node serve` process is running")
    main, (cmd, args) = inner[0]
    return f"{cmd} (pid {main.pid}): " + CHECKS[cmd](main, args, procs, proc_root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root-pid", type=int, help="only this process and its descendants")
    parser.add_argument("--proc", type=Path, default=Path("/proc"), help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    try:
        print("healthy: " + check(ns.proc, ns.root_pid))
        return 0
    except Unhealthy as e:
        print(f"unhealthy: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
