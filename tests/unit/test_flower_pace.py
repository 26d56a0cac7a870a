"""The pace our Flower processes poll at (docs/benchmarks/roundtrip.md): the SuperNode's pull loop
and every SuperExec's task poll. Each test reads the installed Flower, so an upgrade that moves
the sleeps or renames the variable fails here instead of silently bringing back 3 s waits."""

import inspect
import re
import time

import pytest

from coordinator.federation import supernode
from coordinator.federation.flwr_cli import flwr_env
from shared.flower_commands import FLOWER_PACE_ENV


def test_supernode_loop_sleeps_only_where_the_pace_expects():
    """The paced module's ``time`` is used for sleeping only: Flower's 3 s idle pause and its two
    0.5 s reply polls. Anything else would go through the proxy unchanged, but a new sleep
    would be one this module's docstring does not account for."""
    import flwr.supernode.start_client_internal as loop

    uses = re.findall(r"\btime\.(\w+)\(([^)]*)\)", inspect.getsource(loop))
    assert sorted(uses) == [("sleep", "0.5"), ("sleep", "0.5"), ("sleep", "3")]


def test_configure_pace_shortens_flowers_sleeps(monkeypatch):
    import flwr.supernode.start_client_internal as loop

    monkeypatch.setattr(loop, "time", time)  # restored after the test
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    supernode.configure_pace(idle_s=0.25, poll_s=0.05)
    loop.time.sleep(3)
    loop.time.sleep(0.5)
    assert slept == [0.25, 0.05]
    assert loop.time.monotonic is time.monotonic  # everything else is the real module


def test_configure_pace_refuses_nonsense():
    with pytest.raises(ValueError, match="pace"):
        supernode.configure_pace(idle_s=0.01, poll_s=0.05)
    with pytest.raises(ValueError, match="pace"):
        supernode.configure_pace(idle_s=5, poll_s=0.05)


def test_superexec_reads_the_task_poll_interval_we_set(monkeypatch):
    """Flower's SuperExec takes the interval from the variable every Flower process we start
    gets (``flwr_env``; ``rehealth node run`` passes the same) — an unknown or out-of-range value
    would make it exit, a renamed variable would leave it at 1 s."""
    from flwr.supercore.superexec import run_superexec

    env = flwr_env(__import__("pathlib").Path("/nonexistent-home"))
    for k, v in FLOWER_PACE_ENV.items():
        assert env[k] == v
        monkeypatch.setenv(k, v)
    assert run_superexec._get_task_poll_interval() == pytest.approx(0.1)
    monkeypatch.delenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL")
    assert run_superexec._get_task_poll_interval() == 1.0  # Flower's default, what we replace


def test_object_pull_backoff_is_ours_in_flowers_pull_functions(monkeypatch):
    """Flower binds its 1 s / 10 s object-pull backoff as default arguments; an upgrade that
    renames them fails here instead of silently bringing back the 1–3 s waits per hop."""
    from flwr.supercore.inflatable import inflatable_utils as iu

    from shared.flower_pull import configure_object_pull

    for fn in (iu.pull_objects, iu.pull_and_inflate_object_from_tree):
        monkeypatch.setattr(fn, "__kwdefaults__", dict(fn.__kwdefaults__))  # restored after the test
        assert fn.__kwdefaults__["initial_backoff"] == 1 and fn.__kwdefaults__["backoff_cap"] == 10
    configure_object_pull()
    for fn in (iu.pull_objects, iu.pull_and_inflate_object_from_tree):
        assert fn.__kwdefaults__["initial_backoff"] == 0.05 and fn.__kwdefaults__["backoff_cap"] == 0.5
    with pytest.raises(ValueError, match="backoff"):
        configure_object_pull(initial_s=1, cap_s=0.5)


def test_a_pull_of_an_object_not_there_yet_retries_after_50_ms(monkeypatch):
    """The real ``pull_objects``: an object that appears 0.3 s late is fetched within ~0.2 s of
    appearing (Flower's default would wait 1 s, then 2 s)."""
    from flwr.supercore.inflatable import inflatable_utils as iu
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    from shared.flower_pull import configure_object_pull

    monkeypatch.setattr(iu.pull_objects, "__kwdefaults__", dict(iu.pull_objects.__kwdefaults__))
    configure_object_pull()
    start = time.monotonic()

    def pull(obj_id: str) -> bytes:
        if time.monotonic() - start < 0.3:
            raise ObjectUnavailableError(obj_id)
        return b"x"

    assert iu.pull_objects(["a"], pull) == {"a": b"x"}
    assert time.monotonic() - start < 0.9


def test_a_big_local_federation_polls_slower_in_proportion(monkeypatch, tmp_path):
    """Up to eight nodes keep the base pace; twenty poll 2.5 × slower, so twenty idle nodes cost
    what eight did. The values reach both readers: Flower's SuperExec (which exits on a value
    out of its range) and our SuperNode's pull loop."""
    from flwr.supercore.superexec import run_superexec

    from coordinator.federation.launcher import LocalFederation, NodeSpec, pace_env

    assert (
        pace_env(5)
        == pace_env(8)
        == {
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
            supernode.PULL_IDLE_ENV: "0.25",
        }
    )
    fed = LocalFederation(tmp_path, [NodeSpec(f"s{i}", {}) for i in range(20)])
    env = fed._env("supernode-s0")
    assert env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.25" and env[supernode.PULL_IDLE_ENV] == "0.625"
    for k in ("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", supernode.PULL_IDLE_ENV):
        monkeypatch.setenv(k, env[k])
    assert run_superexec._get_task_poll_interval() == pytest.approx(0.25)
    assert supernode.idle_pull_s() == pytest.approx(0.625)
    monkeypatch.delenv(supernode.PULL_IDLE_ENV)
    assert supernode.idle_pull_s() == supernode.PULL_IDLE_S
    # a test's own env_extra still wins
    fed = LocalFederation(tmp_path, fed.nodes, env_extra={"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.5"})
    assert fed._env("supernode-s0")["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.5"
