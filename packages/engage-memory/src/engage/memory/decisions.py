"""What the planner can decide for one block of a model."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


class Decision(str, Enum):
    """How the tensors a block saves for backward are kept until backward needs them.

    ``offload`` copies them to pinned host memory during forward and back ahead of backward. It is not among
    the default decisions (:data:`ALL_DECISIONS`): ask for it by name, on a CUDA device in eager mode only
    (see :func:`check_decisions`). Its profiling pins host memory for every activation of the step, and on
    this project's GPU measurements it was slower than recomputation wherever both fit (transfers at about
    45 GB/s against an H200's compute).

    Examples:
        >>> Decision("recompute").label
        'recompute all'
        >>> Decision("offload").label
        'offload to host'
    """

    KEEP = "keep"
    SELECTIVE = "selective"
    RECOMPUTE = "recompute"
    OFFLOAD = "offload"

    @property
    def label(self) -> str:
        """Short description for plan tables."""
        return {
            "keep": "keep",
            "selective": "recompute cheap ops",
            "recompute": "recompute all",
            "offload": "offload to host",
        }[self.value]


#: Simpler decisions first: where plans take the same time, solvers choose the simpler one.
SIMPLICITY: dict[Decision, int] = {d: k for k, d in enumerate(Decision)}

#: The default decisions: they mean something on every device and under torch.compile.
ALL_DECISIONS: tuple[Decision, ...] = (Decision.KEEP, Decision.SELECTIVE, Decision.RECOMPUTE)


def runs_compiled(model: nn.Module) -> bool:
    """Whether ``model`` or one of its submodules runs under ``torch.compile`` (as far as can be seen).

    Examples:
        >>> import torch
        >>> runs_compiled(torch.nn.Linear(2, 2))
        False
    """
    if getattr(model, "_compiler_ctx", None):  # Lightning's record of a compiled LightningModule
        return True
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None or hasattr(module, "_orig_mod"):
            return True
    return False


def check_decisions(decisions: tuple[Decision, ...] | list[Decision], device: torch.device, compiled: bool) -> None:
    """Raise :class:`~engage.memory.errors.UnsupportedSetupError` (one line) if ``offload`` cannot run here."""
    if Decision.OFFLOAD not in decisions:
        return
    from engage.memory.errors import UnsupportedSetupError
    from engage.memory.offload import OFFLOAD_NEEDS_CUDA, OFFLOAD_NOT_COMPILED

    if device.type != "cuda":
        raise UnsupportedSetupError(OFFLOAD_NEEDS_CUDA.format(device=device))
    if compiled:
        raise UnsupportedSetupError(OFFLOAD_NOT_COMPILED)
