"""The training buffer between simulation clients and the training loop.

Samples enter with :meth:`TrainingBuffer.put` (the receiver thread) and leave as batches with
:meth:`TrainingBuffer.get_batch` (the training loop). A read policy (:mod:`.policies`: ``fifo``,
``firo``, ``reservoir``, or a :class:`~.policies.ReadPolicy` of one's own) decides which samples a
batch holds and when a sample leaves; a storage (:mod:`.storage`) holds the samples.

No policy drops a sample that was never read: when no slot can be freed, :meth:`credit` is zero
and the receiver stops granting credit, so simulations wait (backpressure). Training starts once
``watermark`` samples have arrived, and with ``rate_limit`` a sample is read on average at most
that many times (the trainer waits for new samples beyond it).

Storage. Samples smaller than ``zero_copy_bytes`` are copied into one preallocated block (cheap,
and a batch is one gather from it). Larger samples that the caller hands over for good
(``owned=True``, as the receiver does with the memory of the network frame they arrived in) are
kept by reference: the batch's gather is then the only copy between socket and training step,
which matters at megabytes per sample where each copy costs as much as the transport. Given
``storage`` (:meth:`prepare`), e.g. shared memory that simulations on this host write their
samples into, the block lives there, whatever the samples' size.

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

from engage.core.online.policies import POLICIES, ReadPolicy, read_policy
from engage.core.online.slots import SlotTable
from engage.core.online.storage import BlockStorage, SampleStorage, storage_for

__all__ = ["POLICIES", "ZERO_COPY_BYTES", "BufferClosed", "TrainingBuffer"]

#: samples of at least this many bytes, handed over for good, are kept by reference (by default)
ZERO_COPY_BYTES = 256 * 1024


class BufferClosed(RuntimeError):
    """The stream feeding the buffer ended with an error; the message says which."""


class TrainingBuffer:
    """A fixed-capacity, thread-safe store of samples with a read policy (see the module doc).

    It decides when a reader waits and which samples a batch takes; its collaborators keep the
    slots' books (:class:`~.slots.SlotTable`), choose a batch's samples
    (:class:`~.policies.ReadPolicy`) and hold the samples (:class:`~.storage.SampleStorage`).
    """

    def __init__(
        self,
        capacity: int = 4096,
        policy: str | ReadPolicy = "firo",
        watermark: int = 0,
        max_reads: int | None = None,
        rate_limit: float | None = None,
        seed: int = 0,
        zero_copy_bytes: int = ZERO_COPY_BYTES,
    ):
        self.read_policy = read_policy(policy)
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        if not 0 <= watermark <= capacity:
            raise ValueError(f"buffer watermark must be between 0 and the capacity ({capacity}), got {watermark}")
        if max_reads is not None and max_reads < 1:
            raise ValueError(f"buffer max_reads must be >= 1 or None, got {max_reads}")
        if rate_limit is not None and rate_limit <= 0:
            raise ValueError(f"buffer rate_limit must be > 0 or None, got {rate_limit}")
        if zero_copy_bytes < 0:
            raise ValueError(f"buffer zero_copy_bytes must be >= 0, got {zero_copy_bytes}")
        self.capacity = int(capacity)
        self.watermark = int(watermark)
        self.max_reads = max_reads if max_reads is not None else self.read_policy.default_max_reads
        self.rate_limit = rate_limit
        self.zero_copy_bytes = int(zero_copy_bytes)
        self.rng = np.random.default_rng(seed)
        self._cond = threading.Condition()
        # one batch at a time: its gather runs outside ``_cond``, so the receiver can go on
        # filling other slots meanwhile, and no second reader may free a slot it still reads
        self._gather = threading.Lock()
        self._shape: tuple[int, ...] | None = None
        self._dtype: np.dtype | None = None
        self._store: SampleStorage | None = None  # allocated for the first sample's shape
        self.slots = SlotTable(self.capacity)
        self.reads = 0
        self.wait_seconds = 0.0
        self._opened = self.watermark == 0
        self._closed = False
        self._error: str | None = None
        self._waiting_for: int | None = None  # the batch size a reader waits for

    # ------------------------------------------------------------------ producer side
    def __len__(self) -> int:
        return len(self.slots)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def policy(self) -> str:
        """The read policy's name (``fifo``, ``firo``, ``reservoir``)."""
        return self.read_policy.name

    @property
    def inserted(self) -> int:
        """Samples that entered the buffer so far."""
        return self.slots.inserted

    @property
    def evicted(self) -> int:
        """Read samples that left to make room for new ones."""
        return self.slots.evicted

    def unread(self) -> int:
        """Samples held that no batch has read yet."""
        with self._cond:
            return self.slots.unread()

    def credit(self) -> int:
        """How many more samples :meth:`put` accepts now without dropping an unread one (slots
        handed out by :meth:`reserve` and not yet committed count as taken)."""
        with self._cond:
            return self.slots.credit(self.read_policy.evicts)

    def put(
        self,
        sample: np.ndarray,
        *,
        parameters: np.ndarray,
        simulation_id: int,
        time: float,
        owned: bool = False,
    ) -> None:
        """Store one sample: a copy, or with ``owned`` (the caller never writes ``sample`` again)
        a reference when it is at least ``zero_copy_bytes`` large.

        Raises ``OverflowError`` when no slot is free: the receiver grants credit with
        :meth:`credit`, so this means a producer sent without credit.
        """
        with self._cond:
            self._put_locked(sample, parameters, simulation_id, time, owned)
            self._wake_reader()

    def put_many(self, samples: list[tuple[np.ndarray, np.ndarray, int, float]], owned: bool = False) -> None:
        """:meth:`put` of several ``(sample, parameters, simulation_id, time)`` under one lock and
        one wake-up of the readers (the receiver drains its socket in batches)."""
        if not samples:
            return
        with self._cond:
            for sample, parameters, simulation_id, time_ in samples:
                self._put_locked(sample, parameters, simulation_id, time_, owned)
            self._wake_reader()

    def prepare(self, shape: tuple[int, ...], dtype: np.dtype | str, parameters: int, storage: Any = None) -> None:
        """Allocate the storage for samples of ``shape`` and ``dtype`` with ``parameters`` values
        each (the first :meth:`put` does it otherwise); needed before :meth:`reserve`.

        ``storage`` (a writable buffer of at least ``capacity`` samples, e.g. shared memory) holds
        the block of samples instead of memory of this process, for samples of any size; samples
        already held move into it."""
        with self._cond:
            if self._shape is None:
                self._allocate(tuple(shape), np.dtype(dtype), parameters, storage)
            elif tuple(shape) != self._shape or np.dtype(dtype) != self._dtype:
                raise ValueError(f"the buffer holds {self._shape} {self._dtype} samples, not {tuple(shape)} {dtype}")
            elif storage is not None:
                if self.slots.reserved or self.slots.leaving:
                    raise RuntimeError("the buffer's storage cannot move while slots are reserved or read")
                block = BlockStorage(self.capacity, self._shape, self._dtype, storage)
                block.copy_from(self._store, self.slots.occupied.view())  # type: ignore[arg-type]
                self._store = block

    @property
    def writes_in_place(self) -> bool:
        """Whether samples are copied into a block (so :meth:`reserve` hands out slots to write
        into) rather than kept by reference."""
        return self._store is not None and self._store.writes_in_place

    def reserve(self, n: int, evict: bool = False) -> list[int]:
        """Up to ``n`` free slots for the caller to write samples into (:meth:`slot`) and then
        :meth:`commit`, or give back with :meth:`release`. Under the reservoir policy a full
        buffer reserves nothing (:meth:`put` evicts as usual) unless ``evict``: then samples read
        at least once leave to make room, as :meth:`put` would evict them.

        The receiver reads network frames straight into these slots, which saves a copy and an
        allocation per sample; a simulation on this host writes into them itself (shared memory).
        """
        with self._cond:
            if not self.writes_in_place:
                raise RuntimeError("reserve() needs in-place storage: prepare() samples smaller than zero_copy_bytes")
            return self.slots.reserve(n, self.rng, evict and self.read_policy.evicts)

    def slot(self, slot: int) -> np.ndarray:
        """The writable storage of a reserved slot."""
        return self._store.slot(slot)  # type: ignore[union-attr]

    def write(self, slots: list[int], samples: np.ndarray) -> None:
        """Copy ``samples`` (one per slot, stacked) into reserved ``slots`` in one step."""
        if len(slots) != len(samples):
            raise ValueError(f"write() got {len(samples)} samples for {len(slots)} slots")
        self._store.write(slots, samples)  # type: ignore[union-attr]

    def commit(self, entries: list[tuple[int, np.ndarray, int, float]]) -> None:
        """Make reserved slots, written by the caller, samples: ``(slot, parameters,
        simulation_id, time)`` each, under one lock and one wake-up of the readers."""
        if not entries:
            return
        slots, parameters, simulation_ids, times = zip(*entries)
        self.commit_arrays(
            np.asarray(slots, dtype=np.int64), np.asarray(parameters, dtype=np.float32),
            np.asarray(simulation_ids, dtype=np.int64), np.asarray(times, dtype=np.float64),
        )  # fmt: skip

    def commit_arrays(
        self, slots: np.ndarray, parameters: np.ndarray, simulation_ids: np.ndarray, times: np.ndarray
    ) -> None:
        """:meth:`commit` for samples given field by field, one row each: the receiver's form,
        with no Python object per sample."""
        index = np.asarray(slots, dtype=np.int64)
        if not len(index):
            return
        # everything is checked before anything changes, so a bad entry loses no reserved slot
        values = np.asarray(parameters, dtype=np.float32)
        self.slots.check_commit(index, values, simulation_ids, times)
        with self._cond:
            self.slots.record_reserved(index, values, simulation_ids, times)
            self._open_at_watermark()
            self._wake_reader()

    def release(self, slots: list[int]) -> None:
        """Give back reserved slots that were not written."""
        with self._cond:
            self.slots.release(slots)

    def _allocate(self, shape: tuple[int, ...], dtype: np.dtype, parameters: int, storage: Any = None) -> None:
        self._shape, self._dtype = tuple(shape), np.dtype(dtype)
        self._store = storage_for(self.capacity, self._shape, self._dtype, self.zero_copy_bytes, storage)
        self.slots.allocate(parameters)

    def _put_locked(
        self, sample: np.ndarray, parameters: np.ndarray, simulation_id: int, time: float, owned: bool
    ) -> int:
        if self._shape is None:
            self._allocate(sample.shape, sample.dtype, len(parameters))
        elif sample.shape != self._shape or sample.dtype != self._dtype:
            raise ValueError(
                f"sample of shape {sample.shape} and dtype {sample.dtype} does not match the buffer's "
                f"{self._shape} {self._dtype}"
            )
        slot = self.slots.take_slot(self.rng, self.read_policy.evicts)
        self._store.put(slot, sample, owned)  # type: ignore[union-attr]
        self.slots.record(slot, parameters, simulation_id, time)
        self._open_at_watermark()
        return slot

    def _open_at_watermark(self) -> None:
        if not self._opened and self.slots.inserted >= self.watermark:
            self._opened = True

    def _wake_reader(self) -> None:
        # only once its batch can be served: waking a reader for every few samples that arrive
        # hands the interpreter lock back and forth between it and the receiver for nothing
        # (a sixth of the receiver's time at 256 KiB samples)
        if self._waiting_for is not None and self._ready(self._waiting_for):
            self._cond.notify_all()

    def close(self, error: str | None = None) -> None:
        """No more samples will come: readers drain what is left, then the stream ends; with
        ``error``, readers raise :class:`BufferClosed` at once, whatever is left."""
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
        if len(self.slots) == 0:
            return False
        if self._closed:
            return True
        if not self._opened:
            return False
        if len(self._candidates()) < min(n, self.capacity):
            return False
        return self.rate_limit is None or self.reads < self.rate_limit * self.inserted

    def _candidates(self) -> np.ndarray:
        """The occupied slots a batch may take now (all of them once the stream has ended)."""
        occupied = self.slots.occupied.view()
        if not self.read_policy.ordered or self._closed:
            return occupied
        return self.read_policy.servable(occupied, self.slots.simulation[occupied])

    def simulation_started(self, simulation_id: int) -> None:
        """Tell the read policy a simulation was launched (an ordered policy waits for its samples)."""
        with self._cond:
            self.read_policy.simulation_started(simulation_id)

    def simulation_ended(self, simulation_id: int) -> None:
        """Tell the read policy a simulation sent its last sample or was given up."""
        with self._cond:
            self.read_policy.simulation_ended(simulation_id)
            self._cond.notify_all()

    def get_batch(
        self, n: int, timeout: float | None = None, out: np.ndarray | None = None, target: bool = True
    ) -> dict[str, np.ndarray] | None:
        """``n`` samples as arrays ``target``, ``parameters``, ``time``, ``simulation_id``.

        Blocks until the policy can serve them; returns a smaller batch when the stream has ended
        with fewer left, ``None`` when it has ended and nothing is left, and raises
        ``TimeoutError`` after ``timeout`` seconds. With ``out`` (an array of at least ``n``
        samples, e.g. pinned host memory reused every step) the samples are gathered into it and
        ``target`` is a view of its first rows, which saves allocating (and page-faulting) a
        new batch each time. With ``target=False`` the batch comes without its samples: they
        count as read and leave as the policy says, and nothing is copied (to see which
        simulations batches draw, or to time the transport without the batch's copy).
        """
        if out is not None and self._shape is not None and (out.shape[1:] != self._shape or out.dtype != self._dtype):
            raise ValueError(
                f"get_batch(out=...) has shape {out.shape} {out.dtype}; "
                f"it must be (>= {n}, *{self._shape}) {self._dtype}"
            )
        if out is not None and len(out) < n:
            raise ValueError(f"get_batch(out=...) holds {len(out)} samples, fewer than the {n} asked for")
        with self._gather:
            return self._get_batch(n, timeout, out, target)

    def _get_batch(
        self, n: int, timeout: float | None, out: np.ndarray | None, target: bool
    ) -> dict[str, np.ndarray] | None:
        started = time.perf_counter()
        deadline = None if timeout is None else started + timeout
        with self._cond:
            while self._error is not None or not self._ready(n):
                if self._error is not None:
                    # the stream failed: what is left is not what the run asked for, so no batch
                    # of it is served (a run must never end as if it had trained on everything)
                    raise BufferClosed(self._error)
                if self._closed and len(self.slots) == 0:
                    self.wait_seconds += time.perf_counter() - started
                    return None
                left = None if deadline is None else deadline - time.perf_counter()
                if left is not None and left <= 0:
                    self.wait_seconds += time.perf_counter() - started
                    raise TimeoutError(f"no batch of {n} samples within {timeout:.1f}s ({len(self)} buffered)")
                self._waiting_for = n
                self._cond.wait(0.5 if left is None else min(left, 0.5))
                self._waiting_for = None
            self.wait_seconds += time.perf_counter() - started
            slots = self._choose(n)
            batch = self.slots.columns(slots)
            # the gather happens outside the lock, so the receiver is not held up by it (at 4 MiB
            # a batch of 16 is 64 MiB to copy): samples kept by reference are taken as arrays,
            # whose slots may be refilled at once; slots of the block stay out of reach until then
            store = self._store
            by_reference = store.frees_on_read  # type: ignore[union-attr]
            taken = store.take(slots) if target else None  # type: ignore[union-attr]
            self.reads += len(slots)
            done, unspent = self.slots.read(slots, self.max_reads)
            evicts = self.read_policy.evicts
            if by_reference or not target:
                # nothing left to read in these slots: they may be refilled at once
                self.slots.free_read(done, unspent, evicts)
                store.clear(done.tolist())  # type: ignore[union-attr]
            else:
                self.slots.hold_read(done, unspent, evicts)  # not refilled nor evicted while gathered
        if not target:
            return batch
        gathered = store.gather(taken, slots, out)  # type: ignore[union-attr]
        if not by_reference:
            with self._cond:
                self.slots.free_held(done, unspent, evicts)
        return {"target": gathered, **batch}

    def _choose(self, n: int) -> np.ndarray:
        candidates = self._candidates()
        n = min(n, len(candidates))
        arrival = self.slots.arrival[candidates]
        if self.read_policy.ordered:
            return self.read_policy.choose(
                candidates, arrival, n, self.rng, simulation=self.slots.simulation[candidates]
            )
        return self.read_policy.choose(candidates, arrival, n, self.rng)

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Contents, counters and random state (tensors and plain data, for Lightning checkpoints)."""
        with self._cond:
            slots = self.slots.occupied.view().copy()
            state: dict[str, Any] = {
                "policy": self.policy,
                "capacity": self.capacity,
                "reads": self.reads,
                "opened": self._opened,
                "rng": self.rng.bit_generator.state,
                **self.slots.state_dict(slots),
            }
            if self._shape is not None:
                if len(slots):
                    data = self._store.copy_out(slots)  # type: ignore[union-attr]
                else:
                    data = np.empty((0, *self._shape), dtype=self._dtype)
                state["data"] = torch.from_numpy(np.ascontiguousarray(data))
            return state

    def check_loadable(self, state: dict[str, Any]) -> None:
        """Raise ``ValueError`` (one line naming the setting) when :meth:`load_state_dict` could
        not restore ``state``: another policy, or more samples than this capacity."""
        if state["policy"] != self.policy:
            raise ValueError(
                f"data.policy: the checkpoint's buffer is of policy {state['policy']!r}, this run's of "
                f"{self.policy!r}; resume with data.policy={state['policy']} or start a new run"
            )
        count = len(state["slots"])
        if count > self.capacity:
            raise ValueError(
                f"data.capacity: the checkpoint's buffer holds {count} samples, this run's holds {self.capacity}; "
                f"resume with data.capacity={count} or more"
            )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` of a buffer with the same policy and at most this capacity."""
        self.check_loadable(state)
        count = len(state["slots"])
        if self.slots.reserved:
            raise RuntimeError("the buffer state must be loaded before samples stream in (slots are reserved)")
        with self._cond:
            self.__init__(  # type: ignore[misc]
                self.capacity, self.read_policy, self.watermark, self.max_reads, self.rate_limit,
                zero_copy_bytes=self.zero_copy_bytes,
            )  # fmt: skip
            self.reads = state["reads"]
            self._opened = bool(state["opened"]) or self.watermark == 0
            self.rng.bit_generator.state = state["rng"]
            if count and "data" in state:
                data = state["data"].numpy()
                self._allocate(data.shape[1:], data.dtype, state["parameters"].shape[1])
                self._store.load(data)  # type: ignore[union-attr]
            self.slots.load_state_dict(state, self.read_policy.evicts)

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
