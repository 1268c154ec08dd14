"""A torch.compile'd model is still compiled under the strategy, and the compiled step follows the plan."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from engage.memory import Decision, MemoryPlanningStrategy


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(32, 128), nn.Linear(128, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(x)))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(), _Block()])
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class _Lit(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = _Net()
        self.compiled = torch.compile(self.net)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.compiled(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _SavedByCompiledGraph(L.Callback):
    """Bytes the compiled graph keeps for backward in each step (its backward node's saved tensors)."""

    def __init__(self) -> None:
        self.saved: list[int] = []

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        stack, seen, total = [loss.grad_fn], set(), 0
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if "CompiledFunction" in type(node).__name__:
                total += sum(t.numel() * t.element_size() for t in node.saved_tensors)
            stack.extend(next_node for next_node, _ in node.next_functions)
        self.saved.append(total)


def _fit(budget: Any) -> tuple[MemoryPlanningStrategy, _SavedByCompiledGraph]:
    torch._dynamo.reset()
    strategy = MemoryPlanningStrategy(budget=budget, print_plan=False, decisions=("keep", "recompute"))
    saved = _SavedByCompiledGraph()
    trainer = L.Trainer(
        strategy=strategy,
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[saved],
    )
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(1536, 32, generator=g), torch.randn(1536, 1, generator=g))
    trainer.fit(_Lit(), DataLoader(data, batch_size=512))
    return strategy, saved


def test_memory_compiled_model_is_compiled_under_the_strategy_and_keeps_the_plan(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    from torch._dynamo.utils import counters

    counters.clear()
    keep, keep_saved = _fit("1GiB")
    assert keep.plan is not None and set(keep.plan.decisions) == {Decision.KEEP}
    profile = keep.profile
    assert profile is not None
    low = profile.predict_peak([Decision.RECOMPUTE] * 2)
    high = profile.predict_peak([Decision.KEEP] * 2)
    assert low < high
    counters.clear()
    planned, planned_saved = _fit((low + high) // 2)
    plan = planned.plan
    assert plan is not None and Decision.RECOMPUTE in plan.decisions
    # Profiling ran eagerly and left the frame to dynamo: one graph, compiled, no graph break.
    assert counters["stats"]["unique_graphs"] >= 1 and counters["frames"]["ok"] >= 1
    assert sum(counters["graph_break"].values()) == 0
    assert all(keep_saved.saved) and all(planned_saved.saved), "every step should run the compiled graph"
    assert max(planned_saved.saved) < min(keep_saved.saved), (planned_saved.saved, keep_saved.saved)
    assert planned.measured_peak is not None and planned.measured_peak <= plan.budget


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Any:
    yield
    torch._dynamo.reset()
