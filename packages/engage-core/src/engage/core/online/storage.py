"""Where the training buffer keeps its samples: one block it copies them into, or the arrays
handed over (kept by reference); a block may lie over memory the caller gives (shared memory
that simulations on this host write into).

Example::

    >>> import numpy as np
    >>> store = storage_for(4, (2,), np.dtype("float32"), zero_copy_bytes=1024)
    >>> store.put(1, np.ones(2, "float32"), owned=False)
    >>> store.writes_in_place, store.gather(store.take([1]), np.array([1]), None).tolist()
    (True, [[1.0, 1.0]])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class SampleStorage(ABC):
    """Slots ``0 .. capacity - 1``, one sample each."""

    #: samples are copied into slots of a block, which :meth:`slot` and :meth:`write` reach
    writes_in_place: bool = False
    #: a sample's slot may be refilled as soon as it is read: the batch holds the sample itself
    frees_on_read: bool = False

    @abstractmethod
    def put(self, slot: int, sample: np.ndarray, owned: bool) -> None:
        """Store ``sample`` in ``slot`` (``owned``: the caller never writes it again)."""

    def take(self, slots: list[int] | np.ndarray) -> Any:
        """Under the buffer's lock: what :meth:`gather` needs of ``slots`` once the lock is gone."""
        return None

    @abstractmethod
    def gather(self, taken: Any, slots: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """The samples of ``slots`` stacked (into ``out`` when given), outside the buffer's lock."""

    def clear(self, slots: list[int]) -> None:  # noqa: B027 (a block keeps its memory: nothing to forget)
        """Forget the samples of ``slots``, read for the last time."""

    @abstractmethod
    def copy_out(self, slots: np.ndarray) -> np.ndarray:
        """A copy of the samples of ``slots`` (for checkpoints)."""

    @abstractmethod
    def load(self, samples: np.ndarray) -> None:
        """Fill the first ``len(samples)`` slots (a restored checkpoint)."""


class BlockStorage(SampleStorage):
    """Samples copied into one block of ``capacity`` samples, in this process's memory or over
    ``backing`` (a writable buffer of at least that many bytes, e.g. shared memory)."""

    writes_in_place = True

    def __init__(self, capacity: int, shape: tuple[int, ...], dtype: np.dtype, backing: Any = None):
        full = (capacity, *shape)
        if backing is None:
            self.data = np.empty(full, dtype=dtype)
        else:
            needed = int(np.prod(full)) * dtype.itemsize
            have = memoryview(backing).nbytes
            if have < needed:
                raise ValueError(f"buffer storage of {have} bytes is too small for {full} {dtype}: {needed} needed")
            self.data = np.ndarray(full, dtype=dtype, buffer=backing)

    def put(self, slot: int, sample: np.ndarray, owned: bool) -> None:
        self.data[slot] = sample

    def slot(self, slot: int) -> np.ndarray:
        """The writable memory of one slot."""
        return self.data[slot]

    def write(self, slots: list[int], samples: np.ndarray) -> None:
        """Copy ``samples`` (one per slot, stacked) into ``slots`` in one step."""
        self.data[slots] = samples

    def gather(self, taken: Any, slots: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        if out is None:
            return self.data[slots]
        # mode="clip": with the default "raise", numpy gathers into a temporary first
        return np.take(self.data, slots, axis=0, out=out[: len(slots)], mode="clip")

    def copy_out(self, slots: np.ndarray) -> np.ndarray:
        return self.data[slots]

    def load(self, samples: np.ndarray) -> None:
        self.data[: len(samples)] = samples

    def copy_from(self, other: SampleStorage, slots: np.ndarray) -> None:
        """Take over the samples ``other`` holds in ``slots``."""
        if isinstance(other, BlockStorage):
            self.data[slots] = other.data[slots]
        else:
            for slot in slots.tolist():
                self.data[slot] = other.copy_out(np.array([slot]))[0]


class ReferenceStorage(SampleStorage):
    """Samples kept by reference: a large sample handed over for good is not copied until its
    batch is gathered (the receiver hands over the network frames samples arrived in)."""

    frees_on_read = True

    def __init__(self, capacity: int):
        self.refs: list[np.ndarray | None] = [None] * capacity

    def put(self, slot: int, sample: np.ndarray, owned: bool) -> None:
        self.refs[slot] = sample if owned else sample.copy()

    def take(self, slots: list[int] | np.ndarray) -> list[np.ndarray]:
        return [self.refs[slot] for slot in np.asarray(slots).tolist()]  # type: ignore[misc]

    def gather(self, taken: Any, slots: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        return np.stack(taken, out=None if out is None else out[: len(taken)])

    def clear(self, slots: list[int]) -> None:
        for slot in slots:
            self.refs[slot] = None

    def copy_out(self, slots: np.ndarray) -> np.ndarray:
        return np.stack(self.take(slots))

    def load(self, samples: np.ndarray) -> None:
        self.refs[: len(samples)] = list(samples)  # views of the loaded block, which nobody writes


def storage_for(
    capacity: int, shape: tuple[int, ...], dtype: np.dtype, zero_copy_bytes: int, backing: Any = None
) -> SampleStorage:
    """A block over ``backing`` when given; else samples of at least ``zero_copy_bytes`` by
    reference, smaller ones in a block."""
    if backing is None and dtype.itemsize * int(np.prod(shape)) >= zero_copy_bytes:
        return ReferenceStorage(capacity)
    return BlockStorage(capacity, shape, dtype, backing)
