"""The packaging in deploy/, checked with its tools' own checks, and the commands the docs show.

- systemd units: ``systemd-analyze verify`` (with ExecStart pointed at the installed
  ``rehealth``, which must exist for verify to pass) and ``systemd-analyze security --offline``
  (exposure at most 2.0 of 10); a misspelt directive is reported, so the check can fail.
- compose: ``docker compose config`` (or ``docker-compose config``) validates the file; each
  container mounts only its own kit, no node publishes a port, the coordinator's port is bound
  to 127.0.0.1, every container is read-only, non-root, without capabilities.
- Dockerfile: ``hadolint`` (the test extras install it), and its invariants: non-root USER in
  the final stage, a HEALTHCHECK, torch==2.13.0 installed before the package, nothing that
  looks like a key copied in, a .dockerignore that admits only the sources.
- The container health check (deploy/container/healthcheck.py) against real processes, a real
  HTTP server and a real TCP port: healthy while they are up, unhealthy naming what went.
- Every ``rehealth …`` command line in README.md, docs/ and deploy/ (and in the units and the
  compose file) names commands and options that exist (``--help`` of each runs).

deploy/packaging-tools.sh installs systemd-analyze and docker-compose from Debian's packages
(CI runs it before the tests).
"""

from __future__ import annotations

import configparser
import http.server
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import click
import pytest
import typer
import yaml
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNITS = {
    "rehealth-node.service": ["node", "run", "-c"],
    "rehealth-coordinator.service": ["coordinator", "run", "--kit"],
}
HEALTHCHECK = DEPLOY / "container" / "healthcheck.py"


def _rehealth_bin() -> Path:
    """The installed ``rehealth`` script (next to this interpreter: .venv/bin)."""
    path = Path(sys.executable).with_name("rehealth")
    assert path.is_file(), f"{path}: install the package (bash deploy/dev.sh)"
    return path


# ---------------------------------------------------------------------------------------------
# the CLI tree, for checking command lines


def _cli() -> click.Group:
    from coordinator.cli.root import _mount_groups, app

    _mount_groups(None)
    cmd = typer.main.get_command(app)
    assert isinstance(cmd, click.Group)
    return cmd


PLACEHOLDER = re.compile(r"^(…|\.\.\.|\S*…)$")


def check_command_line(cli: click.Group, args: list[str]) -> str:
    """Walk ``args`` (after ``rehealth``) down the command tree; every option must exist on the
    command reached. Returns the command path; raises AssertionError naming what is unknown."""
    cmd: click.Command = cli
    path: list[str] = []
    rest = list(args)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        word = rest.pop(0)
        if PLACEHOLDER.match(word):
            return " ".join(path)
        if "|" in word:  # `rehealth report render|verify`: each must exist
            for alt in word.split("|"):
                assert alt in cmd.commands, f"`rehealth {' '.join(path)} {alt}`: no such command"
            return " ".join(path)
        sub = cmd.commands.get(word)
        assert sub is not None, f"`rehealth {' '.join([*path, word])}`: no such command"
        cmd, path = sub, [*path, word]
    known = {"--help"} | {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    for tok in rest:
        tok = tok.strip("[]")
        if re.match(r"^--?[A-Za-z]", tok):
            name = tok.split("=", 1)[0]
            assert name in known, f"`rehealth {' '.join(path)}` has no option {name}"
    return " ".join(path)


def _help(cli: click.Group, path: str) -> None:
    from coordinator.cli.root import app

    result = CliRunner().invoke(app, [*path.split(), "--help"])
    assert result.exit_code == 0, (path, result.output)


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote in prose
        return line.split()


def rehealth_invocations(text: str) -> list[list[str]]:
    """The argument lists after each ``rehealth`` in code blocks and inline code of markdown."""
    chunks: list[str] = []
    in_block = False
    block: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if in_block:
                # join continuation lines
                chunks += " \n".join(block).replace("\\ \n", " ").split("\n")
                block = []
            in_block = not in_block
            continue
        if in_block:
            block.append(line)
        else:
            chunks += re.findall(r"`([^`]*\brehealth\b[^`]*)`", line)
    out = []
    for chunk in chunks:
        for part in re.split(r"&&|\|\||;|\s\|\s", chunk):
            toks = _split(part)
            for i, tok in enumerate(toks):
                # `sudo -u rehealth /opt/rehealth/bin/rehealth node …`: the last of a run of matches
                nxt = toks[i + 1] if i + 1 < len(toks) else ""
                # `install -o rehealth -g rehealth`: the account, not the command
                account = tok == "rehealth" and nxt.startswith("-") and nxt not in ("--help", "--version")
                if _is_cli(tok) and not _is_cli(nxt) and not account:
                    out.append(toks[i + 1 :])
                    break
    return out


def _is_cli(tok: str) -> bool:
    """``rehealth``, a path to the installed script, or the image (its entry point is rehealth)."""
    return (
        tok == "rehealth"
        or tok.endswith("/bin/rehealth")
        or re.match(r"^rehealth/core(:\S+)?$", tok) is not None
    )


def _doc_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted(DEPLOY.rglob("*.md"))]
    return [f for f in files if "wheelhouse" not in f.parts]


