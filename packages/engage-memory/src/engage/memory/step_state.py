"""Keeping a model's training state as it was while its step is profiled.

Profiling runs the user's training step on the first batch once per decision and block (about 15
times with the default decisions). What such a step changes besides activations is put back
afterwards (:func:`preserved_state`): the model's parameters that do not train (an EMA or
momentum teacher updated in the step), buffers (BatchNorm's statistics), the states of its
torchmetrics metrics, the plain public attributes of its modules (a step counter), the generators
its modules hold, the batch (normalised in place) and the global random generators; the Lightning
strategies also put back the learning-rate schedulers and the optimizers' hyperparameters (a
manually stepped scheduler). Trained parameters are the optimizers' to change, and their steps
are paused. State outside the model (a global object, a file the step writes) cannot be put
back: such a step's first batch sees it changed."""

from __future__ import annotations

import contextlib
import copy
import random
import sys
import warnings
from collections.abc import Iterable, Iterator
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


def _tensor_copies(tensors: Iterable[Any]) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """Host copies of ``tensors`` (each once) with their version counters, to be copied back in
    place where the step wrote them."""
    seen: set[int] = set()
    copies = []
    with torch.no_grad(), host_allocations():
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and id(tensor) not in seen:
                seen.add(id(tensor))
                copies.append((tensor, tensor._version, tensor.detach().to("cpu", copy=True)))
    return copies


#: the share of the host's available memory that copies of frozen parameters may take
FROZEN_COPY_SHARE = 0.25


def _frozen_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The parameters that do not train (a teacher the step updates as a moving average): those a
    step may change itself. Trained ones are the optimizers' to change, and profiling pauses their
    steps. Left out, with a warning if the step then changes them, where their copies would take
    more than :data:`FROZEN_COPY_SHARE` of the host's available memory (a large frozen backbone)."""
    import psutil

    frozen = list({id(p): p for p in model.parameters() if not p.requires_grad}.values())
    size = sum(p.numel() * p.element_size() for p in frozen)
    if size > FROZEN_COPY_SHARE * psutil.virtual_memory().available:
        return []
    return frozen


def _copied(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return copy.copy(value)


class ModuleState:
    """What a training step may change in a model besides its buffers, captured to be put back.

    Parameters that do not train (a teacher updated as a moving average of the student),
    the states of torchmetrics metrics (``update`` in the step), plain public attributes of every
    module (counters, flags: ``int``, ``float``, ``bool``, ``str`` or ``None``), the
    ``torch.Generator`` objects modules hold, and ``tensors`` given (the batch: a step may change
    it in place).

    Examples:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2).requires_grad_(False)
        >>> net.calls = 0
        >>> state = ModuleState(net)
        >>> with torch.no_grad():
        ...     _ = net.weight.mul_(0)
        >>> net.calls += 1
        >>> state.restore()
        >>> bool(net.weight.abs().sum() > 0), net.calls
        (True, 0)
    """

    def __init__(self, model: nn.Module, tensors: Iterable[Any] = ()) -> None:
        frozen = _frozen_parameters(model)
        self.tensors = _tensor_copies([*frozen, *tensors])
        copied = {id(p) for p in frozen}
        #: frozen parameters too large to copy, with their versions: a step that changes them is told
        self.uncopied = [
            (name, p, p._version) for name, p in model.named_parameters() if not p.requires_grad and id(p) not in copied
        ]
        self.metrics: list[tuple[nn.Module, dict[str, Any]]] = []
        self.values: list[tuple[nn.Module, str, Any]] = []
        self.generators: list[tuple[torch.Generator, torch.Tensor]] = []
        for module in model.modules():
            names = getattr(module, "_defaults", None)
            if isinstance(getattr(type(module), "metric_state", None), property) and isinstance(names, dict):
                # a torchmetrics Metric: its states, and the counts that say whether it was updated
                kept = [*names, "_update_count", "_computed", "_forward_cache"]
                self.metrics.append((module, {k: _copied(getattr(module, k)) for k in kept if hasattr(module, k)}))
            for name, value in vars(module).items():
                if isinstance(value, torch.Generator):
                    self.generators.append((value, value.get_state()))
                elif not name.startswith("_") and (value is None or isinstance(value, (bool, int, float, str))):
                    self.values.append((module, name, value))

    def restore(self) -> None:
        """Put everything captured back."""
        with torch.no_grad():
            for live, version, saved in self.tensors:
                if live._version != version:  # written by the step (an expanded batch tensor never is)
                    live.copy_(saved)
        changed = [name for name, p, version in self.uncopied if p._version != version]
        if changed:
            warnings.warn(
                f"training_step changed frozen parameters ({', '.join(changed[:3])}) in place while it was "
                "profiled, and they were too large to keep copies of: the first step starts from them as "
                "profiling left them; set profile_path to plan from a saved profile",
                stacklevel=2,
            )
            self.uncopied = []
        for module, states in self.metrics:
            for name, value in states.items():
                setattr(module, name, _copied(value))
        for module, name, value in self.values:
            if getattr(module, name, object()) is not value:
                setattr(module, name, value)
        for generator, generator_state in self.generators:
            generator.set_state(generator_state)


@contextlib.contextmanager
def preserved_state(model: nn.Module, tensors: Iterable[Any] = ()) -> Iterator[RandomState]:
    """Inside: profile freely. After: the model's buffers, what :class:`ModuleState` captures (its
    parameters, metric states, plain attributes and generators, and ``tensors``: the batch) and the
    random generators are what they were.

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
    module_state = ModuleState(model, tensors)
    original = RandomState()
    try:
        yield RandomState()  # the caller may replay or advance this one; ``original`` comes back at the end
    finally:
        with torch.no_grad():
            for name, live, saved in buffers:
                live.copy_(saved)
                # a forward that puts a new tensor in a buffer's place (``self.n = self.n + 1``)
                put_buffer(model, name, live)
        module_state.restore()
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
