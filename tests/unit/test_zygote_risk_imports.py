"""A study's ClientApp zygote never imports the risk model's libraries (torch: ~300 MB and ~3 s
of CPU per node); a risk-training node's still does once idle. The real serve loop on a real
socketpair, idle for longer than the deferral; only the import itself is recorded instead of
done."""

import os
import socket
import threading
import time

import pytest

from node.flower import zygote
from shared.flower_commands import ZYGOTE_RISK_IMPORTS_ENV


def _idle_serve(monkeypatch) -> list[tuple[str, ...]]:
    loaded: list[tuple[str, ...]] = []
    monkeypatch.setattr(zygote, "DEFER_IDLE_S", 0.0)
    monkeypatch.setattr(zygote, "preload", lambda modules: loaded.append(modules) or [])
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    served = threading.Thread(target=zygote.serve, args=(theirs, os.getppid()), daemon=True)
    served.start()
    time.sleep(1.5)  # one idle select (1 s) and then some
    ours.close()  # end of file: serve returns
    served.join(timeout=5)
    theirs.close()
    assert not served.is_alive()
    return loaded


@pytest.mark.parametrize(("env", "imports"), [(None, [zygote.DEFERRED]), ("0", [])])
def test_risk_imports_only_where_the_launcher_allows_them(monkeypatch, env, imports):
    if env is None:
        monkeypatch.delenv(ZYGOTE_RISK_IMPORTS_ENV, raising=False)
    else:
        monkeypatch.setenv(ZYGOTE_RISK_IMPORTS_ENV, env)
    assert _idle_serve(monkeypatch) == imports


def test_a_study_federation_turns_them_off_and_risk_training_does_not(monkeypatch, tmp_path):
    """What the runner hands its LocalFederation (without starting it)."""
    from coordinator.study import runner

    seen = []

    class Recorder:
        def __init__(self, workdir, nodes, env_extra):
            seen.append(env_extra)

        def __enter__(self):
            self.startup_s, self.nodes = 0.0, []
            return self

        def __exit__(self, *exc):
            return None

    monkeypatch.setattr(runner, "LocalFederation", Recorder)
    monkeypatch.setattr(runner, "load_spec", lambda p: None)
    monkeypatch.setattr(runner, "site_nodes", lambda *a: [])
    for risk in (False, True):
        with runner.local_federation(tmp_path / "study.toml", tmp_path, tmp_path / "k.pub", risk=risk):
            pass
    assert seen == [{ZYGOTE_RISK_IMPORTS_ENV: "0"}, {}]
