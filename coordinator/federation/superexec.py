"""``flower-superexec`` that hands each app process its run token through a file descriptor.

Flower's subprocess executor (flwr 1.41, ``supercore/superexec/executor/subprocess_executor.py``)
starts ``flwr-serverapp``/``flwr-clientapp`` with ``--token TOKEN``: the token that lets a process
pull and push a run's messages on the Runtime API sits in ``/proc/PID/cmdline``, which every local
user can read (``ps``). The SuperExec auth secret does not help there: it guards only
``AcquireTask``, and the token is what the task hands out.

Both app commands also accept ``--token-file``. This runtime writes the token to an anonymous
in-memory file (``memfd_create``: no path on disk, gone when the last descriptor closes), passes
that descriptor to the child only, and gives it ``--token-file /dev/fd/N``.

Each app process also dies with this SuperExec (a parent-death signal, :mod:`.lifetime`), which
itself dies with the launcher: Flower's own ``--parent-pid`` watch only polls and asks the app
to stop (SIGINT), which a busy or stopped app does not honour, and a launcher killed outright
would otherwise leave ServerApps and ClientApps behind. Everything else is Flower's own executor
and SuperExec loop, unchanged.

A node's SuperExec (one whose ``flwr-clientapp`` is the node's guard, :mod:`node.flower.guard`)
also starts a *zygote* (:mod:`node.flower.zygote`): a process that has imported Flower, torch and
the node app once and forks each ClientApp from there, instead of a fresh interpreter per message
(3–7 s of imports each on this machine). It is reachable only through a ``socketpair`` whose
other end this process holds (:class:`Zygote`). If it is not there (it failed to start, died, or
refused), the ClientApp starts cold as before, and a warning says so.
``REHEALTH_CLIENTAPP_ZYGOTE=0`` turns it off (every ClientApp cold, e.g. to measure the difference).

Run as ``python -m coordinator.federation.superexec`` with ``flower-superexec``'s arguments.
"""

from __future__ import annotations

import array
import json
import logging
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from coordinator.federation.lifetime import spawn

log = logging.getLogger("rehealth.superexec")

TOKEN_FD_NAME = "flwr-task-token"
TOKEN_PLACEHOLDER = "/dev/fd/TOKEN"  # the zygote puts its own descriptor number here
ZYGOTE_MODULE = "node.flower.zygote"  # run by name: the coordinator package imports no node code
ZYGOTE_ENV = "REHEALTH_CLIENTAPP_ZYGOTE"
ZYGOTE_READY_TIMEOUT_S = 120.0  # its imports, under load; a cold start would take as long
ZYGOTE_ANSWER_TIMEOUT_S = 10.0  # a fork: milliseconds


class ZygoteUnavailable(RuntimeError):
    """The zygote cannot take this launch (the caller starts the ClientApp cold)."""