def test_every_rehealth_command_the_docs_show_exists():
    cli = _cli()
    seen: dict[str, str] = {}
    problems = []
    for doc in _doc_files():
        for args in rehealth_invocations(doc.read_text()):
            if not args:
                continue
            try:
                path = check_command_line(cli, args)
            except AssertionError as e:
                problems.append(f"{doc.relative_to(ROOT)}: {e}")
                continue
            seen.setdefault(path, str(doc.relative_to(ROOT)))
    assert not problems, "\n".join(problems)
    # the persona pages and the provisioning walk-through are covered, not just the README
    for must in ("federation provision", "coordinator run", "node run", "node ingest", "study run"):
        assert must in seen, sorted(seen)
    for path in seen:
        if path:
            _help(cli, path)


def test_the_command_check_catches_a_wrong_command_or_option():
    cli = _cli()
    assert check_command_line(cli, ["node", "run", "-c", "node.toml"]) == "node run"
    with pytest.raises(AssertionError, match="no such command"):
        check_command_line(cli, ["node", "start", "-c", "node.toml"])
    with pytest.raises(AssertionError, match="no option --config-file"):
        check_command_line(cli, ["node", "run", "--config-file", "node.toml"])
    found = rehealth_invocations("x\n```bash\nFOO=1 rehealth study run --spec s.toml \\\n   --key k\n```\n")
    assert found == [["study", "run", "--spec", "s.toml", "--key", "k"]]
    found = rehealth_invocations(
        "```\nsudo -u rehealth /opt/rehealth/bin/rehealth node budget -c /var/lib/rehealth/node.toml\n"
        "docker run --rm -v /srv/rehealth:/var/lib/rehealth rehealth/core:0.1.0 node run -c node.toml\n```\n"
        "and `rehealth node init --dir /srv/rehealth` after `install -o rehealth -g rehealth -d /x`"
    )
    assert found == [
        ["node", "budget", "-c", "/var/lib/rehealth/node.toml"],
        ["node", "run", "-c", "node.toml"],
        ["node", "init", "--dir", "/srv/rehealth"],
    ]


# ---------------------------------------------------------------------------------------------
# systemd


def _unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string((DEPLOY / "systemd" / name).read_text())
    return cp


def _installed_copy(name: str, tmp_path: Path, edit=lambda s: s) -> Path:
    text = (DEPLOY / "systemd" / name).read_text().replace("/opt/rehealth/bin/rehealth", str(_rehealth_bin()))
    out = tmp_path / name
    out.write_text(edit(text))
    return out


def _verify(unit: Path) -> tuple[int, str]:
    cp = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify may also talk about the host's own units; only lines about ours count
    ours = [ln for ln in (cp.stdout + cp.stderr).splitlines() if unit.name in ln or str(unit) in ln]
    return cp.returncode, "\n".join(ours)


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_unit_verifies_and_is_hardened(name, tmp_path):
    code, findings = _verify(_installed_copy(name, tmp_path))
    assert code == 0 and not findings, findings
    # the check bites: a misspelt directive and a missing binary are both reported
    _code, findings = _verify(
        _installed_copy(name, tmp_path, lambda s: s.replace("NoNewPrivileges=", "NoNewPrivilege="))
    )
    assert "Unknown key 'NoNewPrivilege'" in findings
    code, _ = _verify(
        _installed_copy(name, tmp_path, lambda s: s.replace(str(_rehealth_bin()), "/nonexistent"))
    )
    assert code != 0

    sec = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sec.returncode == 0, sec.stdout[-2000:]

    svc = _unit(name)["Service"]
    assert svc["User"] not in ("", "root", "0") and svc["Group"] not in ("", "root", "0")
    for key, want in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
        ("KillSignal", "SIGTERM"),
    ]:
        assert svc.get(key) == want, (key, svc.get(key))
    # the only writable place is the service's state folder, and it is the kit's folder
    state = "/var/lib/" + svc["StateDirectory"]
    assert svc["ReadWritePaths"] == state == svc["WorkingDirectory"]
    # the passphrase file is optional (leading -) and lives outside the unit
    assert svc["EnvironmentFile"].startswith("-/etc/rehealth/")
    assert "PASSPHRASE=" not in (DEPLOY / "systemd" / name).read_text()
    argv = shlex.split(svc["ExecStart"])
    assert argv[0] == "/opt/rehealth/bin/rehealth" and argv[1:4] == UNITS[name]
    assert argv[4].startswith(state)
    check_command_line(_cli(), argv[1:])


