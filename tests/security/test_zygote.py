"""The node's ClientApp zygote (node/flower/zygote.py), attacked by hostile local processes.

The zygote forks a ClientApp for whoever it believes is its SuperExec, so the attacks try to
make it fork for someone else: another user holding a (leaked) descriptor of its socket, a
process of the node's own user that is not the SuperExec, a request that is not the
``flwr-clientapp`` grammar, and a look for an address to connect to. Then what a forked child
keeps (no way back to the zygote, the node's umask, death with the zygote, fresh random state),
and the fallback to a cold start. One real zygote (real imports, real forks) serves the module.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time

import numpy as np
import psutil
import pytest

from coordinator.federation import superexec
from coordinator.federation.superexec import TOKEN_PLACEHOLDER, Zygote, ZygoteUnavailable, token_fd
from node.flower import zygote as zmod
from node.flower.zygote import BadRequest, parse_request

NOBODY = 65534


@pytest.fixture(scope="module")
def listener():
    """A loopback port that accepts and never answers: a ClientApp pointed at it stays alive
    (retrying its first call), long enough to be inspected."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A real CA certificate (the ClientApp reads it, then waits on the silent listener)."""
    import datetime as dt

    from shared.tls import new_ca, pem_cert

    path = tmp_path_factory.mktemp("zygote") / "ca.crt"
    _key, ca = new_ca("zygote test CA", dt.timedelta(days=1))
    path.write_bytes(pem_cert(ca))
    return str(path)


@pytest.fixture(scope="module")
def zyg():
    old = os.umask(0o077)  # what the node's supervisor gives its SuperExec
    try:
        z = Zygote.start()
    finally:
        os.umask(old)
    yield z
    z.stop()


def _argv(listener: str, cert: str) -> list[str]:
    return ["--runtime-api-address", listener, "--token-file", TOKEN_PLACEHOLDER, "--root-certificates", cert]


def _request(argv: list[str]) -> bytes:
    return json.dumps({"argv": argv, "suppress_output": True}).encode()


def _children(z: Zygote) -> set[int]:
    return {p.pid for p in psutil.Process(z.proc.pid).children()}


def _attack_from_fork(z: Zygote, request: bytes, *, uid: int | None) -> dict:
    """A process that is not the SuperExec, holding a copy of its end of the socket (as if it
    leaked), sends ``request`` with a token descriptor; what the zygote answered it."""
    fd = token_fd("stolen-token")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the attacker
        try:
            os.close(r)
            if uid is not None:
                os.setgid(uid)
                os.setuid(uid)
            z.sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, np.array([fd], "i").tobytes())])
            z.sock.settimeout(10)
            os.write(w, z.sock.recv(4096))
        finally:
            os._exit(0)
    os.close(w)
    os.close(fd)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        return json.loads(f.read() or b"{}")


def test_the_superexec_itself_gets_a_clientapp_forked(zyg, listener, cert):
    fd = token_fd("real-token")
    try:
        pid = zyg.launch(_argv(listener, cert), fd, True)
    finally:
        os.close(fd)
    assert pid in _children(zyg)
    # the child names itself (prctl PR_SET_NAME) right after the fork: on a loaded machine the
    # zygote's answer can arrive first, so wait for the name (not a timing bound: 10 s)
    deadline = time.monotonic() + 10
    while psutil.Process(pid).name() != "flwr-clientapp" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert psutil.Process(pid).name() == "flwr-clientapp"


def test_a_another_user_holding_the_socket_cannot_make_it_fork(zyg, listener, cert):
    zyg.launch(_argv(listener, cert), token_fd("warm-up"), True)  # ready; fd leak irrelevant here
    before = _children(zyg)
    answer = _attack_from_fork(zyg, _request(_argv(listener, cert)), uid=NOBODY)
    assert answer == {"error": f"refused a request from uid {NOBODY}"}
    time.sleep(0.5)
    assert _children(zyg) <= before


def test_b_a_process_of_the_nodes_own_user_that_is_not_the_superexec_cannot_either(zyg, listener, cert):
    zyg.launch(_argv(listener, cert), token_fd("warm-up"), True)
    before = _children(zyg)
    answer = _attack_from_fork(zyg, _request(_argv(listener, cert)), uid=None)
    assert "error" in answer and "not the SuperExec" in answer["error"], answer
    time.sleep(0.5)
    assert _children(zyg) <= before


def test_c_the_zygote_has_no_address_to_connect_to(zyg):
    inodes = set()
    for fd in os.listdir(f"/proc/{zyg.proc.pid}/fd"):
        target = os.readlink(f"/proc/{zyg.proc.pid}/fd/{fd}")
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    assert inodes, "the zygote holds no socket"
    with open("/proc/net/unix") as f:
        rows = [line.split() for line in f.read().splitlines()[1:]]
    mine = [row for row in rows if row[6] in inodes]
    assert mine and all(len(row) == 7 for row in mine), [" ".join(r) for r in mine]  # 8th column: a path


