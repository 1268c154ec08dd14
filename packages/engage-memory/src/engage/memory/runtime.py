"""Running a model's blocks under per-block decisions, and observing them while profiling."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from engage.memory.decisions import Decision
from engage.memory.errors import UnsupportedSetupError
from engage.memory.replay import replayed_contexts

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
            inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            versions = [t._version for t in inputs]
            out = checkpoint(
                original, *args, use_reentrant=False, context_fn=self._context_fn(index, decision), **kwargs
            )
            if any(t._version != v for t, v in zip(inputs, versions)):
                raise UnsupportedSetupError(
                    f"block {self.blocks[index][0]!r} changes its input in place (an inplace=True activation "
                    "or an in-place op first in the block?), so it cannot be recomputed; make that op not "
                    "in place, or leave the block out of blocks="
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
        """Buffers and Python's and NumPy's generators replayed (see :mod:`.replay`), and the
        selective policy for ``selective``."""
        selective = _selective_context if decision is not Decision.RECOMPUTE else None
        return replayed_contexts(self.blocks[index][1], selective)

    def _prefetch_hook(self, group: OffloadGroup | None, before: weakref.ref | None, grad: torch.Tensor) -> None:
        # Backward reached this block: its own offloaded tensors (if any) and the group before it come back.
        self.offloader.prefetch_for_backward(group, before() if before is not None else None)

    @staticmethod
    def _record_hook(recorder: Recorder, event: str, call: Call, grad: torch.Tensor) -> None:
        recorder(event, call)
