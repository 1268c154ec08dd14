"""Whole Lightning training steps (forward, backward, AdamW step) measured by the meter stay under the budget."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from engage.memory import Decision, DynamicProgrammingSolver, MemoryMeter, MemoryPlanningStrategy


class _LitGPT(L.LightningModule):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def training_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (idx,) = batch
        return F.cross_entropy(self.model(idx).flatten(0, 1).float(), idx.flatten())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class _StepMeter(L.Callback):
    """Meters every batch after the first (the first one profiles) from its start to after the optimizer step."""

    def __init__(self) -> None:
        self.meter: MemoryMeter | None = None
        self.peaks: list[int] = []
        self.finite: list[bool] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if idx > 0:
            self.meter = MemoryMeter(pl_module, *trainer.optimizers, batch)
            self.meter.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.meter is not None:
            self.meter.__exit__(None, None, None)
            self.peaks.append(self.meter.peak)
            self.meter = None

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.finite.append(bool(grads) and all(bool(torch.isfinite(g).all()) for g in grads))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.meter is not None:
            self.meter.__exit__(None, None, None)


def _fit(model: torch.nn.Module, budget: str | int, **options: Any) -> tuple[MemoryPlanningStrategy, _StepMeter]:
    strategy = MemoryPlanningStrategy(budget=budget, print_plan=False, verify=False)
    meter = _StepMeter()
    trainer = L.Trainer(
        strategy=strategy,
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[meter],
        **options,
    )
    data = DataLoader(TensorDataset(torch.randint(0, 128, (32, 32))), batch_size=8)
    trainer.fit(_LitGPT(model), data)
    return strategy, meter


def _tight_budget(model: torch.nn.Module, **options: Any) -> int:
    """Halfway between the smallest plan's peak and the all-keep peak of the same Trainer step.

    A fixed size goes stale whenever the accounting changes (optimizer state, gradients alive in forward):
    taken from the profile, the budget always sits below keeping everything, so the plan must recompute
    and above the floor, so a plan exists.
    """
    strategy, _ = _fit(copy.deepcopy(model), "1GiB", **options)
    profile = strategy.profile
    assert profile is not None and profile.chain
    keep = profile.predict_peak([Decision.KEEP] * len(profile.blocks))
    floor = DynamicProgrammingSolver().minimum_budget(profile)
    assert floor < keep, (floor, keep)
    return (floor + keep) // 2


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="plain"),
        pytest.param({"accumulate_grad_batches": 2}, marks=pytest.mark.slow, id="accumulate"),
        pytest.param({"precision": "bf16-mixed"}, marks=pytest.mark.slow, id="bf16-mixed"),
    ],
)
def test_memory_full_lightning_step_stays_under_budget(small_gpt: torch.nn.Module, options: dict) -> None:
    budget = _tight_budget(small_gpt, **options)
    strategy, meter = _fit(small_gpt, budget, **options)
    plan = strategy.plan
    assert plan is not None and plan.budget == budget and plan.predicted_peak <= plan.budget
    assert any(label == "optimizer" for label, _ in plan.timeline)
    assert set(plan.counts()) != {"keep"}, "the budget should force some recomputation"
    assert meter.peaks, "no step was metered"
    assert max(meter.peaks) <= plan.budget, (meter.peaks, plan.render(max(meter.peaks)))
    assert meter.finite and all(meter.finite)
