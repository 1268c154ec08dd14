"""Whole Lightning training steps (forward, backward, AdamW step) measured by the meter stay under the budget."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from engage.memory import MemoryMeter, MemoryPlanningStrategy


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


def _fit(model: torch.nn.Module, budget: str, **options: Any) -> tuple[MemoryPlanningStrategy, _StepMeter]:
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


@pytest.mark.parametrize(
    ("budget", "options"),
    [
        ("3MiB", {}),
        pytest.param("3MiB", {"accumulate_grad_batches": 2}, marks=pytest.mark.slow, id="accumulate"),
        pytest.param("2.5MiB", {"precision": "bf16-mixed"}, marks=pytest.mark.slow, id="bf16-mixed"),
    ],
)
def test_memory_full_lightning_step_stays_under_budget(small_gpt: torch.nn.Module, budget: str, options: dict) -> None:
    strategy, meter = _fit(small_gpt, budget, **options)
    plan = strategy.plan
    assert plan is not None and plan.predicted_peak <= plan.budget
    assert any(label == "optimizer" for label, _ in plan.timeline)
    assert set(plan.counts()) != {"keep"}, "the budget should force some recomputation or offload"
    assert meter.peaks, "no step was metered"
    assert max(meter.peaks) <= plan.budget, (meter.peaks, plan.render(max(meter.peaks)))
    assert meter.finite and all(meter.finite)
