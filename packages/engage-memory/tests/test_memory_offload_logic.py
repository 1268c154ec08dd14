"""Offload's bookkeeping without a GPU: what it releases, fetches and keeps, counted by the memory meter.

The CUDA side (side stream, events, pinned buffers) is replaced by a stand-in whose copies run at once and
whose events report done or not, as asked; host buffers are made under ``host_allocations`` so that the
meter counts what a GPU would hold. ``test_memory_offload_gpu.py`` runs the real thing on a CUDA device.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engage.memory import Decision, MemoryMeter, MemoryPlanner, Plan
from engage.memory.meter import host_allocations
from engage.memory.offload import ActivationOffloader

WIDTH, TOKENS, LAYERS = 32, 256, 6


class _Done:
    def __init__(self, copies: _HostCopies) -> None:
        self.copies = copies

    def query(self) -> bool:
        return self.copies.done


class _HostCopies:
    """Stands in for the side stream: copies run at once; events are done when ``done`` says so."""

    def __init__(self, done: bool = True) -> None:
        self.done = done
        self.stream = self

    def wait_stream(self, other: object) -> None:
        pass

    def wait_event(self, event: object) -> None:
        pass

    def compute_stream(self) -> _HostCopies:
        return self

    def side(self) -> contextlib.AbstractContextManager:
        return host_allocations()  # what runs there writes host buffers (or device copies made before)

    def mark(self) -> _Done:
        return _Done(self)

    def host_buffer(self, like: torch.Tensor) -> torch.Tensor:
        with host_allocations():
            return torch.empty(like.shape, dtype=like.dtype)

    def used_by_side(self, tensor: torch.Tensor) -> None:
        pass


class _Mlp(nn.Module):
    def __init__(self, square: bool = False) -> None:
        super().__init__()
        self.square = square
        self.norm, self.up, self.down = nn.LayerNorm(WIDTH), nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(self.norm(x))
        h = h * h if self.square else F.gelu(h)  # h * h saves one tensor twice
        return x + self.down(h)


class _Stack(nn.Module):
    def __init__(self, square: bool = False) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[_Mlp(square) for _ in range(LAYERS)])
        self.head = nn.Linear(WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x)).square().mean()


def _planner(model: nn.Module, copies: _HostCopies) -> MemoryPlanner:
    planner = MemoryPlanner(model)  # on CPU, offload is refused by name: put it in by hand
    planner.decisions.append(Decision.OFFLOAD)
    planner.runtime._offloader = ActivationOffloader(torch.device("cpu"), min_bytes=4096, copies=copies)
    return planner


def _step(model: nn.Module, x: torch.Tensor) -> tuple[int, dict[str, torch.Tensor]]:
    for p in model.parameters():
        p.grad = None
    with MemoryMeter(model, x) as meter:
        meter.reset_peak()
        model(x).backward()
        peak = meter.peak
    return peak, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("copies_done", [True, False], ids=["copies-done", "copies-running"])
def test_offload_is_exact_and_predicted_whether_or_not_copies_have_finished(copies_done: bool) -> None:
    torch.manual_seed(0)
    model, x = _Stack(), torch.randn(TOKENS, WIDTH)
    copies = _HostCopies()
    planner = _planner(model, copies)
    profile = planner.profile(lambda: model(x).backward(), roots=[x], timing_runs=0)
    n = len(profile.units)
    planner.apply(Plan.from_decisions(profile, [Decision.KEEP] * n, 2**62, "manual"))
    keep_peak, keep_grads = _step(model, x)
    planner.apply(Plan.from_decisions(profile, [Decision.OFFLOAD] * n, 2**62, "manual"))
    copies.done = copies_done
    offloader = planner.runtime.offloader
    before = dict(offloader.stats)
    offload_peak, offload_grads = _step(model, x)
    for name, grad in keep_grads.items():
        assert torch.equal(grad, offload_grads[name]), name
    assert offloader.stats["on_demand"] == before["on_demand"]  # everything came back ahead of its use
    assert offloader.stats["offloaded_bytes"] > before["offloaded_bytes"]
    assert offload_peak < 0.6 * keep_peak, (offload_peak, keep_peak)
    predicted = profile.predict_peak([Decision.OFFLOAD] * n)
    assert abs(predicted - offload_peak) <= 0.01 * offload_peak, (predicted, offload_peak)
    planner.remove()


def test_offload_holds_no_more_across_steps_when_old_graphs_are_kept() -> None:
    torch.manual_seed(0)
    model, x = _Stack(), torch.randn(TOKENS, WIDTH)
    planner = _planner(model, _HostCopies())
    planner.runtime.decisions = dict.fromkeys(range(LAYERS), Decision.OFFLOAD)
    losses, live = [], []
    with MemoryMeter(model, x) as meter:
        for _ in range(4):
            for p in model.parameters():
                p.grad = None
            loss = model(x)
            loss.backward()
            losses.append(loss)  # the step's graph (and its backward hooks) stays alive
            live.append(meter.live)
    # each step leaves its 4-byte loss behind, nothing of its offloaded tensors
    assert [b - a for a, b in itertools.pairwise(live)] == [4, 4, 4], live
    planner.remove()


def test_offload_fetches_a_tensor_saved_twice_once() -> None:
    torch.manual_seed(0)
    model, x = _Stack(square=True), torch.randn(TOKENS, WIDTH)
    planner = _planner(model, _HostCopies())
    planner.runtime.decisions = dict.fromkeys(range(LAYERS), Decision.KEEP)
    _, keep_grads = _step(model, x)
    planner.runtime.decisions = dict.fromkeys(range(LAYERS), Decision.OFFLOAD)
    _, offload_grads = _step(model, x)
    for name, grad in keep_grads.items():
        assert torch.equal(grad, offload_grads[name]), name
    stats = planner.runtime.offloader.stats
    assert stats["on_demand"] == 0, stats
    assert stats["fetched_bytes"] <= stats["offloaded_bytes"], stats
    planner.remove()