# ---------------------------------------------------------------------------------------------
# compose


def _compose_cmd() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    raise AssertionError("neither docker-compose nor docker compose: run bash deploy/packaging-tools.sh")


def _compose_config(path: Path, kits: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "KITS": str(kits), "HOME": str(kits)}
    return subprocess.run(
        [*_compose_cmd(), "-f", str(path), "config"], capture_output=True, text=True, env=env, timeout=120
    )


def test_compose_file_is_valid_and_each_container_sees_only_its_kit(tmp_path):
    kits = tmp_path / "kits"
    cp = _compose_config(DEPLOY / "compose" / "compose.yaml", kits)
    assert cp.returncode == 0, cp.stderr
    services = yaml.safe_load(cp.stdout)["services"]
    assert "coordinator" in services
    nodes = {n: s for n, s in services.items() if n != "coordinator"}
    assert len(nodes) >= 3
    cli = _cli()
    for name, svc in services.items():
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        assert not str(svc["user"]).startswith(("0:", "root")), name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert svc.get("init") is True, name
        mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in svc["volumes"]]
        kit = kits / "coordinator" if name == "coordinator" else kits / "sites" / name
        assert [m.rsplit(":rw", 1)[0] for m in mounts] == [f"{kit}:/var/lib/rehealth"], (name, mounts)
        check_command_line(cli, svc["command"])
    for name, svc in nodes.items():
        assert "ports" not in svc, name  # nodes accept no connection
        assert svc["command"][:2] == ["node", "run"]
    ports = services["coordinator"]["ports"]
    published = [
        p if isinstance(p, str) else f"{p.get('host_ip')}:{p['published']}:{p['target']}" for p in ports
    ]
    assert all(p.startswith("127.0.0.1:") for p in published), published

    # the validation bites: a misspelt key is refused
    bad = tmp_path / "compose.yaml"
    bad.write_text((DEPLOY / "compose" / "compose.yaml").read_text().replace("read_only:", "read_onyl:"))
    assert _compose_config(bad, kits).returncode != 0


# ---------------------------------------------------------------------------------------------
# Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuations joined and comments dropped."""
    text = (DEPLOY / "container" / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in joined.splitlines() if ln.strip()]


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    cp = subprocess.run([hadolint, str(DEPLOY / "container" / "Dockerfile")], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stdout + cp.stderr


def test_dockerfile_invariants():
    ins = _dockerfile()
    froms = [i for i, (op, _) in enumerate(ins) if op == "FROM"]
    assert len(froms) == 2, "a build stage and a runtime stage"
    build, final = ins[froms[0] : froms[1]], ins[froms[1] :]
    # torch pinned and installed before the package (an unpinned torch pulls a CUDA build)
    runs = [args for op, args in build if op == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if '"torch==2.13.0"' in r)
    pkg_at = next(i for i, r in enumerate(runs) if '"/src[postgres]"' in r)
    assert torch_at < pkg_at
    assert "download.pytorch.org/whl/cpu" in " ".join(a for op, a in build if op == "ARG")
    # the runtime stage: non-root user, health check, the venv only from the build stage
    users = [a for op, a in final if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = [a for op, a in final if op == "HEALTHCHECK"]
    assert len(health) == 1 and "healthcheck.py" in health[0] and "--interval" in health[0]
    copies = [a for op, a in ins if op in ("COPY", "ADD")]
    assert not [a for op, a in ins if op == "ADD"], "COPY only"
    for args in copies:
        assert not re.search(r"\.(key|pem|crt|pub|secret|db)\b|kits?\b|keys\b|signing", args), args
    assert not [a for op, a in ins if op in ("ENV", "ARG") and re.search(r"PASSPHRASE|SECRET|TOKEN", a)]
    assert ("ENTRYPOINT", '["rehealth"]') in final
    # the build context is an allow-list: everything excluded first, then the sources admitted
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    ignore = [ln for ln in ignore if ln and not ln.startswith("#")]
    assert ignore[0] == "*"
    admitted = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    assert admitted <= {
        "pyproject.toml",
        "README.md",
        "shared",
        "node",
        "coordinator",
        "protos",
        "deploy/container/healthcheck.py",
        "deploy/container/wheelhouse",
    }
    assert {"**/*.key", "**/*.pem", "**/*.db"} <= set(ignore)


# ---------------------------------------------------------------------------------------------
# the container health check, against real processes


SLEEPER = "import sys, time; time.sleep(float(sys.argv[1]))"
INIT = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[2:]))"
PARENT = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, sys.argv[1], '60'])\n"
    "time.sleep(60)\n"
)


