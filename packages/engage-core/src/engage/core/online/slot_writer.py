"""A simulation's side of the trainer's shared memory: the segment it maps, the slots the trainer
granted it, and the samples it wrote there and has not announced yet.

The :class:`~.client.SimulationClient` decides when to write and when to announce (its credit,
its coalescing); a :class:`SlotWriter` keeps the mapping and the slots' books.

Example::

    >>> import numpy as np
    >>> writer = SlotWriter()
    >>> writer.active, writer.map(None), writer.active  # no segment granted: samples take the socket
    (False, None, False)
"""

from __future__ import annotations

import mmap
from collections import deque
from typing import Any

import numpy as np

from engage.core.online.shared_memory import attach


class SlotWriter:
    """The slots of the trainer's segment this simulation writes samples into (see the module doc)."""

    def __init__(self) -> None:
        self.ring: mmap.mmap | None = None
        #: the size of one slot (0: no segment mapped, samples go over the socket)
        self.slot_bytes = 0
        self.count = 0  # slots in the segment
        #: slots granted with credit, in the order they are filled
        self.free: deque[int] = deque()
        #: samples written and not yet announced, and when the first of them was
        self.written = 0
        self.first_written_at = 0.0
        #: the segment as an array of slots shaped like the samples (one copy a sample)
        self.view: np.ndarray | None = None
        self.shape: tuple[int, ...] = ()
        self.dtype: np.dtype | None = None

    @property
    def active(self) -> bool:
        """Whether a segment is mapped: samples of a slot's size go into it."""
        return bool(self.slot_bytes)

    def map(self, granted: dict[str, Any] | None) -> None:
        """Map the segment the trainer granted (its ``name``, ``slot_bytes`` and ``slots``), if
        it is on this host; else nothing is mapped and samples go over the socket (into the
        slots granted all the same)."""
        self.unmap()
        if not granted:
            return
        try:
            slot_bytes, slots = int(granted["slot_bytes"]), int(granted["slots"])
            self.ring = attach(str(granted["name"]), slot_bytes * slots)
        except (OSError, ValueError, KeyError, TypeError):
            return  # not the trainer's host (or no such segment): the socket it is
        self.slot_bytes, self.count = slot_bytes, slots

    def unmap(self) -> None:
        self.view = None  # views of the segment must go before it can be unmapped
        self.shape, self.dtype = (), None
        self.slot_bytes = 0
        if self.ring is not None:
            try:
                self.ring.close()
            except BufferError:
                pass  # a caller still holds a view: the mapping goes with it
            self.ring = None

    def grant(self, slots: np.ndarray) -> None:
        """Slots the trainer granted with its credit."""
        self.free.extend(slots.tolist())

    def fits(self, array: np.ndarray) -> bool:
        """Whether ``array`` has the shape and dtype the slots are viewed as now."""
        return self.view is not None and self.view.shape[1:] == array.shape and self.view.dtype == array.dtype

    def write(self, array: np.ndarray, now: float) -> None:
        """Copy ``array`` (a slot's size) into the next granted slot; ``now`` is the time of the
        call. The caller announces what it wrote before the samples change shape."""
        if not self.written:
            self.first_written_at = now
            if not self.fits(array):
                self.view = np.ndarray(
                    (self.count, *array.shape), array.dtype, buffer=self.ring, strides=(self.slot_bytes, *array.strides)
                )
                self.shape, self.dtype = array.shape, array.dtype
        self.view[self.free.popleft()] = array  # type: ignore[index]
        self.written += 1

    def skip(self) -> None:
        """Spend the next slot on a sample sent over the socket (as every sample spends one)."""
        self.free.popleft()

    def take_written(self) -> int:
        """How many samples were written since the last call (to announce them)."""
        count, self.written = self.written, 0
        return count
