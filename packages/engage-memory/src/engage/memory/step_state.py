"""Keeping a model's training state as it was while its step is profiled: buffers and random generators."""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from engage.memory.meter import host_allocations
from engage.memory.replay import put_buffer


class RandomState:
    """The random generators a training step draws from (Python, NumPy's global one, torch CPU, every
    CUDA device).

    :meth:`restore` puts them back to the captured state, so that profiling runs repeat the same dropout
    masks and the same random block skipping, and the first real step draws what it would have drawn
    without profiling; :meth:`capture` adopts the current state instead.

    Examples:
        >>> import torch
        >>> state = RandomState()
        >>> a = torch.rand(3)
        >>> state.restore()
        >>> torch.equal(a, torch.rand(3))
        True
    """

    def __init__(self) -> None:
        self.capture()

    def capture(self) -> None:
        """Remember the generators' current state."""
        self.python = random.getstate()
        numpy = sys.modules.get("numpy")  # a step draws from NumPy only once it is imported
        self.numpy = numpy.random.get_state() if numpy is not None else None
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []

    def restore(self) -> None:
        """Put the generators back to the remembered state."""
        random.setstate(self.python)
        if self.numpy is not None:
            sys.modules["numpy"].random.set_state(self.numpy)
        torch.set_rng_state(self.cpu)
        if self.cuda:
            torch.cuda.set_rng_state_all(self.cuda)

    def advance(self) -> None:
        """Move to a state the step has not seen: draw once from each generator and remember the result."""
        self.restore()
        random.random()
        if self.numpy is not None:
            sys.modules["numpy"].random.random()
        torch.rand(())
        if self.cuda:
            for device in range(len(self.cuda)):
                torch.rand((), device=f"cuda:{device}")
        self.capture()


def _buffer_copies(model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    with torch.no_grad(), host_allocations():
        return [(name, b, b.detach().to("cpu", copy=True)) for name, b in model.named_buffers()]


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[RandomState]:
    """Inside: profile freely. After: the model's buffers and the random generators are what they were.

    Buffers cover BatchNorm's running mean, variance and ``num_batches_tracked``, which every profiled
    forward in training mode would otherwise update, and buffers a forward replaces by new tensors;
    the copies live on the host.

    Examples:
        >>> import torch
        >>> bn = torch.nn.BatchNorm1d(4)
        >>> with preserved_state(bn):
        ...     _ = bn(torch.randn(8, 4) + 3)
        >>> float(bn.running_mean.abs().sum()), int(bn.num_batches_tracked)
        (0.0, 0)
    """
    buffers = _buffer_copies(model)
    original = RandomState()
    try:
        yield RandomState()  # the caller may replay or advance this one; ``original`` comes back at the end
    finally:
        with torch.no_grad():
            for name, live, saved in buffers:
                live.copy_(saved)
                # a forward that puts a new tensor in a buffer's place (``self.n = self.n + 1``)
                put_buffer(model, name, live)
        original.restore()


def _use_cache_configs(model: nn.Module) -> list[Any]:
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    return [c for c in configs.values() if getattr(c, "use_cache", False) is True]


@contextlib.contextmanager
def cache_off(model: nn.Module) -> Iterator[bool]:
    """Turn off a key/value cache (Hugging Face ``config.use_cache``) inside; yields whether one was on.

    A cache appended to in forward differs when a checkpointed block recomputes, so training under a plan
    runs without it, as Hugging Face does itself under gradient checkpointing; it is back on afterwards.
    """
    configs = _use_cache_configs(model)
    for config in configs:
        config.use_cache = False
    try:
        yield bool(configs)
    finally:
        for config in configs:
            config.use_cache = True
