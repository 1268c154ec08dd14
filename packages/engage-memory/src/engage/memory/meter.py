"""Counting the live bytes of every tensor through a training step, on any device, without a GPU."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_HOST = threading.local()


@contextlib.contextmanager
def host_allocations() -> Iterator[None]:
    """Tensors created inside this block are host copies (the optimizer step's and the step state's
    snapshots) and do not count.

    On a CPU-only run the "device" and the host are the same memory; code that keeps host copies wraps
    them in this context so that the meter sees what a GPU would see.
    """
    _HOST.depth = getattr(_HOST, "depth", 0) + 1
    try:
        yield
    finally:
        _HOST.depth -= 1


def _in_host_scope() -> bool:
    return getattr(_HOST, "depth", 0) > 0


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
        for p in obj.parameters():
            if p.grad is not None:
                yield p.grad
    elif isinstance(obj, torch.optim.Optimizer):
        for state in obj.state.values():
            yield from (v for v in state.values() if isinstance(v, torch.Tensor))
    elif isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


class MemoryMeter(TorchDispatchMode):
    """Live and peak bytes of tensor storages, counted at every ATen op (forward, backward, optimizer).

    Each storage is counted once (views share it) from the op that creates it until it is freed, which a
    ``weakref.finalize`` on the storage reports. Tensors that exist before the meter starts count only if
    passed as ``roots`` (modules, optimizers, tensors, containers of them). Only storages on
    ``device_type`` count.

    Examples:
        >>> import torch
        >>> lin = torch.nn.Linear(256, 256)
        >>> with MemoryMeter(lin) as meter:
        ...     lin(torch.randn(64, 256)).sum().backward()
        >>> meter.peak >= 2 * 256 * 256 * 4
        True
    """

    def __init__(self, *roots: Any, device_type: str = "cpu") -> None:
        super().__init__()
        self.roots = roots
        self.device_type = device_type
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}
        self._lock = threading.Lock()

    def track(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count these (already existing) tensors as live from now on."""
        for t in tensors:
            self._track(t)
        self.peak = max(self.peak, self.live)

    def reset_peak(self) -> None:
        """Start a new peak window at the current live size."""
        self.peak = self.live

    def __enter__(self) -> MemoryMeter:
        self.track(_tensors(list(self.roots)))
        return super().__enter__()

    def _release(self, key: int) -> None:
        with self._lock:
            self.live -= self._sizes.pop(key, 0)

    def _track(self, t: torch.Tensor) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type != self.device_type or t.is_meta:
            return
        try:
            storage = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse or functional wrappers carry no storage
            return
        key = storage.data_ptr() or id(storage)
        with self._lock:
            if key in self._sizes:
                return
            self._sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
        weakref.finalize(storage, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not _in_host_scope():
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self._track(t)
            self.peak = max(self.peak, self.live)
        return out
