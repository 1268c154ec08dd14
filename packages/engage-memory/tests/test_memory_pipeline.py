"""Two CPU processes over gloo train a pipelined model with the same gradients as one process."""

from __future__ import annotations

import copy
import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from engage.memory.pipeline import pipeline_schedule, split_stages


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 16)) for _ in range(4)])


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 16, generator=generator), torch.randn(8, 16, generator=generator)


def _worker(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        model = _model()
        groups = split_stages([1.0] * len(model), 2)
        stage = nn.Sequential(*[model[i] for i in groups[rank]])
        schedule = pipeline_schedule(stage, rank, 2, torch.device("cpu"), n_microbatches=4, loss_fn=F.mse_loss)
        x, y = _data()
        if rank == 0:
            schedule.step(x)
        else:
            losses: list[torch.Tensor] = []
            schedule.step(target=y, losses=losses)
        grads = {f"{i}.{name}": p.grad for i in groups[rank] for name, p in model[i].named_parameters()}
        torch.save(grads, f"{out}/grads_{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_memory_pipeline_two_processes_match_single_process(tmp_path) -> None:
    mp.spawn(_worker, args=(f"file://{tmp_path}/store", str(tmp_path)), nprocs=2, join=True)
    model = copy.deepcopy(_model())
    x, y = _data()
    F.mse_loss(model(x), y).backward()
    got = {**torch.load(tmp_path / "grads_0.pt"), **torch.load(tmp_path / "grads_1.pt")}
    expected = {f"{i}.{name}": p.grad for i, block in enumerate(model) for name, p in block.named_parameters()}
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_memory_split_stages_balances_memory() -> None:
    assert split_stages([1, 1, 1, 1], 2) == [[0, 1], [2, 3]]
    assert split_stages([4, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4]]
    with pytest.raises(ValueError, match="num_stages=5"):
        split_stages([1, 1], 5)
