"""Running a model's blocks under per-block decisions, and observing them while profiling."""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
    noop_context_fn,
)

from engage.memory.decisions import Decision

if TYPE_CHECKING:
    from engage.memory.offload import ActivationOffloader, OffloadGroup

# Outputs of these ops are worth saving: recomputing them costs most of a block's FLOPs, while the
# pointwise and normalisation ops between them are cheap to redo and often produce most of the bytes.
_COMPUTE_OPS = {
    name
    for name in (
        "mm",
        "addmm",
        "bmm",
        "baddbmm",
        "convolution",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_flash_attention_forward",
        "_efficient_attention_forward",
    )
}
_SAVE_OPS = [getattr(torch.ops.aten, name).default for name in _COMPUTE_OPS if hasattr(torch.ops.aten, name)]


def _selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context() -> Any:
    return create_selective_checkpoint_contexts(_selective_policy)


class _BufferKeeper:
    """Keeps the buffers of a recomputed block as its forward left them.

    Recomputation runs a block's forward a second time, in training mode: modules that update buffers
    in their forward (BatchNorm's running mean, variance and batch count) would update them twice a
    step. The forward notes which buffers it changed: those whose version counter moved (an in-place
    update in Python), and the running statistics of normalisation layers that track them in training
    mode (their kernel updates them in place without moving the counter). Recomputation puts those
    back as they were before it ran. Outputs are unchanged: in training mode BatchNorm normalises
    with the batch's own statistics.
    """

    def __init__(self, module: nn.Module, buffers: list[torch.Tensor]) -> None:
        self.module = module
        self.buffers = buffers
        self.changed: list[torch.Tensor] = []

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        versions = [b._version for b in self.buffers]
        yield
        changed = {id(b): b for b, v in zip(self.buffers, versions) if b._version != v}
        for norm in self.module.modules():
            if isinstance(norm, _NormBase) and norm.training and norm.track_running_stats:
                for stat in (norm.running_mean, norm.running_var):
                    if stat is not None:
                        changed[id(stat)] = stat
        self.changed = list(changed.values())

    @contextlib.contextmanager
    def recompute(self) -> Iterator[None]:
        saved = [b.detach().clone() for b in self.changed]
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, value in zip(self.changed, saved):
                    buffer.copy_(value)


@contextlib.contextmanager
def _both(first: Any, second: Any) -> Iterator[None]:
    with first, second:
        yield


def _recompute_contexts(
    module: nn.Module, buffers: list[torch.Tensor], selective: bool
) -> Callable[[], tuple[Any, Any]]:
    """The ``context_fn`` of one checkpointed call: buffers kept, and the selective policy if asked."""

    def contexts() -> tuple[Any, Any]:
        keeper = _BufferKeeper(module, buffers)
        if not selective:
            return keeper.forward(), keeper.recompute()
        forward, recompute = _selective_context()
        return _both(keeper.forward(), forward), _both(keeper.recompute(), recompute)

    return contexts


def first_grad_tensor(obj: Any) -> torch.Tensor | None:
    """The first floating tensor in ``obj`` (any nesting) that takes part in autograd."""
    for t in tree_flatten(obj)[0]:
        if isinstance(t, torch.Tensor) and t.requires_grad:
            return t
    return None


#: one call of a block in a step: (block index, how many calls of that block came before it)
Call = tuple[int, int]
Recorder = Callable[[str, Call], None]


