"""Rate limits with ``tc``: an ``htb`` tree on the device that carries one link direction.

Each (source host, destination host) pair gets its own ``htb`` class at the link's rate, selected
by a ``u32`` filter on the two addresses, so that every host-to-host path of a constrained layer
pair is limited independently, as EnOSlib's ``NetemHTB`` limits each host's egress towards each
destination. Traffic no filter matches falls into a default class at the same rate.

Example::

    >>> cmds = htb_commands("t1", 20e6, [("10.231.1.2", "10.231.2.2")], delay=0.02)
    >>> " ".join(cmds[0])
    'tc qdisc replace dev t1 root handle 1: htb default 1 r2q 10'
    >>> " ".join(cmds[1])
    'tc class replace dev t1 parent 1: classid 1:1 htb rate 20000000bit ceil 20000000bit'
    >>> " ".join(cmds[-1][14:])
    'match ip src 10.231.1.2/32 match ip dst 10.231.2.2/32 flowid 1:2'
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Sequence

_MTU_BYTES = 1500


def queue_limit(rate: float, delay: float) -> int:
    """Packets the queue of one shaped path holds: about one round trip (at least 100 ms) of
    traffic at ``rate``, so TCP can fill the link without seconds of extra queueing delay."""
    window = max(0.1, 4.0 * delay)
    return max(64, math.ceil(rate * window / (8 * _MTU_BYTES)))


def htb_commands(device: str, rate: float, pairs: Sequence[tuple[str, str]], delay: float = 0.0) -> list[list[str]]:
    """The ``tc`` argv lists that limit every ``(source address, destination address)`` pair to
    ``rate`` bits per second on ``device``; ``delay`` (one-way seconds) only sizes the queues."""
    bits = f"{round(rate)}bit"
    limit = str(queue_limit(rate, delay))
    # r2q sets the quantum (rate / r2q bytes); keep it at least one MTU for slow links
    r2q = str(max(1, min(10, round(rate / 8 / _MTU_BYTES))))
    cmds = [["tc", "qdisc", "replace", "dev", device, "root", "handle", "1:", "htb", "default", "1", "r2q", r2q]]

    def add_class(minor: int) -> None:
        klass = ["tc", "class", "replace", "dev", device, "parent", "1:", "classid", f"1:{minor:x}"]
        cmds.append([*klass, "htb", "rate", bits, "ceil", bits])
        leaf = ["tc", "qdisc", "replace", "dev", device, "parent", f"1:{minor:x}", "handle", f"{minor + 1:x}:"]
        cmds.append([*leaf, "pfifo", "limit", limit])

    add_class(1)
    for index, (src, dst) in enumerate(pairs, start=2):
        add_class(index)
        head = ["tc", "filter", "replace", "dev", device, "parent", "1:", "protocol", "ip", "prio", "1"]
        match = ["match", "ip", "src", f"{src}/32", "match", "ip", "dst", f"{dst}/32"]
        cmds.append([*head, "handle", f"800::{index:x}", "u32", *match, "flowid", f"1:{index:x}"])
    return cmds


def run_tc(commands: Sequence[Sequence[str]], netns: str | None = None) -> None:
    """Run ``tc`` commands (inside ``netns`` when given); the first failure raises ``RuntimeError``
    with ``tc``'s own message."""
    for cmd in commands:
        argv = ["ip", "netns", "exec", netns, *cmd] if netns else list(cmd)
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {result.stderr.strip() or result.stdout.strip()}")
