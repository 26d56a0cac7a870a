"""``flower-supernode`` with a 10 s heartbeat, so the SuperLink sees a dead node within 20 s.

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

Only the SuperNode's own two uses of the constant change (the interval it declares, and its
heartbeat period); its app processes and the SuperLink keep Flower's values. Run as a script
named ``flower-supernode`` (the launcher writes one) with ``flower-supernode``'s arguments.
"""

from __future__ import annotations

import sys

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


def main() -> None:
    from flwr.supernode.cli import flower_supernode

    configure_heartbeat()
    sys.argv[0] = sys.argv[0].removesuffix(".exe")
    flower_supernode()


if __name__ == "__main__":
    main()
