"""The slots of a training buffer: which hold samples, which are free, reserved or being read,
and each sample's metadata (parameters, time, simulation id, reads, arrival order).

A :class:`SlotTable` keeps the books and nothing else: the buffer (:mod:`.buffer`) calls it
under its own lock, decides when readers wait and which samples a batch takes, and keeps the
samples themselves in a storage (:mod:`.storage`).

Example::

    >>> import numpy as np
    >>> table = SlotTable(capacity=3)
    >>> table.allocate(parameters=1)
    >>> slot = table.take_slot(np.random.default_rng(0), evicts=False)
    >>> table.record(slot, np.zeros(1), simulation_id=7, time=0.5)
    >>> len(table), table.credit(evicts=False), table.simulation[slot]
    (1, 2, np.int64(7))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class IndexSet:
    """A set of slot indices with O(1) insert, remove and uniform random choice, and vectorized
    bulk insert and remove (a batch's slots leave together)."""

    def __init__(self, capacity: int):
        self.items = np.empty(capacity, dtype=np.int64)
        self.pos = np.full(capacity, -1, dtype=np.int64)
        self.n = 0

    def add(self, slot: int) -> None:
        if self.pos[slot] < 0:
            self.items[self.n] = slot
            self.pos[slot] = self.n
            self.n += 1

    def add_many(self, slots: np.ndarray) -> None:
        """Add distinct ``slots``; those already in the set stay where they are."""
        new = slots[self.pos[slots] < 0]
        end = self.n + len(new)
        self.items[self.n : end] = new
        self.pos[new] = np.arange(self.n, end)
        self.n = end

    def remove(self, slot: int) -> None:
        i = self.pos[slot]
        if i < 0:
            return
        last = self.items[self.n - 1]
        self.items[i] = last
        self.pos[last] = i
        self.pos[slot] = -1
        self.n -= 1

    def remove_many(self, slots: np.ndarray) -> None:
        """Remove distinct ``slots`` (those not in the set are ignored) in time proportional to
        their number: the set's last entries move into the holes they leave."""
        slots = slots[self.pos[slots] >= 0]
        if len(slots) == 0:
            return
        end = self.n - len(slots)
        holes = self.pos[slots]
        holes = np.sort(holes[holes < end])
        self.pos[slots] = -1
        tail = self.items[end : self.n]
        movers = tail[self.pos[tail] >= 0]  # as many as there are holes below the new end
        self.items[holes] = movers
        self.pos[movers] = holes
        self.n = end

    def __contains__(self, slot: int) -> bool:
        return self.pos[slot] >= 0

    def view(self) -> np.ndarray:
        return self.items[: self.n]


class SlotTable:
    """The books of ``capacity`` slots (see the module doc). Not thread-safe.

    A slot is *free*, *reserved* (handed out to be written, :meth:`reserve`), *occupied* (a
    sample, :meth:`record`), or *leaving* (read for the last time, its batch still being
    gathered). Under a policy that evicts, occupied samples read at least once are *evictable*
    (``read_once``) and make room for new ones.
    """

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.parameters: np.ndarray | None = None  # (capacity, parameters) once allocated
        self.time = np.zeros(self.capacity, dtype=np.float32)
        self.simulation = np.zeros(self.capacity, dtype=np.int64)
        self.reads = np.zeros(self.capacity, dtype=np.int64)
        self.arrival = np.zeros(self.capacity, dtype=np.int64)
        self.occupied = IndexSet(self.capacity)
        self.read_once = IndexSet(self.capacity)
        self.free = list(range(self.capacity - 1, -1, -1))
        self.reserved = 0
        self.leaving = 0
        #: samples recorded so far (the arrival number of the next one)
        self.inserted = 0
        #: read samples that left to make room for new ones
        self.evicted = 0

    def __len__(self) -> int:
        return self.occupied.n

    def unread(self) -> int:
        """Samples held that no batch has read yet."""
        return int(np.count_nonzero(self.reads[self.occupied.view()] == 0))

    def allocate(self, parameters: int) -> None:
        """Room for ``parameters`` values per sample."""
        self.parameters = np.empty((self.capacity, int(parameters)), dtype=np.float32)

    def credit(self, evicts: bool) -> int:
        """Slots a new sample may take without dropping an unread one."""
        free = self.capacity - self.occupied.n - self.reserved - self.leaving
        return free + self.read_once.n if evicts else free

    # ------------------------------------------------------------------ taking slots
    def take_slot(self, rng: np.random.Generator, evicts: bool) -> int:
        """A slot for one new sample: a free one, else (``evicts``) an evictable sample's."""
        if self.free:
            return self.free.pop()
        if evicts and self.read_once.n:
            slot = int(self.read_once.view()[rng.integers(self.read_once.n)])
            self.read_once.remove(slot)
            self.evicted += 1
            return slot
        raise OverflowError(f"the training buffer is full ({self.capacity} samples) and may not evict")

    def reserve(self, n: int, rng: np.random.Generator, evict: bool) -> list[int]:
        """Up to ``n`` slots to write samples into: free ones, then (``evict``) evictable ones."""
        count = min(n, len(self.free))
        slots = [self.free.pop() for _ in range(count)]
        if evict and count < n and self.read_once.n:
            chosen = rng.choice(self.read_once.n, size=min(n - count, self.read_once.n), replace=False)
            evicted = self.read_once.view()[chosen].copy()
            self.read_once.remove_many(evicted)
            self.occupied.remove_many(evicted)
            self.evicted += len(evicted)
            slots += evicted.tolist()
        self.reserved += len(slots)
        return slots

    def release(self, slots: list[int]) -> None:
        """Reserved slots given back unwritten."""
        self.free.extend(slots)
        self.reserved -= len(slots)

    # ------------------------------------------------------------------ recording samples
    def record(self, slot: int, parameters: np.ndarray, simulation_id: int, time: float) -> None:
        """A sample now in ``slot`` (taken with :meth:`take_slot`)."""
        self.parameters[slot] = parameters  # type: ignore[index]
        self.time[slot] = time
        self.simulation[slot] = simulation_id
        self.reads[slot] = 0
        self.arrival[slot] = self.inserted
        self.occupied.add(slot)
        self.inserted += 1

    def check_commit(self, index: np.ndarray, parameters: np.ndarray, simulation_ids: Any, times: Any) -> None:
        """Refuse a commit that would corrupt the books, before anything changes."""
        if not len(index) == len(parameters) == len(simulation_ids) == len(times):
            raise ValueError(
                f"commit got {len(index)} slots, {len(parameters)} parameter rows, {len(simulation_ids)} simulation "
                f"ids and {len(times)} times: one of each per sample"
            )
        if len(np.unique(index)) != len(index):
            raise ValueError(
                f"commit() got slots {sorted(index.tolist())}, with repeats: each reserved slot is committed once"
            )
        held = None if self.parameters is None else self.parameters.shape[1:]
        if parameters.shape[1:] != held or parameters.ndim != 2:
            raise ValueError(f"commit() got parameters of shape {parameters.shape[1:]}; the buffer holds {held}")

    def record_reserved(self, index: np.ndarray, parameters: np.ndarray, simulation_ids: Any, times: Any) -> None:
        """Samples written into reserved slots ``index``, one vectorized write per field
        (per-sample numpy scalar writes cost more than the sample); checked by :meth:`check_commit`."""
        self.parameters[index] = parameters  # type: ignore[index]
        self.time[index] = times
        self.simulation[index] = simulation_ids
        self.reads[index] = 0
        self.arrival[index] = np.arange(self.inserted, self.inserted + len(index))
        self.occupied.add_many(index)
        self.reserved -= len(index)
        self.inserted += len(index)

    # ------------------------------------------------------------------ reading samples
    def columns(self, slots: np.ndarray) -> dict[str, np.ndarray]:
        """A batch's metadata: ``parameters``, ``time`` (a column) and ``simulation_id``."""
        return {
            "parameters": self.parameters[slots],  # type: ignore[index]
            "time": self.time[slots, None],
            "simulation_id": self.simulation[slots],
        }

    def read(self, slots: np.ndarray, max_reads: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Count one read of ``slots``; those read ``max_reads`` times leave. Returns
        ``(done, unspent)``: the slots read for the last time and the others."""
        self.reads[slots] += 1
        if max_reads is None:
            return slots[:0], slots
        spent = self.reads[slots] >= max_reads
        done, unspent = slots[spent], slots[~spent]
        if len(done):
            self.occupied.remove_many(done)
            self.read_once.remove_many(done)
        return done, unspent

    def free_read(self, done: np.ndarray, unspent: np.ndarray, evicts: bool) -> None:
        """Slots read from with nothing left to gather: ``done`` ones free at once, ``unspent``
        ones evictable (``evicts``)."""
        self.free.extend(done.tolist())
        if evicts:
            self.read_once.add_many(unspent)

    def hold_read(self, done: np.ndarray, unspent: np.ndarray, evicts: bool) -> None:
        """Slots whose batch is still being gathered: none may be refilled until :meth:`free_held`."""
        self.leaving += len(done)
        if evicts:
            self.read_once.remove_many(unspent)

    def free_held(self, done: np.ndarray, unspent: np.ndarray, evicts: bool) -> None:
        """The batch of :meth:`hold_read` is gathered: its slots are free or evictable again."""
        self.leaving -= len(done)
        self.free_read(done, unspent, evicts)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self, slots: np.ndarray) -> dict[str, Any]:
        """The metadata of ``slots`` (the occupied ones) and the counters, as tensors and numbers."""
        state: dict[str, Any] = {
            "inserted": self.inserted,
            "evicted": self.evicted,
            "slots": torch.from_numpy(slots),
            "time": torch.from_numpy(self.time[slots].copy()),
            "simulation_id": torch.from_numpy(self.simulation[slots].copy()),
            "read_counts": torch.from_numpy(self.reads[slots].copy()),
            "arrival": torch.from_numpy(self.arrival[slots].copy()),
        }
        if self.parameters is not None:
            state["parameters"] = torch.from_numpy(self.parameters[slots].copy())
        return state

    def load_state_dict(self, state: dict[str, Any], evicts: bool) -> None:
        """Restore :meth:`state_dict` into a fresh table: the samples take the first slots."""
        self.inserted, self.evicted = int(state["inserted"]), int(state["evicted"])
        count = len(state["slots"])
        if not count or "parameters" not in state:
            return
        parameters = state["parameters"].numpy()
        if self.parameters is None or self.parameters.shape[1] != parameters.shape[1]:
            self.allocate(parameters.shape[1])  # the buffer allocates it with its storage
        self.free = list(range(self.capacity - 1, count - 1, -1))
        self.parameters[:count] = parameters  # type: ignore[index]
        self.time[:count] = state["time"].numpy()
        self.simulation[:count] = state["simulation_id"].numpy()
        self.reads[:count] = state["read_counts"].numpy()
        self.arrival[:count] = state["arrival"].numpy()
        self.occupied.add_many(np.arange(count))
        if evicts:
            self.read_once.add_many(np.flatnonzero(self.reads[:count] > 0))
