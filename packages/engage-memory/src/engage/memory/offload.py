"""Moving a block's saved activations to pinned host memory during forward, and back ahead of backward (CUDA)."""

from __future__ import annotations

import collections
import contextlib
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch

#: Why ``offload`` cannot run where it was asked for, in one line each.
OFFLOAD_NEEDS_CUDA = (
    "decision 'offload' needs a CUDA device: on {device} host and device are one memory, so copying saved "
    "activations to host memory saves nothing; choose among keep, selective, recompute"
)
OFFLOAD_NOT_COMPILED = (
    "decision 'offload' is not available under torch.compile: compiled backward unpacks every saved tensor at "
    "its start, so offloading saves no memory there; leave 'offload' out of decisions or do not compile"
)


class CudaCopies:
    """Where offloaded tensors travel: a side CUDA stream, its events and pinned host buffers.

    :class:`ActivationOffloader` does all its copying through one of these; a stand-in with the same methods
    lets its bookkeeping run without a GPU.
    """

    def __init__(self, device: torch.device) -> None:
        self.stream = torch.cuda.Stream(device)
        self.device = device

    def compute_stream(self) -> Any:
        """The stream the model computes on."""
        return torch.cuda.current_stream(self.device)

    def side(self) -> contextlib.AbstractContextManager:
        """Run the copies issued inside on the side stream."""
        return torch.cuda.stream(self.stream)

    def mark(self) -> torch.cuda.Event:
        """An event recorded on the side stream after the copies issued so far."""
        event = torch.cuda.Event()
        event.record(self.stream)
        return event

    def host_buffer(self, like: torch.Tensor) -> torch.Tensor:
        """A pinned host tensor of ``like``'s shape and dtype."""
        return torch.empty(like.shape, dtype=like.dtype, pin_memory=True)

    def used_by_side(self, tensor: torch.Tensor) -> None:
        """``tensor`` is read or written by side-stream work: the allocator must not reuse it before that ends."""
        tensor.record_stream(self.stream)


class OffloadedTensor:
    """A saved tensor's host copy, the events that order the copies, and its device copy once fetched."""

    __slots__ = (
        "__weakref__",
        "consumed",
        "device",
        "device_copy",
        "fetched",
        "host",
        "nbytes",
        "original",
        "stored",
        "uses",
    )

    def __init__(self, original: torch.Tensor, host: torch.Tensor, stored: torch.cuda.Event, nbytes: int) -> None:
        #: the device tensor itself until it is released (backward reaching it before then uses it as is)
        self.original: torch.Tensor | None = original
        self.host = host
        self.device = original.device
        self.stored = stored
        self.fetched: torch.cuda.Event | None = None
        self.device_copy: torch.Tensor | None = None
        self.nbytes = nbytes
        #: saved-tensor slots holding it (a tensor saved twice in one block is copied once); the device copy
        #: is kept until the last of them is unpacked, and a consumed tensor is never prefetched again
        self.uses = 1
        self.consumed = False


class OffloadGroup:
    """The tensors one call of an offloaded block saved, in the order it saved them.

    The runtime's backward hook of the block call after this one holds it weakly, so that a finished step's
    groups are freed with its graph, and fetches it while that block's backward runs.
    """

    __slots__ = ("__weakref__", "_seen", "started", "tensors")

    def __init__(self, started: int) -> None:
        self.tensors: list[OffloadedTensor] = []
        #: the offloader's count of block starts when this block call started
        self.started = started
        self._seen: dict[tuple, OffloadedTensor] = {}


