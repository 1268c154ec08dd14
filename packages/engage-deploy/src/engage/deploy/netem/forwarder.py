"""The user-space delay and loss forwarder: what ``netem`` would do, for kernels without it.

The ``netns`` provider routes the traffic of each constrained link direction into its own TUN
device (policy routing in the router namespace). This process holds those devices: it reads each
packet the kernel routed into a device, drops it with the link's seeded loss probability, keeps it
for the link's one-way delay and writes it back into the same device, from where the kernel routes
it on to its destination (a packet coming *from* the TUN no longer matches the rule that sent it
there). Rate limits stay in the kernel: an ``htb`` qdisc on the TUN device paces what this process
gets to read, so shaping happens before the delay, as on a real bottleneck link.

Run it inside the namespace that owns the devices, with a JSON file describing the links::

    python -m engage.deploy.netem.forwarder links.json --stats stats.json

``links.json`` is ``{"links": [{"name": "edge->cloud", "device": "t1", "delay": 0.02,
"loss": 0.05, "seed": 1}, ...]}``. It prints ``ready`` once every device is attached and writes
per-link counters to ``--stats`` when stopped with SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import select
import signal
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from engage.deploy.netem.link import LinkEmulator, LinkSpec

# linux/if_tun.h
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
_MAX_PACKET = 65_535
# packets read from one device per wake-up, so that a busy link cannot starve the others
_BATCH = 256


def open_tun(name: str) -> int:
    """Attach to the TUN device ``name`` (created beforehand, e.g. ``ip tuntap add mode tun``) and
    return a non-blocking file descriptor that reads and writes raw IP packets."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class Forwarder:
    """Moves packets through the :class:`LinkEmulator` of each TUN device until :meth:`stop`.

    ``select`` (not ``epoll``) is used for its microsecond timeout: ``epoll`` rounds sleeps up to
    whole milliseconds, which would add up to 1 ms per direction to every configured delay.
    """

    def __init__(self, specs: Sequence[LinkSpec]) -> None:
        self.links = [LinkEmulator(spec) for spec in specs]
        self.fds: list[int] = []
        self._running = False
        self.write_errors = 0

    def open(self) -> None:
        """Attach to every device."""
        for link in self.links:
            self.fds.append(open_tun(link.spec.device))

    def close(self) -> None:
        """Detach from every device."""
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def stop(self, *_: object) -> None:
        """Make :meth:`serve` return after its current wake-up (usable as a signal handler)."""
        self._running = False

    def _flush(self, now: float) -> None:
        for fd, link in zip(self.fds, self.links):
            for packet in link.due(now):
                try:
                    os.write(fd, packet)
                except OSError as exc:
                    # a destination that went away (device down during teardown) loses the packet,
                    # as a real link would; anything else is a bug worth seeing
                    if exc.errno not in (errno.EIO, errno.EINVAL, errno.ENETDOWN, errno.EAGAIN):
                        raise
                    self.write_errors += 1

    def serve(self) -> None:
        """Forward packets until :meth:`stop` is called."""
        self._running = True
        by_fd = dict(zip(self.fds, self.links))
        clock = time.monotonic
        while self._running:
            now = clock()
            self._flush(now)
            heads = [t for t in (link.next_due() for link in self.links) if t is not None]
            timeout = max(0.0, min(heads) - clock()) if heads else 0.5
            try:
                readable, _, _ = select.select(self.fds, [], [], timeout)
            except InterruptedError:
                continue
            for fd in readable:
                link = by_fd[fd]
                for _ in range(_BATCH):
                    try:
                        packet = os.read(fd, _MAX_PACKET)
                    except BlockingIOError:
                        break
                    now = clock()
                    if link.receive(packet, now) and link.spec.delay == 0.0:
                        self._flush(now)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-link counters, by link name."""
        return {link.spec.name: link.stats.to_dict() for link in self.links}


def load_specs(path: str | os.PathLike[str]) -> list[LinkSpec]:
    """Read the links of a forwarder JSON file."""
    data = json.loads(Path(path).read_text())
    return [LinkSpec.from_dict(item) for item in data["links"]]


def request_realtime(priority: int = 20) -> bool:
    """Ask for ``SCHED_FIFO`` at ``priority``; ``False`` when not allowed (not root, or a cgroup
    without real-time budget). On a busy machine this keeps scheduling delays of a few
    milliseconds out of the emulated delay; the forwarder sleeps between packets, and the kernel's
    real-time throttling leaves other processes their share even if it ever spins."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError):
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m engage.deploy.netem.forwarder``."""
    parser = argparse.ArgumentParser(prog="engage.deploy.netem.forwarder", description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="JSON file with the links to emulate")
    parser.add_argument("--stats", help="write per-link counters here on exit")
    parser.add_argument("--no-realtime", action="store_true", help="keep the normal scheduling policy")
    args = parser.parse_args(argv)
    if not args.no_realtime and not request_realtime():
        print("real-time scheduling not allowed: delays may grow when the machine is busy", file=sys.stderr)
    forwarder = Forwarder(load_specs(args.spec))
    forwarder.open()
    signal.signal(signal.SIGTERM, forwarder.stop)
    signal.signal(signal.SIGINT, forwarder.stop)
    print("ready", flush=True)
    try:
        forwarder.serve()
    finally:
        forwarder.close()
        if args.stats:
            Path(args.stats).write_text(json.dumps(forwarder.stats(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
