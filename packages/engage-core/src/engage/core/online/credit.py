"""Credit and shared-memory slots: how many samples each simulation may send, and where they go.

Credit is backpressure: a simulation sends only samples the buffer has room for. A simulation
writing into the buffer's shared memory gets its credit as slot numbers, in the order it fills
them; one streaming over its socket gets a count, and the receiver reads each sample into a slot
it reserved (or keeps large ones by reference). Slots granted and not filled go back to the
buffer.

Example::

    >>> from engage.core.online.buffer import TrainingBuffer
    >>> buffer = TrainingBuffer(capacity=8, policy="fifo")
    >>> buffer.prepare((2,), "float32", parameters=1)
    >>> credit = Credit(buffer, window=4, samples_per_run=6)
    >>> credit.available()
    8
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

from engage.core.online import protocol
from engage.core.online.buffer import TrainingBuffer
from engage.core.online.protocol import Kind, ProtocolError

if TYPE_CHECKING:
    from engage.core.online.fleet import Running


def default_windows(sample_bytes: int, capacity: int, concurrency: int) -> tuple[int, int]:
    """The credit windows (samples in flight per simulation) for a client streaming over its
    socket and for one writing into shared memory.

    Over a socket, enough that a round trip of credit never stalls a simulation at full speed
    (about 16 MiB: memory the transport holds), and never fewer than 8. A shared-memory client's
    credit is slots of the buffer, memory taken already: it may hold more (about 64 MiB, at most
    half the buffer among the simulations running at once), which keeps a simulation writing
    256 KiB samples busy while its announcements and the next grant cross.

    >>> default_windows(16384, 8192, 2), default_windows(256 << 10, 4096, 2)
    ((1024, 1024), (64, 256))
    """
    size = max(1, int(sample_bytes))
    socket = min(1024, max(8, (16 << 20) // size))
    slots = max(socket, min(1024, (64 << 20) // size, int(capacity) // max(1, 2 * int(concurrency))))
    return socket, slots


class Credit:
    """Grants credit from the buffer's room; keeps the slots this receiver reserved.

    ``window`` bounds the credit of a simulation streaming over its socket, ``slot_window``
    (``window`` by default) that of one writing into shared memory; see :func:`default_windows`.
    """

    def __init__(
        self, buffer: TrainingBuffer, window: int, samples_per_run: int | None, slot_window: int | None = None
    ):
        self.buffer = buffer
        self.window = int(window)
        self.slot_window = self.window if slot_window is None else int(slot_window)
        self.samples_per_run = samples_per_run
        self.reserved: list[int] = []  # slots reserved by the receiver, not yet written

    def available(self, outstanding: int = 0) -> int:
        """Samples the buffer can take beyond ``outstanding`` credit granted over sockets."""
        # reserved slots are room the buffer no longer counts but this receiver will fill
        return self.buffer.credit() + len(self.reserved) - outstanding

    def grant(self, connected: Iterable[Running], send: Callable[[Running, list[bytes]], None]) -> None:
        """Top up the credit of ``connected`` simulations, least credit first (in id order under
        an ordered read policy), sending each its ``CREDIT`` message through ``send``."""
        connected = list(connected)
        if not connected:
            return
        # the slots of shared-memory clients are reserved already: their credit is not counted again
        available = self.available(sum(a.credits for a in connected if a.slots is None))
        total = self.samples_per_run
        policy = self.buffer.read_policy
        if policy.ordered:
            # in simulation order, each leaving room for what those before it still have to send:
            # samples the buffer cannot serve yet never take the room of those it waits for
            order = self._in_order(connected)
        else:
            order = sorted(connected, key=lambda a: a.credits)
        for active in order:
            window = self.window if active.slots is None else self.slot_window
            # never more than the run has left to send: a granted slot is one other samples may
            # not use (and under the reservoir policy, a shared-memory slot evicts a sample)
            left = total - active.accepted - active.credits if total is not None else window
            want = min(window - active.credits, left)
            if policy.ordered:
                if total is None and active is not order[0]:
                    break  # what the first still needs is unknown: only it gets credit
                # what it is granted now and what it will still need are both taken from the room
                self._grant(active, min(want, available), send)
                available -= max(0, left)
                continue
            if want <= 0 or available <= 0:
                continue
            # grant in chunks to keep the message count low, but never let a client starve
            if active.credits > 0 and want < window // 2 and want < left:
                continue
            available -= self._grant(active, min(want, available), send)

    def _in_order(self, connected: list[Running]) -> list[Running]:
        """The connected simulations by id, up to the first one before which a simulation still
        sending is not connected (its room cannot be known, so none after it gets credit)."""
        by_id = {a.record.simulation_id: a for a in connected}
        order: list[Running] = []
        for simulation_id in sorted(by_id):
            if any(i not in by_id for i in self.buffer.read_policy.open_before(simulation_id)):
                break
            order.append(by_id[simulation_id])
        return order

    def _grant(self, active: Running, grant: int, send: Callable[[Running, list[bytes]], None]) -> int:
        """Send ``active`` up to ``grant`` more credit; returns how much was granted."""
        if grant <= 0:
            return 0
        rec = active.record
        if active.slots is None:
            message = protocol.encode_text(Kind.CREDIT, rec.simulation_id, rec.attempt, index=grant)
        else:
            granted = self._take(grant)
            if not granted:
                return 0
            grant = len(granted)
            active.slots.extend(granted)
            payload = np.asarray(granted, dtype="<i8").tobytes()
            header = protocol.encode_header(Kind.CREDIT, rec.simulation_id, rec.attempt, grant, nbytes=len(payload))
            message = [header, payload]
        if active.credits == 0:
            active.progress_at = time.monotonic()  # it may send from now: its samples show it lives
        active.credits += grant
        send(active, message)
        return grant

    def _take(self, n: int) -> list[int]:
        """Up to ``n`` buffer slots for a shared-memory client: this receiver's reserved ones
        first, then from the buffer (evicting, under the reservoir policy, as arrivals would)."""
        taken = self.reserved[-n:]
        del self.reserved[len(self.reserved) - len(taken) :]
        if len(taken) < n:
            taken += self.buffer.reserve(n - len(taken), evict=True)
        return taken

    def spend(self, active: Running, header: protocol.Header, count: int, spending: str) -> None:
        """Check that ``count`` samples from ``header.index`` fit the client's credit
        (``spending`` words the shortfall) and come in order; then spend the credit."""
        if active.credits < count:
            raise ProtocolError(
                f"{count} samples {spending.format(active.credits)} (the client must wait for CREDIT messages)"
            )
        if header.index > active.accepted:
            raise ProtocolError(f"sample {header.index} arrived after sample {active.accepted - 1}: samples missing")
        active.credits -= count
        active.progress_at = time.monotonic()

    def granted_slots(self, active: Running, count: int, skip: int) -> list[int]:
        """A shared-memory client's next ``count`` granted slots, in order; those of the first
        ``skip`` samples (received already) go back to the buffer, the rest are returned."""
        taken = [active.slots.popleft() for _ in range(count)]  # type: ignore[union-attr]
        if skip:
            self.buffer.release(taken[:skip])
        return taken[skip:]

    def next_slot(self, active: Running) -> int | None:
        """The buffer slot to read a socket sample into: a shared-memory client's next granted
        slot, else one of this receiver's reserved ones; None when samples are kept by reference."""
        if active.slots is not None:
            return active.slots.popleft()  # granted with its credit, which the caller checked
        if self.buffer.writes_in_place and not self.reserved:
            self.reserved = self.buffer.reserve(256)
        return self.reserved.pop() if self.reserved else None

    def return_slot(self, active: Running, slot: int) -> None:
        if active.slots is not None:
            active.slots.appendleft(slot)
        else:
            self.reserved.append(slot)

    def reserved_slots(self, n: int) -> list[int]:
        """Up to ``n`` reserved slots to copy samples into (more are reserved when needed)."""
        if len(self.reserved) < n:
            self.reserved += self.buffer.reserve(max(256, n) - len(self.reserved))
        written = min(n, len(self.reserved))
        slots = self.reserved[len(self.reserved) - written :]
        del self.reserved[len(self.reserved) - written :]
        return slots

    def release(self, active: Running) -> None:
        """Give the buffer back the slots a simulation was granted and will not fill."""
        if active.slots:
            self.buffer.release(list(active.slots))
            active.slots.clear()
            active.credits = 0

    def release_reserved(self) -> None:
        """Give the buffer back this receiver's reserved slots (the run ends)."""
        self.buffer.release(self.reserved)
        self.reserved = []
