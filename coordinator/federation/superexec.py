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

Run as ``python -m coordinator.federation.superexec`` with ``flower-superexec``'s arguments.
"""

from __future__ import annotations

import os
import subprocess

from coordinator.federation.lifetime import spawn

TOKEN_FD_NAME = "flwr-task-token"


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
        out = subprocess.DEVNULL if spec.suppress_output else None  # None: inherit
        spawn(args, pass_fds=(fd,), stdout=out, stderr=out)  # dies with this SuperExec
    finally:
        os.close(fd)
    return LaunchResult.accepted()


def main() -> None:
    from flwr.supercore.cli.flower_superexec import flower_superexec
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

    # deliberate: Flower's launcher is replaced by the one that passes the token by descriptor
    SubprocessExecutor.launch = lambda self, spec: launch_with_token_file(spec)  # type: ignore[method-assign]
    flower_superexec()


if __name__ == "__main__":
    main()
