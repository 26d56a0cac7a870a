"""Tie a child process's life to its parent's: the kernel kills it when the parent dies.

A launcher that is killed with SIGKILL (or loses its terminal, SIGHUP, before it can clean up)
runs no handler: without help its SuperLink, SuperNodes, SuperExecs and their app processes
outlive it (issue #18 counted 11 to 15 of them). Linux's ``PR_SET_PDEATHSIG`` asks the kernel
to send a signal to a process when its parent dies; set in the child between ``fork`` and
``exec`` (``preexec_fn``), it survives the ``exec`` and needs nothing from the parent at its
death.

Two subtleties, both handled here:

- the "parent" is the *thread* that forked: the signal fires when that thread exits, even if
  the process lives on. :func:`spawn` therefore forks from one long-lived daemon thread
  (alive until the process itself ends), whichever thread asks for the child;
- the parent may already be dead when the child sets the flag (it would then never fire):
  the child checks its parent is still the one that forked it, and exits otherwise.

The signal is SIGKILL: a parent that died abruptly leaves nobody to wait for a graceful stop,
and a stopped (SIGSTOP) or busy child must not survive it. Everything the children keep
(SQLite ledgers, Flower's state) is transactional, so a kill leaves it consistent.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import threading
from concurrent.futures import Future
from typing import Any, Callable

PR_SET_PDEATHSIG = 1

# resolved before any fork: the child only calls an already-loaded C function
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_prctl.restype = ctypes.c_int


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child receive ``sig`` when its parent dies (and exit at
    once if the parent ``parent_pid`` is already gone)."""

    def preexec() -> None:
        if _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent_pid:  # the parent died before the flag was set
            os._exit(126)

    return preexec


def popen_dying_with_us(args: Any, **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen`` whose child is killed when this *process* dies (forked here, by the
    calling thread: call it only from a thread that lives as long as the process, such as the
    main thread of a service loop, or use :func:`spawn`)."""
    return subprocess.Popen(args, preexec_fn=die_with_parent(os.getpid()), **kwargs)


class _Spawner:
    """One daemon thread that forks every child, so their parent-death signal is tied to the
    process (a daemon thread ends only with it), not to a worker thread that may end first."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._loop, name="rehealth-spawner", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            fut, args, kwargs = self._jobs.get()
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(popen_dying_with_us(args, **kwargs))
                except BaseException as e:  # handed to the caller, who re-raises it
                    fut.set_exception(e)

    def popen(self, args: Any, **kwargs: Any) -> subprocess.Popen:
        fut: Future = Future()
        self._jobs.put((fut, args, kwargs))
        return fut.result()


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def spawn(args: Any, **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(args, **kwargs)`` whose child the kernel kills (SIGKILL) when this
    process dies, however it dies."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or _spawner._pid != os.getpid() or not _spawner._thread.is_alive():
            _spawner = _Spawner()
        spawner = _spawner
    return spawner.popen(args, **kwargs)
