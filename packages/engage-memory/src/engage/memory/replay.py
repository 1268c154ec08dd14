"""What a recomputed block reads besides its inputs, replayed as its first forward read it.

``torch.utils.checkpoint`` runs a block's forward again during backward, with the same inputs and
torch's random state. A block may also read and write its buffers (BatchNorm's running statistics,
spectral norm's power-iteration vectors, counters, an EMA codebook) and draw from Python's and
NumPy's generators (stochastic depth written with ``random.random()``) or from a
``torch.Generator`` a module holds (dropout masks of its own). Run again as it stands, the
recomputation would see buffers its first forward already changed (spectral norm would compute
another weight, so other gradients) and change them a second time, and would draw other random
numbers. :class:`ReplayedState` makes the recomputation see what the first forward saw and leave
things as they were before it ran.

Example:
    >>> import torch
    >>> from torch.utils.checkpoint import checkpoint
    >>> bn = torch.nn.BatchNorm1d(4)
    >>> x = torch.randn(8, 4, requires_grad=True)
    >>> checkpoint(bn, x, use_reentrant=False, context_fn=replayed_contexts(bn)).sum().backward()
    >>> int(bn.num_batches_tracked)  # once, not twice
    1
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


class ReplayedState:
    """One checkpointed call's buffers and generators (see the module).

    The first forward notes the buffers it changed, in place (through ``.data`` and under
    ``no_grad`` too: they are compared by value) or by putting a new tensor in their place, and the
    states of Python's and NumPy's global generators and of the ``torch.Generator`` objects the
    block's modules hold. Recomputation runs on copies of those buffers as they were before the
    first forward, with those generator states, and then puts back the buffers and states as it
    found them.

    Hooks of the block's modules run again during recomputation, as under any checkpoint: a hook
    that counts or accumulates outside the block counts twice.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.before: dict[str, torch.Tensor] = {}
        self.generators: tuple[Any, Any] | None = None
        #: the ``torch.Generator`` objects the block's modules hold, with their states before the first forward
        self.held: list[tuple[torch.Generator, torch.Tensor]] = []

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        buffers = dict(self.module.named_buffers())
        copies = {name: buffer.detach().clone() for name, buffer in buffers.items()}
        generators = _generator_states()
        held = [(generator, generator.get_state()) for generator in _held_generators(self.module)]
        yield
        now = dict(self.module.named_buffers())
        self.before = {
            name: copy
            for name, copy in copies.items()
            if now.get(name) is not buffers[name] or not _equal(buffers[name], copy)
        }
        self.generators = generators
        self.held = held

    @contextlib.contextmanager
    def recompute(self) -> Iterator[None]:
        current = {name: self.module.get_buffer(name) for name in self.before}
        generators = _generator_states()
        held_now = [(generator, generator.get_state()) for generator, _ in self.held]
        for name, value in self.before.items():
            put_buffer(self.module, name, value.clone())
        if self.generators is not None:
            _set_generator_states(self.generators)
        for generator, state in self.held:
            generator.set_state(state)
        try:
            yield
        finally:
            for name, value in current.items():
                put_buffer(self.module, name, value)
            _set_generator_states(generators)
            for generator, state in held_now:
                generator.set_state(state)


def replayed_contexts(
    module: nn.Module, selective: Callable[[], tuple[Any, Any]] | None = None
) -> Callable[[], tuple[Any, Any]]:
    """The ``context_fn`` of checkpointed calls of ``module``: a :class:`ReplayedState` for each
    call, with the contexts of ``selective`` (a selective checkpoint policy) inside it."""

    def contexts() -> tuple[Any, Any]:
        state = ReplayedState(module)
        if selective is None:
            return state.forward(), state.recompute()
        forward, recompute = selective()
        return _both(state.forward(), forward), _both(state.recompute(), recompute)

    return contexts


@contextlib.contextmanager
def _both(first: Any, second: Any) -> Iterator[None]:
    with first, second:
        yield


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a.detach(), b))


def put_buffer(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Make ``value`` the buffer ``name`` (dotted) of ``module``, in place of the tensor there."""
    owner, _, leaf = name.rpartition(".")
    module.get_submodule(owner)._buffers[leaf] = value


def _held_generators(module: nn.Module) -> list[torch.Generator]:
    """The ``torch.Generator`` objects held as attributes by ``module`` and its submodules, once each."""
    found: dict[int, torch.Generator] = {}
    for inner in module.modules():
        for value in vars(inner).values():
            if isinstance(value, torch.Generator):
                found.setdefault(id(value), value)
    return list(found.values())


def _generator_states() -> tuple[Any, Any]:
    numpy = sys.modules.get("numpy")  # a block can only draw from NumPy once it is imported
    return random.getstate(), numpy.random.get_state() if numpy is not None else None


def _set_generator_states(states: tuple[Any, Any]) -> None:
    python, numpy_state = states
    random.setstate(python)
    numpy = sys.modules.get("numpy")
    if numpy is not None and numpy_state is not None:
        numpy.random.set_state(numpy_state)
