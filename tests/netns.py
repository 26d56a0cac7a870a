"""Separate "hosts" on one Linux machine: network namespaces on a private switch (tests only).

:class:`Network` makes one network namespace per host, each with its own address on one /24,
wired by veth pairs to a bridge. The bridge lives in a namespace of its own (the *switch*), not
in the machine's: the machine's firewall (a ``FORWARD DROP`` policy, ``br_netfilter``) never
sees the traffic, and nothing of the machine's own network is touched. Every host namespace has
its own loopback, so a process binding ``127.0.0.1`` there is reachable from that host only.

A host's link is cut at the switch (:meth:`Network.cut`, ``ip link set … down`` on the switch's
end of its veth): a pulled cable, not a refused connection — the host's packets vanish without an
error and its peers learn of it only by their own timeouts. :meth:`Network.restore` plugs it back.

Closing the network deletes every namespace it made (their veths go with them). Processes still
inside a namespace are listed by :meth:`Network.pids` (``ip netns pids``): a test asserts there
are none before closing — an orphan is a failure; closing then kills any left (after a failed
test) so that no run leaves processes behind.

Needs root (CAP_NET_ADMIN) and ``iproute2``.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field


def _ip(*args: str) -> str:
    cp = subprocess.run(["ip", *args], capture_output=True, text=True)
    if cp.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {cp.stderr.strip()}")
    return cp.stdout


@dataclass
class Network:
    """Hosts ``names`` at ``{subnet}.1``, ``{subnet}.2``, … in that order, one switch."""

    names: list[str]
    subnet: str = "10.77.0"
    tag: str = field(default_factory=lambda: f"rh{os.getpid() % 100000}")
    made: list[str] = field(default_factory=list)  # namespaces, in creation order

    @property
    def switch(self) -> str:
        return f"{self.tag}-switch"

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def address(self, name: str) -> str:
        return f"{self.subnet}.{self.names.index(name) + 1}"

    def _port(self, name: str) -> str:  # the switch's end of the host's veth (≤ 15 characters)
        return f"p{self.names.index(name)}"

    def __enter__(self) -> Network:
        try:
            self._add(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for name in self.names:
                ns = self._add(self.ns(name))
                port = self._port(name)
                # made in the switch, one end moved into the host as its eth0
                _ip(
                    "-n",
                    self.switch,
                    "link",
                    "add",
                    port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns,
                )
                _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
                _ip("-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def _add(self, ns: str) -> str:
        _ip("netns", "add", ns)
        self.made.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        return ns

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Kill whatever is still inside (a failed test's leftovers), then delete every namespace."""
        for ns in self.made:
            cp = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in cp.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()

    def cmd(self, name: str, argv: list[str]) -> list[str]:
        """``argv`` run inside host ``name``'s namespace."""
        return ["ip", "netns", "exec", self.ns(name), *argv]

    def cut(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self._port(name), "down")

    def restore(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self._port(name), "up")

    def pids(self, name: str) -> list[int]:
        """Processes living in host ``name``'s namespace."""
        return [int(p) for p in _ip("netns", "pids", self.ns(name)).split()]
