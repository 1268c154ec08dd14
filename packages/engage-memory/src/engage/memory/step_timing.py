"""Timing whole training steps once a plan is in use: the measured side of the time model."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class SteadyStepTimer:
    """Times whole training steps (forward, backward and the optimizer's step) in steady state.

    After each new plan it lets ``skip`` steps pass (the first pays one-time costs: the optimizer's
    state is created, the allocator grows), then times the next ``runs`` steps and keeps their
    median; on CUDA also the allocator's peak over them, since each training step started (the
    device is synchronised around each timed step only). With gradient accumulation, a timed step
    is the micro-batch that ends with the optimizer's step.

    Examples:
        >>> timer = SteadyStepTimer(torch.device("cpu"), skip=1, runs=2)
        >>> for _ in range(4):
        ...     with timer.step():
        ...         _ = sum(range(1000))
        >>> seconds, peak = timer.result()
        >>> seconds > 0 and peak is None
        True
        >>> timer.result() is None  # reported once per plan
        True
    """

    def __init__(self, device: torch.device, skip: int = 1, runs: int = 3) -> None:
        if skip < 1 or runs < 1:
            raise ValueError(f"skip={skip} and runs={runs} must be at least 1: the first step is not steady")
        self.device = torch.device(device)
        self.skip, self.runs = skip, runs
        self.planned()

    def planned(self) -> None:
        """A new plan is in use from the next step: measure afresh."""
        self._seen = 0
        self._seconds: list[float] = []
        self._peaks: list[int] = []
        self._reported = False

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def step(self) -> Iterator[None]:
        """Around one whole training step."""
        self._seen += 1
        timed = self.skip < self._seen <= self.skip + self.runs
        if not timed:
            yield
            return
        self._sync()
        # the peak is not reset here: the plan's watch resets it as the training step starts (inside
        # this span) and reads it as the next one starts, to notice a step above the budget
        started = time.perf_counter()
        yield
        self._sync()
        self._seconds.append(time.perf_counter() - started)
        if self.device.type == "cuda":
            self._peaks.append(int(torch.cuda.max_memory_allocated(self.device)))

    def result(self) -> tuple[float, int | None] | None:
        """``(median seconds, peak bytes or None off CUDA)`` once every timed step ran, the first
        time it is asked after that; else ``None``."""
        if self._reported or len(self._seconds) < self.runs:
            return None
        self._reported = True
        return statistics.median(self._seconds), (max(self._peaks) if self._peaks else None)
