"""A pre-imported ClientApp runtime per node that forks one guarded ClientApp per message.

Flower's SuperNode asks its SuperExec for one ``flwr-clientapp`` process per message. Started
cold, each such process spends 3–7 s on this machine importing Python, Flower, torch and the
node app before the node computes for a fraction of a second, and eight nodes start theirs at
once on two cores (``docs/benchmarks/roundtrip.md``). This process (the *zygote*) imports all of
that once, when the node starts, then forks a child per ClientApp launch; the child runs exactly
what the ``flwr-clientapp`` on the SuperNode's PATH runs — the guard
(:func:`node.flower.guard.main`) in front of Flower's ClientApp runtime — and exits. Forked
children share the zygote's pages (copy-on-write), so eight nodes hold one set of imports each.

**Who can make it run something.** Only the SuperExec that started it:

- it has no address. The SuperExec creates a ``socketpair`` (no path, no abstract name: nothing
  another process can ``connect`` to) and passes one end to this process as a descriptor; both
  ends are close-on-exec, and each forked child closes the zygote's end before running anything;
- every request carries the sender's credentials, filled in and checked by the kernel
  (``SCM_CREDENTIALS``; a process can claim only its own pid and uid unless it holds
  ``CAP_SYS_ADMIN``/``CAP_SETUID``, which own the node anyway): a request not sent by the parent
  process (the SuperExec) under the zygote's own uid is refused — so a descriptor that leaked
  to any other process, of any user, still cannot make the zygote fork;
- a request is not code: it is the ``flwr-clientapp`` argument list (the Runtime API's loopback
  address, the certificate to trust, the parent pid) and the run token as a descriptor,
  checked against that exact grammar; the child always runs the guard, nothing else.

**What the child keeps.** Everything a cold ``flwr-clientapp`` from our SuperExec had: the
guard's bundle check (the same function), the token by descriptor (``/dev/fd/N``, never on a
command line), umask 077 and the environment (inherited from the SuperExec through this
process), death with its parent (``PR_SET_PDEATHSIG``; the zygote itself dies with the
SuperExec, which dies with the node), default signal handlers, and fresh random state (numpy's
and torch's global generators are reseeded from the OS; the node's noise never used them:
:func:`shared.dp.mechanisms.secure_rng`, ``secrets`` in DP-SGD).

Protocol (``SOCK_SEQPACKET``, one message each way): the SuperExec sends
``{"argv": [...], "suppress_output": bool}`` with the token's descriptor attached; the zygote
answers ``{"pid": N}`` or ``{"error": "..."}``. Before the first request it sends
``{"ready": true}`` once its imports are done. End of file on the socket (the SuperExec is
gone) ends the zygote, and with it its children.

Run as ``python -m node.flower.zygote --fd N`` (by :mod:`coordinator.federation.superexec`).
"""

from __future__ import annotations

import argparse
import array
import ctypes
import importlib
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass

from shared.flower_commands import ZYGOTE_RISK_IMPORTS_ENV

log = logging.getLogger("rehealth.node.zygote")

PR_SET_NAME, PR_SET_PDEATHSIG = 15, 1
_libc = ctypes.CDLL(None, use_errno=True)

#: What a ClientApp imports on its way (Flower's runtime, the guard, the node app and the lazy
#: imports of a study's handlers): imported once, before the zygote says it is ready. A module
#: that fails to import is skipped (logged): the child then imports it, and fails, exactly as a
#: cold process would.
PRELOAD = (
    "numpy",
    "flwr.supernode.cli",
    "httpcore",  # Flower's Runtime API client (httpx) imports its transport lazily
    "h11",
    "sqlite3",
    "flwr.supernode.runtime.run_clientapp",
    "flwr.cli.install",
    "flwr.clientapp",
    "flwr.client.mod",
    "flwr.compat.common.recorddict_compat",
    "flwr.common.secure_aggregation.secaggplus_constants",
    "node.flower.guard",
    "node.flower.client_app",
    "node.flower.risk_handlers",
    "node.runtime",
    "node.policy",
    "node.ledger",
    "node.store",
    "node.study_service",
    "protos.codec",
    "shared.answer",
    "shared.grant",
    "shared.protocol",
    "shared.dp.mechanisms",
    "shared.dp.plan",
    "shared.features",
    "shared.risk.arch",
    "shared.risk.metrics",
)

#: What only the risk-model messages need (torch, Opacus and SciPy: ~2.8 s of CPU, twice the
#: rest): imported once the zygote has been idle :data:`DEFER_IDLE_S`, so that eight nodes
#: starting at once on two cores are ready for a study's first round sooner. A risk message that
#: comes before imports them in its own child (a cold start's cost, that once).
#: A node whose launcher sets :data:`~shared.flower_commands.ZYGOTE_RISK_IMPORTS_ENV` to "0" (a local
#: federation run for a study) never imports them: twenty such zygotes held ~6 GB more with torch.
DEFERRED = ("torch", "node.risk.train", "node.risk.model_store")
DEFER_IDLE_S = 15.0

