"""One emulated link direction: a constant one-way delay and a seeded random loss.

This is the part of the forwarder that decides what happens to each packet; it holds no file
descriptors and reads no clock of its own, so it is tested with a fake clock and reused by the
forwarder loop. Packets leave in arrival order (the delay is constant), so a FIFO is enough: the
head of the queue is always the next packet due.

Example::

    >>> link = LinkEmulator(LinkSpec(name="edge->cloud", device="t1", delay=0.02, loss=0.0))
    >>> link.receive(b"packet", now=1.0)
    True
    >>> link.due(now=1.01), link.due(now=1.02)
    ([], [b'packet'])
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LinkSpec:
    """What the forwarder does on one TUN device: packets read from ``device`` are dropped with
    probability ``loss`` and written back after ``delay`` seconds. ``seed`` makes the drops
    repeatable: the same packet sequence loses the same packets."""

    name: str
    device: str
    delay: float = 0.0
    loss: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping that :meth:`from_dict` reads back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinkSpec:
        """Build from :meth:`to_dict`'s mapping."""
        return cls(**data)


@dataclass
class LinkStats:
    """Counters of one link: packets and bytes received, dropped and sent on."""

    received: int = 0
    dropped: int = 0
    sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    max_queue: int = 0

    def to_dict(self) -> dict[str, int]:
        """A JSON-ready mapping."""
        return asdict(self)


@dataclass
class LinkEmulator:
    """Delay and loss of one link direction, driven by the caller's clock.

    ``receive`` takes a packet at time ``now`` and returns whether it was kept; ``due`` returns the
    packets whose delay has elapsed by ``now``; ``next_due`` says when the next one is, for the
    caller's sleep. The loss draws come from a generator seeded with ``"<seed>:<name>"``, so each
    link has its own repeatable sequence, whatever the order the links are listed in.

    >>> link = LinkEmulator(LinkSpec(name="l", device="t1", delay=0.0, loss=0.5, seed=7))
    >>> kept = sum(link.receive(b"x", now=0.0) for _ in range(10_000))
    >>> 4_800 < kept < 5_200
    True
    """

    spec: LinkSpec
    stats: LinkStats = field(default_factory=LinkStats)

    def __post_init__(self) -> None:
        if not 0.0 <= self.spec.loss < 1.0:
            raise ValueError(f"link {self.spec.name}: loss {self.spec.loss!r} must be a fraction in [0, 1)")
        if self.spec.delay < 0:
            raise ValueError(f"link {self.spec.name}: delay {self.spec.delay!r} must be >= 0 seconds")
        self._rng = random.Random(f"{self.spec.seed}:{self.spec.name}")
        self._queue: deque[tuple[float, bytes]] = deque()

    def receive(self, packet: bytes, now: float) -> bool:
        """Take ``packet`` arriving at ``now``; ``False`` when the loss draw dropped it."""
        self.stats.received += 1
        self.stats.bytes_received += len(packet)
        # one draw per packet, even when loss is 0, so the loss pattern depends only on the seed
        # and the packet sequence, not on the configured loss
        if self._rng.random() < self.spec.loss:
            self.stats.dropped += 1
            return False
        self._queue.append((now + self.spec.delay, packet))
        if len(self._queue) > self.stats.max_queue:
            self.stats.max_queue = len(self._queue)
        return True

    def due(self, now: float) -> list[bytes]:
        """The packets whose delay has elapsed by ``now``, in arrival order (removed from the queue)."""
        out = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            packet = queue.popleft()[1]
            out.append(packet)
            self.stats.sent += 1
            self.stats.bytes_sent += len(packet)
        return out

    def next_due(self) -> float | None:
        """When the next queued packet is due, or ``None`` when the queue is empty."""
        return self._queue[0][0] if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)