class ActivationOffloader:
    """Saved-tensor hooks that offload a block's activations to pinned host memory on a side stream.

    In forward, each saved tensor of at least ``min_bytes`` that is not a parameter is copied to a pinned
    host buffer on a side stream that waits for the compute stream. Its device tensor stays alive while the
    next block runs (the copy overlaps that block's compute) and is released when the block after starts:
    if its copy has not finished by then, the compute stream waits for the copy's event, never the host.
    Profiled and planned steps therefore hold the same bytes at the same points. When
    backward reaches a block (its output gradient exists), the block's own tensors and those of the
    offloaded block before it are copied back on the side stream; backward waits for an event before it
    uses one. A tensor saved twice in one block is copied once.

    Examples:
        >>> import torch
        >>> if torch.cuda.is_available():
        ...     offloader = ActivationOffloader(torch.device("cuda"))
        ...     lin = torch.nn.Linear(1024, 1024).cuda()
        ...     x = torch.randn(512, 1024, device="cuda", requires_grad=True)
        ...     with offloader.offloading([*lin.parameters()]) as group:
        ...         y = lin(x).relu()
        ...     offloader.prefetch(group)
        ...     y.sum().backward()
    """

    def __init__(self, device: torch.device, min_bytes: int = 1 << 20, copies: CudaCopies | None = None) -> None:
        self.device = torch.device(device)
        if copies is None and self.device.type != "cuda":
            raise ValueError(OFFLOAD_NEEDS_CUDA.format(device=self.device))
        self.min_bytes = int(min_bytes)
        self.copies = copies if copies is not None else CudaCopies(self.device)
        # (block start number, offloaded tensor): its device tensor is released two block starts later
        self._pending: collections.deque[tuple[int, OffloadedTensor]] = collections.deque()
        self._blocks_started = 0
        self._last: weakref.ref[OffloadGroup] | None = None
        #: bytes copied to the host and back since the offloader was made, and how many copies back were
        #: issued ahead of backward (``prefetched``) or only when backward asked (``on_demand``)
        self.stats = {"offloaded_bytes": 0, "fetched_bytes": 0, "prefetched": 0, "on_demand": 0, "kept_small": 0}

    def last_group(self) -> OffloadGroup | None:
        """The group of the block call just before the current one, if that call offloaded (``None`` once its
        graph is gone): backward reaches it right after the current block."""
        group = self._last() if self._last is not None else None
        return group if group is not None and group.started == self._blocks_started - 1 else None

    def release_copied(self) -> None:
        """Release the device tensors whose copy to the host has finished (never waits)."""
        while self._pending and self._pending[0][1].stored.query():
            self._pending.popleft()[1].original = None

    def block_started(self) -> None:
        """A block's forward starts: release what the blocks before the previous one offloaded.

        A copy still running then makes the compute stream (not the host) wait for its event, so that the
        memory is reused only after the copy has read it.
        """
        self._blocks_started += 1
        compute = None
        while self._pending and self._pending[0][0] <= self._blocks_started - 2:
            _, saved = self._pending.popleft()
            if not saved.stored.query():
                compute = compute or self.copies.compute_stream()
                compute.wait_event(saved.stored)
            saved.original = None

    @contextlib.contextmanager
    def offloading(self, params: Iterable[torch.Tensor]) -> Iterator[OffloadGroup]:
        """Offload what the code inside saves for backward, except tensors sharing storage with ``params``."""
        group = OffloadGroup(self._blocks_started)
        own = {p.untyped_storage().data_ptr() for p in params}

        def pack(tensor: torch.Tensor) -> Any:
            return self._pack(group, own, tensor)

        with torch.autograd.graph.saved_tensors_hooks(pack, self._unpack):
            yield group
        self._last = weakref.ref(group)

    def _pack(self, group: OffloadGroup, own: set[int], tensor: torch.Tensor) -> Any:
        nbytes = tensor.numel() * tensor.element_size()
        if tensor.device.type != self.device.type or tensor.layout is not torch.strided or nbytes < self.min_bytes:
            self.stats["kept_small"] += 1
            return tensor
        storage = tensor.untyped_storage().data_ptr()
        if storage in own:
            return tensor
        key = (storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        key += (tensor._version,)
        if key in group._seen:
            group._seen[key].uses += 1
            return group._seen[key]
        host = self.copies.host_buffer(tensor)
        self.copies.stream.wait_stream(self.copies.compute_stream())
        with self.copies.side():
            host.copy_(tensor, non_blocking=True)
            stored = self.copies.mark()
        saved = OffloadedTensor(tensor, host, stored, nbytes)
        self._pending.append((self._blocks_started, saved))
        group.tensors.append(saved)
        group._seen[key] = saved
        self.stats["offloaded_bytes"] += nbytes
        return saved

    def _fetch(self, saved: OffloadedTensor) -> None:
        if saved.original is not None:  # not released yet: no copy back needed
            if not saved.stored.query():
                # its copy to the host may still be reading it: the allocator must not reuse it before then
                self.copies.used_by_side(saved.original)
            saved.device_copy, saved.fetched, saved.original = saved.original, None, None
            return
        # Allocated from the compute stream's memory: the side stream waits until its earlier work is done.
        copy = torch.empty(saved.host.shape, dtype=saved.host.dtype, device=saved.device)
        self.copies.stream.wait_stream(self.copies.compute_stream())
        with self.copies.side():
            copy.copy_(saved.host, non_blocking=True)
            fetched = self.copies.mark()
        self.copies.used_by_side(copy)
        saved.device_copy, saved.fetched = copy, fetched
        self.stats["fetched_bytes"] += saved.nbytes

    def prefetch(self, group: OffloadGroup | None) -> None:
        """Start copying ``group``'s tensors back to the device (those not fetched yet)."""
        if group is None:
            return
        for saved in group.tensors:
            if saved.device_copy is None and not saved.consumed:
                self._fetch(saved)
                self.stats["prefetched"] += 1

    def prefetch_for_backward(self, group: OffloadGroup | None, before: OffloadGroup | None) -> None:
        """Backward reached a block: fetch its own group (if offloaded) and the offloaded group before it."""
        self.prefetch(group)
        self.prefetch(before)
        self.release_copied()

    def _unpack(self, saved: Any) -> torch.Tensor:
        if not isinstance(saved, OffloadedTensor):
            return saved
        if saved.device_copy is None:
            self._fetch(saved)
            self.stats["on_demand"] += 1
        tensor = saved.device_copy
        assert tensor is not None
        if saved.fetched is not None:
            self.copies.compute_stream().wait_event(saved.fetched)
        saved.uses -= 1
        if saved.uses <= 0:  # the last slot: the device copy goes with it
            saved.device_copy, saved.fetched, saved.consumed = None, None, True
        return tensor