#: Libraries that would start a thread at import (OpenBLAS's pool under numpy and scipy,
#: jemalloc's background thread under pyarrow, which pandas imports) are asked not to: the
#: zygote forks, and a fork copies only the calling thread — a lock another thread held would
#: stay locked in every child. The children inherit these settings (single-threaded BLAS,
#: no allocator thread); the environment variables themselves are put back after the imports.
SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "JE_ARROW_MALLOC_CONF": "background_thread:false"}

MAX_REQUEST = 16384
ADDRESS_FLAG = "--runtime-api-address"
CHILD_NAME = b"flwr-clientapp"
_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid


class BadRequest(ValueError):
    """A request the zygote refuses (named in its answer; nothing is forked)."""


@dataclass(frozen=True)
class Request:
    argv: list[str]  # the child's sys.argv[1:], with --token-file pointing at token_fd
    token_fd: int
    suppress_output: bool


def parse_request(data: bytes, fds: list[int]) -> Request:
    """The request's ``flwr-clientapp`` arguments, checked against the exact grammar our
    SuperExec sends (:func:`coordinator.federation.superexec.clientapp_args`)."""
    if len(fds) != 1:
        raise BadRequest(f"expected the token's descriptor, got {len(fds)} descriptors")
    try:
        req = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("request is not JSON") from None
    if not isinstance(req, dict) or set(req) != {"argv", "suppress_output"}:
        raise BadRequest("request must have exactly 'argv' and 'suppress_output'")
    argv, suppress = req["argv"], req["suppress_output"]
    if (
        not isinstance(argv, list)
        or not all(isinstance(a, str) for a in argv)
        or not isinstance(suppress, bool)
    ):
        raise BadRequest("argv must be a list of strings, suppress_output a boolean")
    out = list(argv)
    rest = list(argv)
    if rest[:1] != [ADDRESS_FLAG] or len(rest) < 2 or not _loopback(rest[1]):
        raise BadRequest(f"the first argument must be {ADDRESS_FLAG} with a loopback address")
    rest = rest[2:]
    if rest[:2] != ["--token-file", "/dev/fd/TOKEN"]:
        raise BadRequest("the token must come as --token-file /dev/fd/TOKEN (its descriptor attached)")
    out[out.index("/dev/fd/TOKEN")] = f"/dev/fd/{fds[0]}"
    rest = rest[2:]
    if rest[:1] == ["--root-certificates"] and len(rest) >= 2 and os.path.isabs(rest[1]):
        rest = rest[2:]
    elif rest[:1] == ["--insecure"]:
        rest = rest[1:]
    else:
        raise BadRequest("expected --root-certificates /absolute/path or --insecure")
    if rest[:1] == ["--parent-pid"] and len(rest) >= 2 and rest[1].isdigit():
        rest = rest[2:]
    if rest:
        raise BadRequest(f"unexpected arguments: {rest[:3]}")
    return Request(out, fds[0], suppress)


def _loopback(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep) and port.isdigit() and host.strip("[]") in ("127.0.0.1", "localhost", "::1")


