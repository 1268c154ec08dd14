"""Where memory and time readings come from: the CPU meter or the CUDA caching allocator."""

from __future__ import annotations

import time

import torch

from engage.memory.meter import MemoryMeter


class Probe:
    """Reads live bytes, the peak since the last reset, and a synchronised clock.

    Examples:
        >>> import torch
        >>> with MemoryMeter() as meter:
        ...     probe = Probe(torch.device("cpu"), meter)
        ...     x = torch.zeros(1024)
        ...     probe.peak() >= 4096
        True
    """

    def __init__(self, device: torch.device, meter: MemoryMeter | None = None) -> None:
        self.device = torch.device(device)
        self.meter = meter
        if meter is None and self.device.type != "cuda":
            raise ValueError(f"device={self.device} needs a MemoryMeter to read memory; pass meter=MemoryMeter(...)")

    def now(self) -> float:
        """Seconds, after the device finished queued work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def live(self) -> int:
        """Bytes held by tensors now."""
        return self.meter.live if self.meter is not None else torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        """Highest live bytes since the last :meth:`reset_peak`."""
        return self.meter.peak if self.meter is not None else torch.cuda.max_memory_allocated(self.device)

    def reset_peak(self) -> None:
        """Start a new peak window."""
        if self.meter is not None:
            self.meter.reset_peak()
        else:
            torch.cuda.reset_peak_memory_stats(self.device)