class PlanRuntime:
    """Patches the ``forward`` of each block so that it runs under its :class:`Decision`.

    The patch is an instance attribute, so parameter names and ``state_dict`` keys are untouched and
    :meth:`remove` restores the module exactly. Blocks under ``offload`` (CUDA only) save through an
    :class:`~engage.memory.offload.ActivationOffloader` made on first use; every block's output then fetches
    the offloaded group before it when backward reaches it. A ``recorder`` (set while profiling) is called at four
    events per call of a block: ``fwd_start``, ``fwd_end``, ``bwd_start`` (its output gradient exists) and
    ``bwd_end`` (its input gradient exists). ``calls`` counts each block's calls under autograd since
    :meth:`reset_calls`, so that a step that calls blocks more often than the profiled one is noticed.

    Examples:
        >>> import torch
        >>> blocks = [("0", torch.nn.Linear(4, 4)), ("1", torch.nn.Linear(4, 4))]
        >>> rt = PlanRuntime(blocks, torch.device("cpu"))
        >>> rt.install()
        >>> rt.decisions = {0: Decision.RECOMPUTE, 1: Decision.KEEP}
        >>> x = torch.randn(2, 4, requires_grad=True)
        >>> blocks[1][1](blocks[0][1](x)).sum().backward()
        >>> rt.remove()
    """

    def __init__(self, blocks: Sequence[tuple[str, nn.Module]], device: torch.device) -> None:
        self.blocks = list(blocks)
        self.device = torch.device(device)
        self.decisions: dict[int, Decision] = {}
        self.recorder: Recorder | None = None
        self.chain_links: dict[int, bool] = {}
        self.calls: dict[int, int] = {}
        self._offloader: ActivationOffloader | None = None
        # Weak, so that linking blocks into a chain never keeps an activation alive.
        self._last_output: weakref.ref | None = None
        self._installed: list[tuple[nn.Module, Any]] = []

    def install(self) -> None:
        """Patch every block (idempotent)."""
        if self._installed:
            return
        for index, (_, module) in enumerate(self.blocks):
            previous = module.__dict__.get("forward")
            original = module.forward
            module.forward = functools.partial(self._forward, index, original)
            self._installed.append((module, previous))

    @property
    def offloader(self) -> ActivationOffloader:
        """The offloader of blocks under ``offload`` (made on first use; CUDA devices only)."""
        if self._offloader is None:
            from engage.memory.offload import ActivationOffloader

            self._offloader = ActivationOffloader(self.device)
        return self._offloader

    def reset_calls(self) -> None:
        """Start counting block calls afresh (at the start of a step)."""
        self.calls = {}

    def remove(self) -> None:
        """Restore every block's own ``forward``."""
        for module, previous in self._installed:
            if previous is None:
                del module.forward
            else:
                module.forward = previous
        self._installed.clear()

    def _forward(self, index: int, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        decision = self.decisions.get(index, Decision.KEEP)
        recorder = self.recorder
        inp = first_grad_tensor((args, kwargs))
        call = (index, self.calls.get(index, 0))
        if torch.is_grad_enabled():
            self.calls[index] = call[1] + 1
        offloading = (self._offloader is not None or decision is Decision.OFFLOAD) and torch.is_grad_enabled()
        before = None
        if offloading:
            self.offloader.block_started()
            before = self.offloader.last_group()
        if recorder is not None:
            previous = self._last_output() if self._last_output is not None else None
            self.chain_links[index] = inp is not None and inp is previous
            recorder("fwd_start", call)
        group = None
        if not torch.is_grad_enabled() or decision is Decision.KEEP:
            out = original(*args, **kwargs)
        elif decision is Decision.OFFLOAD:
            with self.offloader.offloading(self.blocks[index][1].parameters()) as group:
                out = original(*args, **kwargs)
        elif torch.compiler.is_compiling():
            # The compiled graph applies a block's buffer updates once, however it recomputes; dynamo
            # traces a checkpoint whose contexts are given by a plain function only.
            if decision is Decision.RECOMPUTE:
                out = checkpoint(original, *args, use_reentrant=False, **kwargs)
            else:
                out = checkpoint(original, *args, use_reentrant=False, context_fn=_selective_context, **kwargs)
        else:
            out = checkpoint(
                original, *args, use_reentrant=False, context_fn=self._context_fn(index, decision), **kwargs
            )
        first_out = first_grad_tensor(out)
        if first_out is not None and torch.is_grad_enabled():
            if group is not None or before is not None:
                first_out.register_hook(
                    functools.partial(self._prefetch_hook, group, weakref.ref(before) if before is not None else None)
                )
            if recorder is not None:
                first_out.register_hook(functools.partial(self._record_hook, recorder, "bwd_start", call))
                if inp is not None:
                    inp.register_hook(functools.partial(self._record_hook, recorder, "bwd_end", call))
        if recorder is not None:
            self._last_output = weakref.ref(first_out) if first_out is not None else None
            recorder("fwd_end", call)
        return out

    def _context_fn(self, index: int, decision: Decision) -> Callable[[], tuple[Any, Any]]:
        selective = decision is not Decision.RECOMPUTE
        module = self.blocks[index][1]
        buffers = list(module.buffers())
        if not buffers:
            return _selective_context if selective else noop_context_fn
        return _recompute_contexts(module, buffers, selective)

    def _prefetch_hook(self, group: OffloadGroup | None, before: weakref.ref | None, grad: torch.Tensor) -> None:
        # Backward reached this block: its own offloaded tensors (if any) and the group before it come back.
        self.offloader.prefetch_for_backward(group, before() if before is not None else None)

    @staticmethod
    def _record_hook(recorder: Recorder, event: str, call: Call, grad: torch.Tensor) -> None:
        recorder(event, call)
