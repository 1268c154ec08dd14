"""The single-device Lightning strategy that plans a training step's memory under a budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from engage.memory._planning import _MemoryPlanning, check_strategy_kwargs
from engage.memory.decisions import check_decisions
from engage.memory.errors import UnsupportedSetupError


class MemoryPlanningStrategy(_MemoryPlanning, SingleDeviceStrategy):
    """Fit the whole training step (weights, gradients, optimizer state, activations) under ``budget``.

    On the first batch (and whenever input shapes change) the step is profiled block by block, a solver
    picks for every block whether to keep its activations or recompute them (all, or only the cheap ops), and
    the fastest plan under the budget is applied and printed.

    Args:
        budget: ``"12GiB"``, bytes as an int, or a fraction of device memory as a float in (0, 1] (on the
            CPU, of the host's memory as this process may use it).
        solver: ``"dp"`` (chains of blocks), ``"cpsat"`` (any order of blocks) or ``"auto"``.
        blocks: module names to plan; default: the children of every repeated ``ModuleList``/``Sequential``.
        decisions: which decisions the solver may use, among ``keep``, ``selective``, ``recompute`` and
            ``offload`` (saved activations to pinned host memory and back; CUDA in eager mode only, not by
            default: asking for it on CPU or under ``torch.compile`` is refused with one line).
        profile_path: JSON file for the profile: loaded if it exists (no re-profiling), written otherwise.
        verify: measure one planned step on the first batch, solve again if it exceeds the budget, and show
            the measured peak next to the plan.
        print_plan: print the plan table.
        chunked_loss: offer a chunked loss to the LightningModule (off by default): a module that computes
            its loss with ``chunked_cross_entropy(hidden, self.head, targets, chunks=loss_chunks(self))``
            never holds the whole logits; under any other setting ``loss_chunks(self)`` is 1, the plain loss.
        loss_chunks: number of row chunks of that loss when ``chunked_loss`` is on.
        device: the device to train on (default: the first GPU if any, else CPU).

    Examples:
        >>> import lightning as L
        >>> strategy = MemoryPlanningStrategy(budget="12GiB")
        >>> trainer = L.Trainer(strategy=strategy, accelerator="cpu", max_steps=1, logger=False)
    """

    strategy_name = "memory_planning"

    def __init__(
        self,
        budget: str | int | float,
        solver: str = "auto",
        blocks: Sequence[str] | None = None,
        decisions: Sequence[str] = ("keep", "selective", "recompute"),
        profile_path: str | None = None,
        verify: bool = True,
        print_plan: bool = True,
        chunked_loss: bool = False,
        loss_chunks: int = 8,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> None:
        check_strategy_kwargs(type(self).__name__, SingleDeviceStrategy, kwargs)
        if device is None:
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        elif torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise UnsupportedSetupError(f"device={device!r}, but torch sees no CUDA device; leave device out (CPU)")
        super().__init__(device=device, **kwargs)
        self._init_planning(
            budget,
            solver,
            blocks,
            decisions,
            profile_path,
            verify,
            print_plan,
            chunked_loss=chunked_loss,
            loss_chunks=loss_chunks,
        )
        check_decisions(self.decisions, torch.device(device), compiled=False)

    def setup(self, trainer: Any) -> None:
        super().setup(trainer)
        self._setup_planner()

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._planned_training_step(super().training_step, args, kwargs)

    def backward(self, *args: Any, **kwargs: Any) -> Any:
        return self._planned_backward(super().backward, *args, **kwargs)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._timed_optimizer_step(super().optimizer_step, *args, **kwargs)

    def teardown(self) -> None:
        self._teardown_planner()
        super().teardown()
