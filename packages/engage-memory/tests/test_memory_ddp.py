"""DDPMemoryPlanningStrategy over gloo with two CPU processes: rank 0 plans, both ranks apply the same plan."""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class _LitMLP(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        mlp = [nn.Sequential(nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 32)) for _ in range(3)]
        self.blocks = nn.Sequential(*mlp)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self.blocks(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank)
    )
    os.environ["NODE_RANK"] = "0"
    from engage.memory import DDPMemoryPlanningStrategy, MemoryPlanner

    profiled = []
    original = MemoryPlanner.profile

    def counting(self: MemoryPlanner, *args: object, **kwargs: object) -> object:
        profiled.append(rank)
        return original(self, *args, **kwargs)

    MemoryPlanner.profile = counting  # type: ignore[method-assign]
    strategy = DDPMemoryPlanningStrategy(
        budget="64MiB",
        process_group_backend="gloo",
        print_plan=False,
        verify=False,
        timeout=datetime.timedelta(seconds=60),
    )
    trainer = L.Trainer(
        strategy=strategy,
        accelerator="cpu",
        devices=2,
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(48, 32, generator=generator), torch.randn(48, 32, generator=generator))
    module = _LitMLP()
    trainer.fit(module, DataLoader(data, batch_size=8))
    result = {
        "plan": strategy.plan.to_dict() if strategy.plan is not None else None,
        "profiled": len(profiled),
        "steps": trainer.global_step,
        "params": [p.detach().flatten().tolist() for p in module.parameters()],
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_memory_ddp_plans_on_rank_zero_and_trains(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["profiled"] for r in ranks] == [1, 0]  # one profile, on rank 0
    assert ranks[0]["plan"] is not None and ranks[0]["plan"] == ranks[1]["plan"]
    assert [r["steps"] for r in ranks] == [3, 3]
    flat = [torch.tensor([v for p in r["params"] for v in p]) for r in ranks]
    assert torch.isfinite(flat[0]).all()
    torch.testing.assert_close(flat[0], flat[1])  # gradients were averaged: replicas stayed identical
    torch.manual_seed(0)
    start = torch.cat([p.detach().flatten() for p in _LitMLP().parameters()])
    assert not torch.allclose(start, flat[0])  # and training moved them
