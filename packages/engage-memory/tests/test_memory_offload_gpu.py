"""Offloading saved activations to pinned host memory on a CUDA GPU: exact gradients, memory saved, no sync.

These tests need a CUDA device (``-m gpu``); without one they are skipped. ``benchmarks/memory_gpu.py``
runs them with the GPU benchmark and saves their outcome next to its figures.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engage.memory import Decision, MemoryPlanner, MemoryPlanningStrategy, Plan
from engage.memory.decisions import ALL_DECISIONS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

WIDTH, TOKENS, LAYERS = 1024, 8192, 8


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


class _Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[_Mlp() for _ in range(LAYERS)])
        self.head = nn.Linear(WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x)).square().mean()


def _step(model: nn.Module, x: torch.Tensor) -> tuple[int, dict[str, torch.Tensor]]:
    """Peak allocated bytes of one forward and backward, and the gradients (copied to the host, so that
    they take no device memory in the next step's peak)."""
    for p in model.parameters():
        p.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    model(x).backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(), {n: p.grad.cpu() for n, p in model.named_parameters()}


@pytest.fixture
def stack() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _Stack().cuda(), torch.randn(TOKENS, WIDTH, device="cuda")


def test_offload_gives_the_same_gradients_with_less_memory(stack: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = stack
    planner = MemoryPlanner(model, device="cuda", decisions=[*ALL_DECISIONS, Decision.OFFLOAD])
    profile = planner.profile(lambda: model(x).backward(), roots=[x])
    n = len(profile.units)
    planner.apply(Plan.from_decisions(profile, [Decision.KEEP] * n, 2**62, "manual"))
    _step(model, x)
    keep_peak, keep_grads = _step(model, x)
    planner.apply(Plan.from_decisions(profile, [Decision.OFFLOAD] * n, 2**62, "manual"))
    _step(model, x)
    offloader = planner.runtime.offloader
    before = dict(offloader.stats)
    offload_peak, offload_grads = _step(model, x)
    for name, grad in keep_grads.items():
        assert torch.equal(grad, offload_grads[name]), name  # copies are exact: bitwise-equal gradients
    moved = offloader.stats["offloaded_bytes"] - before["offloaded_bytes"]
    saved_per_block = (2 * 4 * WIDTH + 2 * WIDTH) * TOKENS * 4  # norm's and up's inputs, gelu's and down's, fp32
    assert moved >= 0.9 * LAYERS * saved_per_block, offloader.stats
    # what was still on the device when backward reached it was used as is, the rest copied back once
    assert 0 < offloader.stats["fetched_bytes"] - before["fetched_bytes"] <= moved, offloader.stats
    # every tensor came back ahead of backward's request, none on demand
    assert offloader.stats["on_demand"] == before["on_demand"], offloader.stats
    # at most two blocks' tensors are on the device at once in forward and in backward, of the eight
    assert offload_peak <= keep_peak - 0.5 * moved, (keep_peak, offload_peak, moved)
    # Its tensors leave the device one block late and come back one block early: the profile measured that.
    predicted = profile.predict_peak([Decision.OFFLOAD] * n)
    assert abs(predicted - offload_peak) <= 0.10 * offload_peak, (predicted, offload_peak)
    planner.remove()


def test_offload_waits_on_events_not_on_the_device(
    stack: tuple[nn.Module, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, x = stack
    planner = MemoryPlanner(model, device="cuda", decisions=[Decision.KEEP, Decision.OFFLOAD])
    n = len(planner.runtime.blocks)
    planner.runtime.decisions = dict.fromkeys(range(n), Decision.OFFLOAD)
    model(x).backward()  # first step: pinned host buffers are allocated
    calls = []
    for name in ("synchronize",):
        real = getattr(torch.cuda, name)
        monkeypatch.setattr(torch.cuda, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    real_event_sync = torch.cuda.Event.synchronize
    monkeypatch.setattr(torch.cuda.Event, "synchronize", lambda self: calls.append(2) or real_event_sync(self))
    loss = model(x)
    loss.backward()
    assert calls == []  # forward and backward never block the host on the GPU
    monkeypatch.undo()
    torch.cuda.synchronize()
    assert planner.runtime.offloader.stats["prefetched"] > 0
    planner.remove()


class _Lit(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = _Stack()

    def training_step(self, batch: tuple[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.net(batch[0])
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _budget_between_floor_and_keep(x: torch.Tensor) -> int:
    """Halfway between the all-offload floor and the unplanned peak, from a planner of the same model."""
    net, xc = _Stack().cuda(), x.cuda()
    planner = MemoryPlanner(net, device="cuda", decisions=[Decision.KEEP, Decision.OFFLOAD])
    profile = planner.profile(lambda: net(xc).backward(), roots=[xc])
    n = len(profile.units)
    planner.remove()
    return (profile.predict_peak([Decision.OFFLOAD] * n) + profile.predict_peak([Decision.KEEP] * n)) // 2


def test_strategy_plans_offload_when_keeping_does_not_fit(tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.randn(TOKENS, WIDTH)
    budget = _budget_between_floor_and_keep(x)
    torch.cuda.empty_cache()
    strategy = MemoryPlanningStrategy(budget=budget, decisions=["keep", "offload"], print_plan=False)
    trainer = L.Trainer(
        strategy=strategy,
        accelerator="gpu",
        devices=1,
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_Lit(), DataLoader(TensorDataset(x.unsqueeze(0).expand(3, -1, -1).clone()), batch_size=None))
    assert trainer.global_step == 3
    assert strategy.plan is not None and strategy.plan.counts().get("offload", 0) >= 1, strategy.plan.render()
    assert strategy.measured_peak is not None and strategy.measured_peak <= budget, strategy.plan.render()
