"""``flower-supernode`` with a 10 s heartbeat (the SuperLink sees a dead node within 20 s) and a
faster message pull (a round trip no longer waits for Flower's fixed 3 s idle sleep).

How Flower 1.41 notices a node is gone (read from the installed source):

- ``flwr.common.constant``: ``HEARTBEAT_DEFAULT_INTERVAL = 30``, ``HEARTBEAT_PATIENCE = 2``,
  ``HEARTBEAT_MIN_INTERVAL = 10`` (the least the SuperLink's Fleet API accepts,
  ``superlink/servicer/fleet/fleet_handlers.py``), ``HEARTBEAT_CALL_TIMEOUT = 5``;
- the SuperNode (``supernode/fleet_http_connection.py``) declares its interval when it activates
  and with every heartbeat; ``supercore/heartbeat.py`` sends one every
  ``(interval - 5 s) × U(0.7, 0.9)``: 17.5–22.5 s by default;
- the SuperLink keeps the node online until ``PATIENCE × interval`` = 60 s after its last
  heartbeat (``linkstate``); from then on, pulling the reply to a message for that node gives a
  ``NODE_UNAVAILABLE`` error reply (``check_node_availability_for_in_message``).

So a SuperNode that dies (or is stopped) is noticed 37.5–60 s later by default (issue #18 saw
~48 s). Declaring the least interval the SuperLink accepts, 10 s, makes it 3.5–4.5 s between
heartbeats and offline 20 s after the last: **a dead or stopped node is detected within 20 s**
(15.5–20 s), plus the ServerApp's 0.2 s poll. The cost is one small authenticated request per
node every ~4 s.

The pull (``supernode/start_client_internal.py``): the SuperNode asks the SuperLink for a message,
and when there is none sleeps a fixed ``time.sleep(3)`` — no option or variable sets it — so a
message waited 1.5 s on average (3 s at worst) before its node even saw it; after handing a
message to its ClientApp it polls for the reply every 0.5 s. Both sleeps of that module are
capped (:func:`configure_pace`): 0.25 s when idle (one small authenticated request per node every
quarter second; a launcher running more than eight nodes on one machine lengthens it in
proportion, :func:`coordinator.federation.launcher.pace_env`), 0.05 s for the reply (a local
lookup). Nothing else in Flower changes; the figures are in docs/benchmarks/roundtrip.md.

Only the SuperNode's own two uses of the constant change (the interval it declares, and its
heartbeat period); its app processes and the SuperLink keep Flower's values. Run as a script
named ``flower-supernode`` (the launcher writes one) with ``flower-supernode``'s arguments.
"""

from __future__ import annotations

import os
import sys
import time

#: The SuperNode's declared heartbeat interval: Flower's minimum (``HEARTBEAT_MIN_INTERVAL``).
HEARTBEAT_INTERVAL_S = 10
#: How long after its last heartbeat the SuperLink still counts a node online
#: (``HEARTBEAT_PATIENCE`` × interval): the detection bound for a dead or stopped node.
DETECTION_BOUND_S = 2 * HEARTBEAT_INTERVAL_S


def configure_heartbeat(interval_s: int = HEARTBEAT_INTERVAL_S) -> None:
    """Make this process's SuperNode declare (and keep) ``interval_s`` between heartbeats."""
    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.fleet_http_connection as fleet
    from flwr.common.constant import HEARTBEAT_MIN_INTERVAL, HEARTBEAT_PATIENCE

    if interval_s < HEARTBEAT_MIN_INTERVAL or DETECTION_BOUND_S != HEARTBEAT_PATIENCE * interval_s:
        raise RuntimeError(
            f"heartbeat {interval_s} s: Flower accepts ≥ {HEARTBEAT_MIN_INTERVAL} s and keeps a node "
            f"online {HEARTBEAT_PATIENCE} intervals (the documented bound assumes "
            f"{DETECTION_BOUND_S} s)"
        )
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = interval_s
    fleet.HEARTBEAT_DEFAULT_INTERVAL = interval_s


#: The SuperNode's sleep between pulls that found no message (Flower: 3 s).
PULL_IDLE_S = 0.25
#: Environment variable that sets it for one SuperNode (a launcher running many nodes on one
#: machine slows every node's pull: :func:`coordinator.federation.launcher.pace_env`).
PULL_IDLE_ENV = "REHEALTH_SUPERNODE_IDLE_PULL_S"
#: Its sleep while waiting for its ClientApp's reply, and for a reply's content (Flower: 0.5 s).
REPLY_POLL_S = 0.05


class _PacedTime:
    """``time`` for Flower's SuperNode loop: every attribute is the real module's, except
    ``sleep``, which maps Flower's 3 s idle pause to ``idle_s`` and caps shorter ones at ``poll_s``."""

    def __init__(self, idle_s: float, poll_s: float):
        self._idle_s, self._poll_s = idle_s, poll_s

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(self._idle_s if seconds >= 3 else min(seconds, self._poll_s))


def configure_pace(idle_s: float = PULL_IDLE_S, poll_s: float = REPLY_POLL_S) -> None:
    """Make this process's SuperNode pull every ``idle_s`` when idle (and poll its ClientApp's
    reply every ``poll_s``) instead of Flower's fixed 3 s (0.5 s)."""
    import flwr.supernode.start_client_internal as loop

    if not 0 < poll_s <= idle_s <= 3:
        raise ValueError(f"pace: need 0 < poll ({poll_s}) ≤ idle ({idle_s}) ≤ 3 s")
    loop.time = _PacedTime(idle_s, poll_s)  # type: ignore[assignment]


def idle_pull_s() -> float:
    """This SuperNode's idle pull interval: :data:`PULL_IDLE_ENV` if its launcher set it, else
    :data:`PULL_IDLE_S`."""
    return float(os.environ.get(PULL_IDLE_ENV) or PULL_IDLE_S)


def main() -> None:
    from flwr.supernode.cli import flower_supernode

    from shared.flower_pull import configure_object_pull

    configure_heartbeat()
    configure_pace(idle_s=idle_pull_s())
    configure_object_pull()  # a message's objects may still be on their way to the SuperLink
    sys.argv[0] = sys.argv[0].removesuffix(".exe")
    flower_supernode()


if __name__ == "__main__":
    main()