@pytest.mark.parametrize(
    "argv,why",
    [
        (
            ["--runtime-api-address", "10.0.0.5:9094", "--token-file", TOKEN_PLACEHOLDER, "--insecure"],
            "loopback",
        ),
        (["--runtime-api-address", "127.0.0.1:1", "--token", "x", "--insecure"], "--token-file"),
        (
            ["--runtime-api-address", "127.0.0.1:1", "--token-file", "/etc/shadow", "--insecure"],
            "--token-file",
        ),
        (["--runtime-api-address", "127.0.0.1:1", "--token-file", TOKEN_PLACEHOLDER], "--root-certificates"),
        (
            [
                "--runtime-api-address",
                "127.0.0.1:1",
                "--token-file",
                TOKEN_PLACEHOLDER,
                "--root-certificates",
                "ca",
            ],
            "--root-certificates",
        ),
        (
            [
                "--runtime-api-address",
                "127.0.0.1:1",
                "--token-file",
                TOKEN_PLACEHOLDER,
                "--insecure",
                "-c",
                "x",
            ],
            "unexpected",
        ),
        (
            [
                "--runtime-api-address",
                "127.0.0.1:1",
                "--token-file",
                TOKEN_PLACEHOLDER,
                "--insecure",
                "--allow-runtime-dependency-installation",
            ],
            "unexpected",
        ),
    ],
)
def test_d_requests_outside_the_clientapp_grammar_are_refused(argv, why):
    with pytest.raises(BadRequest, match=why):
        parse_request(_request(argv), [99])


def test_d_the_token_must_come_as_exactly_one_descriptor():
    argv = ["--runtime-api-address", "127.0.0.1:1", "--token-file", TOKEN_PLACEHOLDER, "--insecure"]
    for fds in ([], [5, 6]):
        with pytest.raises(BadRequest, match="descriptor"):
            parse_request(_request(argv), fds)
    with pytest.raises(BadRequest, match="JSON"):
        parse_request(b"import os; os.system('x')", [5])
    assert parse_request(_request(argv), [7]).argv[3] == "/dev/fd/7"


def test_d_a_live_zygote_refuses_the_bad_grammar_and_forks_nothing(zyg, listener, cert):
    zyg.launch(_argv(listener, cert), token_fd("warm-up"), True)
    before = _children(zyg)
    with pytest.raises(ZygoteUnavailable, match="unexpected arguments"):
        zyg.launch([*_argv(listener, cert), "--allow-runtime-dependency-installation"], token_fd("t"), True)
    assert _children(zyg) <= before


def test_e_a_forked_child_keeps_the_restrictions_and_dies_with_the_zygote(listener, cert):
    old = os.umask(0o077)
    try:
        z = Zygote.start()
    finally:
        os.umask(old)
    try:
        fd = token_fd("child-token")
        pid = z.launch(_argv(listener, cert), fd, True)
        os.close(fd)
        child = psutil.Process(pid)
        time.sleep(1.0)  # it is now inside Flower's runtime, retrying the silent listener
        assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        status = open(f"/proc/{pid}/status").read()
        assert "Umask:\t0077" in status
        zygote_socks = {
            os.readlink(f"/proc/{z.proc.pid}/fd/{n}") for n in os.listdir(f"/proc/{z.proc.pid}/fd")
        }
        child_fds = {os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")}
        assert not {s for s in zygote_socks if s.startswith("socket:")} & child_fds  # no way back
        assert any(t.startswith("/memfd:flwr-task-token") for t in child_fds)  # the token, by descriptor
        assert "child-token" not in " ".join(child.cmdline())
        os.kill(z.proc.pid, signal.SIGKILL)  # the zygote dies abruptly: no handler runs
        gone, alive = psutil.wait_procs([child], timeout=10)
        assert not alive, "the ClientApp outlived its zygote"
    finally:
        z.stop()


def test_e_forked_children_do_not_share_random_state():
    """numpy's global generator is not reseeded by a fork; without the zygote's reseed both
    children below draw the same number."""
    np.random.seed(1)
    draws = []
    for _ in range(2):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            zmod._reseed()
            os.write(w, repr(float(np.random.random())).encode())
            os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        with os.fdopen(r) as f:
            draws.append(f.read())
    assert draws[0] != draws[1]


def test_f_the_zygote_and_its_children_go_when_the_superexec_closes_its_end(listener, cert):
    z = Zygote.start()
    fd = token_fd("t")
    pid = z.launch(_argv(listener, cert), fd, True)
    os.close(fd)
    procs = [psutil.Process(z.proc.pid), psutil.Process(pid)]
    z.sock.close()  # the SuperExec is gone: end of file
    z.proc.wait(timeout=15)
    _gone, alive = psutil.wait_procs(procs, timeout=10)
    assert not alive


def test_g_a_dead_zygote_falls_back_to_a_cold_start(listener, cert, caplog, monkeypatch):
    import sys

    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    z = Zygote.start()
    z.proc.kill()
    z.proc.wait(timeout=10)
    monkeypatch.setattr(superexec, "_zygote", z)
    spec = ExecutionSpec(
        task_type=TaskType.CLIENT_APP,
        runtime_api_address=listener,
        token="tok",
        insecure=False,
        root_certificates_path=cert,
        runtime_dependency_install=False,
        parent_pid=None,
        suppress_output=True,
        task_id=1,
    )
    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    me = psutil.Process()
    before = {p.pid for p in me.children()}
    with caplog.at_level(logging.WARNING, logger="rehealth.superexec"):
        superexec.launch_with_token_file(spec)
    assert "zygote unavailable" in caplog.text and "cold" in caplog.text
    assert superexec._zygote is None
    cold = [p for p in me.children() if p.pid not in before and "flwr-clientapp" in " ".join(p.cmdline())]
    try:
        assert len(cold) == 1 and "--token-file" in cold[0].cmdline()
    finally:
        for p in cold:
            p.kill()
        psutil.wait_procs(cold, timeout=10)