class Zygote:
    """The SuperExec's end of its zygote: start it, hand it launches, stop it."""

    def __init__(self, proc: subprocess.Popen, sock: socket.socket) -> None:
        self.proc, self.sock, self.ready = proc, sock, False

    @classmethod
    def start(cls) -> "Zygote":
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # both close-on-exec
        try:
            proc = spawn(  # dies with this SuperExec; gets only its own end of the pair
                [sys.executable, "-m", ZYGOTE_MODULE, "--fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        log.info("ClientApp zygote started (pid %d)", proc.pid)
        return cls(proc, ours)

    def launch(self, argv: list[str], token_fd: int, suppress_output: bool) -> int:
        """Fork a ClientApp with ``argv`` (``--token-file`` given as :data:`TOKEN_PLACEHOLDER`)
        and the token's descriptor; its pid."""
        if not self.ready:
            self.ready = self._receive(ZYGOTE_READY_TIMEOUT_S).get("ready") is True
            if not self.ready:
                raise ZygoteUnavailable("it did not say it was ready")
        request = json.dumps({"argv": argv, "suppress_output": suppress_output}).encode()
        try:
            self.sock.sendmsg(
                [request],
                [
                    (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [token_fd]).tobytes()),
                    # who sends (the kernel checks it): the zygote forks only for this process
                    (
                        socket.SOL_SOCKET,
                        socket.SCM_CREDENTIALS,
                        struct.pack("iII", os.getpid(), os.getuid(), os.getgid()),
                    ),
                ],
            )
        except OSError as e:
            raise ZygoteUnavailable(f"cannot reach it ({e.strerror})") from None
        answer = self._receive(ZYGOTE_ANSWER_TIMEOUT_S)
        if not isinstance(answer.get("pid"), int):
            raise ZygoteUnavailable(f"it refused: {answer.get('error', answer)}")
        return answer["pid"]

    def _receive(self, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise ZygoteUnavailable(f"it exited with code {self.proc.returncode}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ZygoteUnavailable(f"no answer within {timeout_s:.0f} s")
            if select.select([self.sock], [], [], min(left, 0.5))[0]:
                data = self.sock.recv(4096)
                if not data:
                    raise ZygoteUnavailable("it closed its end")
                return json.loads(data)

    def stop(self) -> None:
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()  # its ClientApps die with it (parent-death signal)
        self.proc.wait(timeout=10)


_zygote: Zygote | None = None


def guard_is_the_clientapp() -> bool:
    """``flwr-clientapp`` on this process's PATH is the node's guard (``rehealth-clientapp``
    next to this Python): what the zygote runs in each child is then what Flower would exec."""
    found = shutil.which("flwr-clientapp")
    guard = Path(sys.executable).with_name("rehealth-clientapp")
    return found is not None and guard.exists() and os.path.realpath(found) == os.path.realpath(guard)


def start_zygote() -> Zygote | None:
    """The node's zygote, or None (not a guarded node, turned off, or it failed to start)."""
    if os.environ.get(ZYGOTE_ENV, "1") == "0" or not guard_is_the_clientapp():
        return None
    try:
        return Zygote.start()
    except OSError as e:
        log.warning("ClientApp zygote not started (%s): each ClientApp starts cold", e)
        return None


def _launch_in_zygote(spec, args: list[str], fd: int) -> bool:
    """True if the zygote forked the ClientApp; otherwise False (logged; the zygote is dropped
    so that no launch goes to it again)."""
    global _zygote
    from flwr.supercore.constant import TaskType

    if _zygote is None or spec.task_type != TaskType.CLIENT_APP:
        return False
    argv = [TOKEN_PLACEHOLDER if a == f"/dev/fd/{fd}" else a for a in args[1:]]
    try:
        pid = _zygote.launch(argv, fd, bool(spec.suppress_output))
    except (ZygoteUnavailable, ValueError) as e:
        log.warning("ClientApp zygote unavailable (%s): starting flwr-clientapp cold from now on", e)
        _zygote.stop()
        _zygote = None
        return False
    log.debug("ClientApp forked by the zygote (pid %d)", pid)
    return True


def token_fd(token: str) -> int:
    """An anonymous in-memory file holding ``token``, positioned at 0; the caller closes it."""
    fd = os.memfd_create(TOKEN_FD_NAME, os.MFD_CLOEXEC)
    os.write(fd, token.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def launch_with_token_file(spec):
    """Drop-in for ``SubprocessExecutor.launch``: the same command, ``--token-file /dev/fd/N``
    instead of ``--token TOKEN``."""
    from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND
    from flwr.supercore.superexec.executor.types import LaunchResult

    fd = token_fd(spec.token)
    try:
        args = [
            TASK_TYPE_TO_COMMAND[spec.task_type],
            TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type],
            spec.runtime_api_address,
            "--token-file",
            f"/dev/fd/{fd}",
        ]
        if spec.insecure:
            args.append("--insecure")
        elif spec.root_certificates_path is not None:
            args.extend(["--root-certificates", spec.root_certificates_path])
        if spec.parent_pid is not None:
            args.extend(["--parent-pid", str(spec.parent_pid)])
        if spec.runtime_dependency_install:
            args.append("--allow-runtime-dependency-installation")
        if not _launch_in_zygote(spec, args, fd):
            out = subprocess.DEVNULL if spec.suppress_output else None  # None: inherit
            spawn(args, pass_fds=(fd,), stdout=out, stderr=out)  # dies with this SuperExec
    finally:
        os.close(fd)
    return LaunchResult.accepted()


def main() -> None:
    global _zygote
    from flwr.supercore.cli.flower_superexec import flower_superexec
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

    # deliberate: Flower's launcher is replaced by the one that passes the token by descriptor
    SubprocessExecutor.launch = lambda self, spec: launch_with_token_file(spec)  # type: ignore[method-assign]
    _zygote = start_zygote()  # fork+exec: a fresh interpreter, sharing nothing of this process
    flower_superexec()


if __name__ == "__main__":
    main()