def preload(modules: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import ``modules`` (under :data:`SINGLE_THREAD_ENV`); those that failed."""
    saved = {k: os.environ.get(k) for k in SINGLE_THREAD_ENV}
    for k, v in SINGLE_THREAD_ENV.items():
        os.environ.setdefault(k, v)
    failed = []
    try:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 - logged; the child will meet it again
                failed.append(name)
                log.warning("zygote: could not preload %s (%s)", name, type(e).__name__)
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old
    return failed


def native_threads() -> int:
    """This process's OS threads: forking is only safe while it is 1 (no lock held elsewhere)."""
    return len(os.listdir("/proc/self/task"))


def recv_request(sock: socket.socket) -> tuple[bytes, list[int], tuple[int, int, int] | None]:
    """One message: its bytes, the descriptors attached, the sender's (pid, uid, gid)."""
    fds = array.array("i")
    data, ancdata, flags, _ = sock.recvmsg(
        MAX_REQUEST, socket.CMSG_SPACE(4 * fds.itemsize) + socket.CMSG_SPACE(_CREDS.size)
    )
    creds = None
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            creds = _CREDS.unpack(payload[: _CREDS.size])
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise BadRequest("request too large")
    return data, list(fds), creds


def check_sender(creds: tuple[int, int, int] | None, parent: int) -> None:
    """Only the SuperExec that started this zygote, under this zygote's uid, may ask."""
    if creds is None:
        raise BadRequest("request carries no credentials")
    pid, uid, _gid = creds
    if uid != os.getuid():
        raise BadRequest(f"refused a request from uid {uid}")
    if pid != parent:
        raise BadRequest(f"refused a request from pid {pid}, not the SuperExec")


def serve(sock: socket.socket, parent: int) -> int:
    """Answer launch requests until the SuperExec closes its end (or dies)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    last_request, deferred = time.monotonic(), False
    risk_imports = os.environ.get(ZYGOTE_RISK_IMPORTS_ENV, "1") != "0"  # a study's nodes: never
    while True:
        ready, _, _ = select.select([sock], [], [], 1.0)
        _reap()
        if os.getppid() != parent:
            return 0
        if not ready:
            if not deferred and risk_imports and time.monotonic() - last_request >= DEFER_IDLE_S:
                deferred = True
                failed = preload(DEFERRED)
                log.info("zygote: deferred imports done (%d failed)", len(failed))
            continue
        last_request = time.monotonic()
        try:
            data, fds, creds = recv_request(sock)
        except BadRequest as e:
            _answer(sock, {"error": str(e)})
            continue
        except OSError:
            return 0
        if not data and not fds:
            return 0  # end of file: the SuperExec closed its end
        try:
            check_sender(creds, parent)
            req = parse_request(data, fds)
            if native_threads() != 1:
                raise BadRequest("zygote has more than one thread: refusing to fork")
            pid = os.fork()
            if pid == 0:
                _child(sock, req)  # never returns
            _answer(sock, {"pid": pid})
        except BadRequest as e:
            log.warning("zygote: %s", e)
            _answer(sock, {"error": str(e)})
        finally:
            for fd in fds:
                os.close(fd)


def _answer(sock: socket.socket, obj: dict) -> None:
    """Send ``obj`` with ``SO_PASSCRED`` off for the send: Linux gives a socket that sends with
    it on an abstract address (autobind), and the zygote must have no name at all."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 0)
    try:
        sock.send(json.dumps(obj).encode())
    except OSError:
        pass
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)


def _reap() -> None:
    """Collect exited children; a non-zero exit is logged (Flower never looks at it)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            log.info("zygote: ClientApp %d exited with %d", pid, code)


def _child(sock: socket.socket, req: Request) -> None:
    """In the forked child: become a ``flwr-clientapp`` process running the guard, then exit."""
    code = 1
    try:
        setup_child(sock, os.getppid(), req)
        from node.flower import guard

        try:
            guard.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        _shutdown_like_the_interpreter()
    except BaseException:  # noqa: BLE001 - the child must never return into the zygote's loop
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 - exiting anyway
                pass
        os._exit(code)


def setup_child(sock: socket.socket, zygote_pid: int, req: Request) -> None:
    """What a forked child does before it runs any ClientApp code (each step is what a fresh
    ``flwr-clientapp`` from our SuperExec had, or undoes something of the zygote's)."""
    sock.close()  # the child cannot ask the zygote for anything
    if _libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0 or os.getppid() != zygote_pid:
        os._exit(126)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as the interpreter sets it at start
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(CHILD_NAME), 0, 0, 0)
    _reseed()
    if req.suppress_output:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os.close(null)
    sys.argv = ["flwr-clientapp", *req.argv]


def _reseed() -> None:
    """Fresh global random state: forked children would otherwise share the zygote's."""
    import random

    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()


def _shutdown_like_the_interpreter() -> None:
    """What Python does at exit (join non-daemon threads, atexit handlers), since the child
    leaves with ``os._exit`` so that it never unwinds into the zygote's code."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fd", type=int, required=True, help="this end of the SuperExec's socketpair")
    args = ap.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # Flower configures the root logger in the child, not here
    parent = os.getppid()
    sock = socket.socket(fileno=args.fd)
    os.set_inheritable(sock.fileno(), False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # before anyone can send
    pid, uid, _gid = _CREDS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size))
    if pid != parent or uid != os.getuid():
        log.error("zygote: socket's peer is pid %d uid %d, not the parent SuperExec: exiting", pid, uid)
        return 2
    started = time.perf_counter()
    failed = preload()
    threads = native_threads()
    if threads != 1:  # e.g. a library started a pool at import: forking could deadlock a child
        log.error("zygote: %d threads after the imports; not serving (the SuperExec starts cold)", threads)
        return 3
    log.info(
        "zygote %d: %d modules preloaded in %.1f s%s",
        os.getpid(),
        len(PRELOAD) - len(failed),
        time.perf_counter() - started,
        f" ({len(failed)} failed)" if failed else "",
    )
    _answer(sock, {"ready": True})
    return serve(sock, parent)


if __name__ == "__main__":
    sys.exit(main())
