"""A faster retry when a Flower process pulls a message's objects that are not there yet.

Flower 1.41 moves a message's content as separate objects (``supercore/inflatable``): a process
pulls each object and, while its sender has not uploaded it yet (``ObjectUnavailableError``),
waits ``PULL_INITIAL_BACKOFF`` = 1 s, doubling up to ``PULL_BACKOFF_CAP`` = 10 s, both bound as
default arguments of ``pull_objects`` and ``pull_and_inflate_object_from_tree``. That wait is
hit on every hop of a round trip:

- the SuperNode creates the ClientApp's task *before* it pulls the message's objects from the
  SuperLink (``supernode/start_client_internal.py``); a ClientApp forked by the node's zygote
  (:mod:`node.flower.zygote`) asks for them within milliseconds, finds them missing, and sleeps
  1 s, then 2 s (measured: 4.7 s of a forked ClientApp's 6.7 s, docs/benchmarks/roundtrip.md);
- the ServerApp pulls a reply's objects as soon as its row appears, before the SuperNode has
  uploaded them; the SuperNode pulls a message as soon as the ServerApp pushed its row.

:func:`configure_object_pull` makes the first retry 50 ms, doubling to at most 0.5 s. Each
retry is one small request to a loopback Runtime API (ClientApp) or the SuperLink; only the
backoff changes, not the number of tries or the deadline. Pure: it only changes defaults of
functions already imported.
"""

from __future__ import annotations

#: First wait after "not there yet" (Flower: 1 s) and the most any wait grows to (Flower: 10 s).
PULL_INITIAL_BACKOFF_S = 0.05
PULL_BACKOFF_CAP_S = 0.5


def configure_object_pull(
    initial_s: float = PULL_INITIAL_BACKOFF_S,
    cap_s: float = PULL_BACKOFF_CAP_S,
    max_time_s: float | None = None,
) -> None:
    """Set the backoff of this process's object pulls (call before Flower pulls anything).

    ``max_time_s``: give up on a message whose objects have not all arrived after this long
    (Flower: 7,200 s). The ServerApp sets it to the federation's detection bound: a node that
    stops between pushing a reply's row and its objects is otherwise waited for until the round
    times out (measured: 180 s), although it is long offline; with it, Flower's grid turns the
    reply into a ``MESSAGE_UNAVAILABLE`` error and the node is dropped or named like any other."""
    from flwr.supercore.inflatable import inflatable_utils as iu

    if not 0 < initial_s <= cap_s <= 10:
        raise ValueError(f"object pull backoff: need 0 < initial ({initial_s}) ≤ cap ({cap_s}) ≤ 10 s")
    for fn in (iu.pull_objects, iu.pull_and_inflate_object_from_tree):
        defaults = fn.__kwdefaults__
        if defaults is None or not {"initial_backoff", "backoff_cap", "max_time"} <= defaults.keys():
            raise RuntimeError(f"Flower's {fn.__name__} no longer takes initial_backoff/backoff_cap/max_time")
        defaults["initial_backoff"], defaults["backoff_cap"] = initial_s, cap_s
        if max_time_s is not None:
            defaults["max_time"] = max_time_s
