"""The training buffer between simulation clients and the training loop.

Samples enter with :meth:`TrainingBuffer.put` (the receiver thread) and leave as batches with
:meth:`TrainingBuffer.get_batch` (the training loop). Three policies decide which samples a batch
holds and when a sample leaves:

``fifo``
    first in, first out; each sample is read ``max_reads`` times (default once), oldest first.
``firo``
    first in, random out: a batch is drawn uniformly from the buffer, so consecutive time steps
    of one simulation are spread over many batches; a sample leaves after ``max_reads`` reads.
``reservoir``
    samples stay and are drawn again and again (up to ``max_reads`` if set); when the buffer is
    full a new sample evicts a random sample that has already been read at least once.

No policy drops a sample that was never read: when no slot can be freed, :meth:`credit` is zero
and the receiver stops granting credit, so simulations wait (backpressure). Training starts once
``watermark`` samples have arrived, and with ``rate_limit`` a sample is read on average at most
that many times (the trainer waits for new samples beyond it).

Example::

    >>> import numpy as np
    >>> buffer = TrainingBuffer(capacity=4, policy="fifo")
    >>> for step in range(3):
    ...     buffer.put(np.full((2, 2), step, "float32"), parameters=np.zeros(1), simulation_id=0, time=step / 3)
    >>> batch = buffer.get_batch(2)
    >>> batch["target"][:, 0, 0].tolist(), len(buffer)
    ([0.0, 1.0], 1)
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import torch

POLICIES = ("fifo", "firo", "reservoir")


class BufferClosed(RuntimeError):
    """The stream feeding the buffer ended with an error; the message says which."""


class _IndexSet:
    """A set of slot indices with O(1) insert, remove and uniform random choice."""

    def __init__(self, capacity: int):
        self.items = np.empty(capacity, dtype=np.int64)
        self.pos = np.full(capacity, -1, dtype=np.int64)
        self.n = 0

    def add(self, slot: int) -> None:
        if self.pos[slot] < 0:
            self.items[self.n] = slot
            self.pos[slot] = self.n
            self.n += 1

    def remove(self, slot: int) -> None:
        i = self.pos[slot]
        if i < 0:
            return
        last = self.items[self.n - 1]
        self.items[i] = last
        self.pos[last] = i
        self.pos[slot] = -1
        self.n -= 1

    def __contains__(self, slot: int) -> bool:
        return self.pos[slot] >= 0

    def view(self) -> np.ndarray:
        return self.items[: self.n]


class TrainingBuffer:
    """A fixed-capacity, thread-safe store of samples with a read policy (see the module doc)."""

    def __init__(
        self,
        capacity: int = 4096,
        policy: str = "firo",
        watermark: int = 0,
        max_reads: int | None = None,
        rate_limit: float | None = None,
        seed: int = 0,
    ):
        if policy not in POLICIES:
            raise ValueError(f"buffer policy {policy!r} is unknown; use one of {', '.join(POLICIES)}")
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        if not 0 <= watermark <= capacity:
            raise ValueError(f"buffer watermark must be between 0 and the capacity ({capacity}), got {watermark}")
        if max_reads is not None and max_reads < 1:
            raise ValueError(f"buffer max_reads must be >= 1 or None, got {max_reads}")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError(f"buffer rate_limit must be > 0 or None, got {rate_limit}")
        self.capacity = int(capacity)
        self.policy = policy
        self.watermark = int(watermark)
        self.max_reads = max_reads if max_reads is not None else (None if policy == "reservoir" else 1)
        self.rate_limit = rate_limit
        self.rng = np.random.default_rng(seed)
        self._cond = threading.Condition()
        self._data: np.ndarray | None = None
        self._params: np.ndarray | None = None
        self._time = np.zeros(self.capacity, dtype=np.float32)
        self._sim = np.zeros(self.capacity, dtype=np.int64)
        self._reads = np.zeros(self.capacity, dtype=np.int64)
        self._arrival = np.zeros(self.capacity, dtype=np.int64)
        self._occupied = _IndexSet(self.capacity)
        self._read_once = _IndexSet(self.capacity)  # evictable under the reservoir policy
        self._free = list(range(self.capacity - 1, -1, -1))
        self.inserted = 0
        self.reads = 0
        self.evicted = 0
        self.wait_seconds = 0.0
        self._opened = self.watermark == 0
        self._closed = False
        self._error: str | None = None

    # ------------------------------------------------------------------ producer side
    def __len__(self) -> int:
        return self._occupied.n

    @property
    def closed(self) -> bool:
        return self._closed

    def credit(self) -> int:
        """How many more samples :meth:`put` accepts now without dropping an unread one."""
        with self._cond:
            free = self.capacity - self._occupied.n
            if self.policy == "reservoir":
                free += self._read_once.n
            return free

    def put(
        self,
        sample: np.ndarray,
        *,
        parameters: np.ndarray,
        simulation_id: int,
        time: float,
    ) -> None:
        """Copy one sample in (the only copy on its way from the socket to a batch).

        Raises ``OverflowError`` when no slot is free: the receiver grants credit with
        :meth:`credit`, so this means a producer sent without credit.
        """
        with self._cond:
            self._put_locked(sample, parameters, simulation_id, time)
            self._cond.notify_all()

    def put_many(self, samples: list[tuple[np.ndarray, np.ndarray, int, float]]) -> None:
        """:meth:`put` of several ``(sample, parameters, simulation_id, time)`` under one lock and
        one wake-up of the readers (the receiver drains its socket in batches)."""
        if not samples:
            return
        with self._cond:
            for sample, parameters, simulation_id, time_ in samples:
                self._put_locked(sample, parameters, simulation_id, time_)
            self._cond.notify_all()

    def _put_locked(self, sample: np.ndarray, parameters: np.ndarray, simulation_id: int, time: float) -> None:
        if self._data is None:
            self._data = np.empty((self.capacity, *sample.shape), dtype=sample.dtype)
            self._params = np.empty((self.capacity, len(parameters)), dtype=np.float32)
        elif sample.shape != self._data.shape[1:] or sample.dtype != self._data.dtype:
            raise ValueError(
                f"sample of shape {sample.shape} and dtype {sample.dtype} does not match the buffer's "
                f"{self._data.shape[1:]} {self._data.dtype}"
            )
        if self._free:
            slot = self._free.pop()
        elif self.policy == "reservoir" and self._read_once.n:
            slot = int(self._read_once.view()[self.rng.integers(self._read_once.n)])
            self._read_once.remove(slot)
            self.evicted += 1
        else:
            raise OverflowError(f"the training buffer is full ({self.capacity} samples) and may not evict")
        self._data[slot] = sample
        self._params[slot] = parameters  # type: ignore[index]
        self._time[slot] = time
        self._sim[slot] = simulation_id
        self._reads[slot] = 0
        self._arrival[slot] = self.inserted
        self._occupied.add(slot)
        self.inserted += 1
        if not self._opened and self.inserted >= self.watermark:
            self._opened = True

    def close(self, error: str | None = None) -> None:
        """No more samples will come; readers drain what is left, then the stream ends (or, with
        ``error``, they raise :class:`BufferClosed`)."""
        with self._cond:
            self._closed = True
            self._error = error
            self._cond.notify_all()

    def reopen(self) -> None:
        """Accept samples again after :meth:`close` (a resumed run streams on)."""
        with self._cond:
            self._closed = False
            self._error = None

    # ------------------------------------------------------------------ consumer side
    def _ready(self, n: int) -> bool:
        if self._occupied.n == 0:
            return False
        if self._closed:
            return True
        if not self._opened:
            return False
        if self._occupied.n < min(n, self.capacity):
            return False
        return self.rate_limit is None or self.reads < self.rate_limit * self.inserted

    def get_batch(self, n: int, timeout: float | None = None) -> dict[str, np.ndarray] | None:
        """``n`` samples as arrays ``target``, ``parameters``, ``time``, ``simulation_id``.

        Blocks until the policy can serve them; returns a smaller batch when the stream has ended
        with fewer left, ``None`` when it has ended and nothing is left, and raises
        ``TimeoutError`` after ``timeout`` seconds.
        """
        started = time.perf_counter()
        deadline = None if timeout is None else started + timeout
        with self._cond:
            while not self._ready(n):
                if self._error is not None:
                    raise BufferClosed(self._error)
                if self._closed and self._occupied.n == 0:
                    self.wait_seconds += time.perf_counter() - started
                    return None
                left = None if deadline is None else deadline - time.perf_counter()
                if left is not None and left <= 0:
                    self.wait_seconds += time.perf_counter() - started
                    raise TimeoutError(f"no batch of {n} samples within {timeout:.1f}s ({len(self)} buffered)")
                self._cond.wait(0.5 if left is None else min(left, 0.5))
            self.wait_seconds += time.perf_counter() - started
            slots = self._choose(min(n, self._occupied.n))
            batch = {
                "target": self._data[slots],  # type: ignore[index]
                "parameters": self._params[slots],  # type: ignore[index]
                "time": self._time[slots, None],
                "simulation_id": self._sim[slots],
            }
            self._reads[slots] += 1
            self.reads += len(slots)
            for slot in slots.tolist():
                if self.max_reads is not None and self._reads[slot] >= self.max_reads:
                    self._occupied.remove(slot)
                    self._read_once.remove(slot)
                    self._free.append(slot)
                elif self.policy == "reservoir":
                    self._read_once.add(slot)
            self._cond.notify_all()
            return batch

    def _choose(self, n: int) -> np.ndarray:
        occupied = self._occupied.view()
        if self.policy == "fifo":
            return occupied[np.argsort(self._arrival[occupied], kind="stable")[:n]]
        return occupied[self.rng.choice(len(occupied), size=n, replace=False)]

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Contents, counters and random state (tensors and plain data, for Lightning checkpoints)."""
        with self._cond:
            slots = self._occupied.view().copy()
            state: dict[str, Any] = {
                "policy": self.policy,
                "capacity": self.capacity,
                "inserted": self.inserted,
                "reads": self.reads,
                "evicted": self.evicted,
                "opened": self._opened,
                "rng": self.rng.bit_generator.state,
                "slots": torch.from_numpy(slots),
                "time": torch.from_numpy(self._time[slots].copy()),
                "simulation_id": torch.from_numpy(self._sim[slots].copy()),
                "read_counts": torch.from_numpy(self._reads[slots].copy()),
                "arrival": torch.from_numpy(self._arrival[slots].copy()),
            }
            if self._data is not None:
                state["data"] = torch.from_numpy(self._data[slots].copy())
                state["parameters"] = torch.from_numpy(self._params[slots].copy())  # type: ignore[index]
            return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` of a buffer with the same policy and at most this capacity."""
        if state["policy"] != self.policy:
            raise ValueError(f"buffer state is for policy {state['policy']!r}, this buffer is {self.policy!r}")
        count = len(state["slots"])
        if count > self.capacity:
            raise ValueError(f"buffer state holds {count} samples; capacity is {self.capacity}: raise data.capacity")
        with self._cond:
            self.__init__(self.capacity, self.policy, self.watermark, self.max_reads, self.rate_limit)  # type: ignore[misc]
            self.inserted, self.reads, self.evicted = state["inserted"], state["reads"], state["evicted"]
            self._opened = bool(state["opened"]) or self.watermark == 0
            self.rng.bit_generator.state = state["rng"]
            if count and "data" in state:
                data, params = state["data"].numpy(), state["parameters"].numpy()
                self._data = np.empty((self.capacity, *data.shape[1:]), dtype=data.dtype)
                self._params = np.empty((self.capacity, params.shape[1]), dtype=np.float32)
                self._free = list(range(self.capacity - 1, count - 1, -1))
                self._data[:count], self._params[:count] = data, params
                self._time[:count] = state["time"].numpy()
                self._sim[:count] = state["simulation_id"].numpy()
                self._reads[:count] = state["read_counts"].numpy()
                self._arrival[:count] = state["arrival"].numpy()
                for slot in range(count):
                    self._occupied.add(slot)
                    if self.policy == "reservoir" and self._reads[slot] > 0:
                        self._read_once.add(slot)

    def stats(self) -> dict[str, float]:
        """Fill and counters, for progress display."""
        return {
            "size": float(len(self)),
            "fill": len(self) / self.capacity,
            "inserted": float(self.inserted),
            "reads": float(self.reads),
            "evicted": float(self.evicted),
            "wait_seconds": self.wait_seconds,
        }
