"""Moving the tensors a block saves for backward to host memory and back before backward needs them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from engage.memory.meter import host_allocations


class _Offloaded:
    """One saved tensor living in host memory, with its device copy once fetched back."""

    __slots__ = ("device", "device_tensor", "event", "host")

    def __init__(self, host: torch.Tensor, device: torch.device, event: torch.cuda.Event | None) -> None:
        self.host = host
        self.device = device
        self.event = event
        self.device_tensor: torch.Tensor | None = None


class Offloader:
    """``saved_tensors_hooks`` that copy saved activations to (pinned) host buffers and prefetch them back.

    On CUDA the copies run on a side stream so that they overlap with compute; the forward waits for a
    block's copies at its end (bounding device memory to one block in flight) and backward prefetches a
    block's tensors, last-saved first, as soon as its output gradient exists. On CPU the copies are plain
    and the host buffers are hidden from the :class:`~engage.memory.meter.MemoryMeter`, so that CPU runs
    measure what a GPU would hold.

    Examples:
        >>> import torch
        >>> off = Offloader(torch.device("cpu"), min_bytes=0)
        >>> lin = torch.nn.Linear(8, 8)
        >>> x = torch.randn(4, 8, requires_grad=True)
        >>> with off.hooks(0):
        ...     y = lin(x).relu()
        >>> off.finish(0)
        >>> y.sum().backward()
        >>> x.grad.shape
        torch.Size([4, 8])
    """

    def __init__(self, device: torch.device, min_bytes: int = 1 << 16, skip: set[int] | None = None) -> None:
        self.device = device
        self.min_bytes = min_bytes
        self.skip = skip if skip is not None else set()
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self._pending: dict[int, list[_Offloaded]] = {}
        self._in_flight: dict[int, list[torch.Tensor]] = {}
        self.host_bytes: dict[int, int] = {}

    def _pack(self, block: int, t: torch.Tensor) -> torch.Tensor | _Offloaded:
        nbytes = t.numel() * t.element_size()
        if t.device.type != self.device.type or nbytes < self.min_bytes or t.untyped_storage().data_ptr() in self.skip:
            return t
        with host_allocations():
            host = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=self.cuda)
            event = None
            if self.cuda:
                self.stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(self.stream):
                    host.copy_(t, non_blocking=True)
                    event = torch.cuda.Event()
                    event.record(self.stream)
                # The device tensor must outlive its copy: held until finish() syncs the side stream.
                self._in_flight.setdefault(block, []).append(t)
            else:
                host.copy_(t)
        entry = _Offloaded(host, t.device, event)
        self._pending.setdefault(block, []).append(entry)
        self.host_bytes[block] = self.host_bytes.get(block, 0) + nbytes
        return entry

    def _fetch(self, entry: _Offloaded) -> None:
        if entry.device_tensor is not None:
            return
        if self.cuda:
            with torch.cuda.stream(self.stream):
                dev = entry.host.to(entry.device, non_blocking=True)
                entry.event = torch.cuda.Event()
                entry.event.record(self.stream)
            entry.device_tensor = dev
        else:
            entry.device_tensor = entry.host.to(entry.device, copy=True)

    def _unpack(self, packed: torch.Tensor | _Offloaded) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        self._fetch(packed)
        dev = packed.device_tensor
        if self.cuda:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(packed.event)
            # Allocated on the side stream, used on the compute stream: tell the allocator.
            dev.record_stream(current)
        return dev

    @contextlib.contextmanager
    def hooks(self, block: int) -> Iterator[None]:
        """Offload what the code inside saves for backward, filed under ``block``."""
        self.host_bytes[block] = 0
        # Entries of an earlier forward that never ran backward belong to their graph only.
        self._pending[block] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: self._pack(block, t), self._unpack):
            yield

    def finish(self, block: int) -> None:
        """End of ``block``'s forward: wait for its copies so the device tensors can be freed."""
        if self.cuda and self._in_flight.get(block):
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            self.stream.synchronize()
        self._in_flight.pop(block, None)

    def prefetch(self, block: int) -> None:
        """Start bringing ``block``'s tensors back, last saved first (backward uses them in that order)."""
        for entry in reversed(self._pending.pop(block, [])):
            self._fetch(entry)