def _script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(body)
    return path


def _fake_service(tmp_path: Path, child_name: str, *cmd: str, child_body: str = SLEEPER) -> subprocess.Popen:
    """A process whose command line is ``… rehealth CMD…`` and which has a child whose command
    line is ``python …/CHILD_NAME`` (as the real SuperNode and SuperLink have)."""
    child = _script(tmp_path, child_name, child_body)
    return subprocess.Popen([sys.executable, "-c", PARENT, str(child), "rehealth", *cmd], cwd=tmp_path)


def _health(root_pid: int) -> tuple[int, str]:
    cp = subprocess.run(
        [sys.executable, str(HEALTHCHECK), "--root-pid", str(root_pid)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return cp.returncode, cp.stdout.strip()


def _wait(pid: int, want: int, timeout_s: float = 10.0) -> tuple[int, str]:
    """The health check's answer once it is ``want`` (processes take a moment to start or go)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        got = _health(pid)
        if got[0] == want or time.monotonic() >= deadline:
            return got
        time.sleep(0.1)


class _Api(http.server.BaseHTTPRequestHandler):
    status = {"/readyz": 404, "/v1/health": 200}

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        self.send_response(self.status.get(self.path, 404))
        self.end_headers()

    def log_message(self, *args):
        pass


def _children(pid: int, recursive: bool = True) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children(recursive=recursive)]


def test_healthcheck_node_run_follows_its_supernode_and_api(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    (tmp_path / "node.toml").write_text(f'site_id = "a"\n[api]\nhost = "0.0.0.0"\nport = {port}\n')
    # under an init, as `docker run --init` starts it: docker-init -- rehealth node run ...
    child = _script(tmp_path, "flower-supernode", SLEEPER)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            INIT,
            "--",
            sys.executable,
            "-c",
            PARENT,
            str(child),
            "rehealth",
            "node",
            "run",
        ]
        + ["-c", "node.toml"],
        cwd=tmp_path,
    )
    try:
        code, said = _wait(proc.pid, 0)
        assert code == 0, said
        assert "SuperNode running" in said and "/v1/health 200" in said  # no /readyz: falls back
        assert f"(pid {proc.pid})" not in said  # the service, not the init that carries its words
        _Api.status = {"/readyz": 200}
        code, said = _health(proc.pid)
        assert code == 0 and "/readyz 200" in said, said
        _Api.status = {"/readyz": 503}  # not ready (budget or model unusable)
        code, said = _health(proc.pid)
        assert code == 1 and "answered 503" in said, said
        _Api.status = {"/readyz": 200}
        supernode = [p for p in _children(proc.pid) if p not in _children(proc.pid, recursive=False)]
        subprocess.run(["kill", "-9", *map(str, supernode)], check=True)
        code, said = _wait(proc.pid, 1)
        assert code == 1 and "no SuperNode process" in said, said
    finally:
        for pid in _children(proc.pid):
            subprocess.run(["kill", "-9", str(pid)], capture_output=True)
        proc.kill()
        proc.wait()
        server.shutdown()
    code, said = _health(proc.pid)
    assert code == 1 and "no `rehealth node run`" in said, said


LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[2]))); s.listen()\n"
    "time.sleep(60)\n"
)


def test_healthcheck_coordinator_run_follows_its_superlink_port(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "federation.json").write_text(json.dumps({"coordinator": f"127.0.0.1:{port}"}))
    child = _script(tmp_path, "rehealth-superlink", LISTENER)
    parent = PARENT.replace("'60'])", f"'60', '{port}'])")
    proc = subprocess.Popen(
        [sys.executable, "-c", parent, str(child), "rehealth", "coordinator", "run", "--kit", "kit"],
        cwd=tmp_path,
    )
    try:
        code, said = _wait(proc.pid, 0)
        assert code == 0 and f"127.0.0.1:{port} accepts connections" in said, said
        for pid in _children(proc.pid):
            subprocess.run(["kill", "-9", str(pid)], check=True)
        code, said = _wait(proc.pid, 1)
        assert code == 1 and "no SuperLink process" in said, said
    finally:
        proc.kill()
        proc.wait()
