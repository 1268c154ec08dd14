"""The chunked loss: same loss and gradients as the plain one, a fraction of its memory, opted in by the strategy."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from engage.memory import MemoryMeter, MemoryPlanningStrategy, chunked_cross_entropy, loss_chunks
from engage.memory.plugin import MemoryStrategyConfig


def _case(rows: int = 256, width: int = 32, vocab: int = 4096) -> tuple:
    torch.manual_seed(0)
    head = torch.nn.Linear(width, vocab)
    hidden = torch.randn(4, rows // 4, width, requires_grad=True)
    targets = torch.randint(0, vocab, (4, rows // 4))
    return head, hidden, targets


def _grads(head: torch.nn.Linear, hidden: torch.Tensor) -> list[torch.Tensor]:
    grads = [hidden.grad, head.weight.grad, head.bias.grad]
    hidden.grad = head.weight.grad = head.bias.grad = None
    return grads


@pytest.mark.parametrize("chunks", [1, 3, 8])
def test_memory_chunked_loss_matches_plain_loss_and_gradients(chunks: int) -> None:
    head, hidden, targets = _case()
    targets[0, :5] = -100  # ignored rows must not count, as in F.cross_entropy
    plain = F.cross_entropy(head(hidden).flatten(0, 1), targets.flatten())
    plain.backward()
    expected = _grads(head, hidden)
    loss = chunked_cross_entropy(hidden, head, targets, chunks=chunks)
    loss.backward()
    torch.testing.assert_close(loss, plain, rtol=1e-5, atol=1e-6)
    for got, want in zip(_grads(head, hidden), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_memory_chunked_loss_lowers_peak_on_big_vocabulary() -> None:
    head, hidden, targets = _case(rows=512, vocab=8192)
    logits_bytes = 512 * 8192 * 4
    peaks = {}
    for chunks in (1, 8):
        with MemoryMeter(head, hidden, targets) as meter:
            chunked_cross_entropy(hidden, head, targets, chunks=chunks).backward()
        peaks[chunks] = meter.peak
        _grads(head, hidden)
    fixed = 2 * sum(t.numel() * t.element_size() for t in (head.weight, head.bias, hidden)) + targets.nbytes
    assert peaks[1] - fixed >= logits_bytes  # the plain loss holds the whole logits (and more)
    assert peaks[8] - fixed < 0.35 * (peaks[1] - fixed), peaks


def test_memory_chunked_loss_bad_input_is_explained() -> None:
    head, hidden, targets = _case()
    with pytest.raises(ValueError, match="chunks=0 must be a positive int"):
        chunked_cross_entropy(hidden, head, targets, chunks=0)
    with pytest.raises(ValueError, match="targets has shape"):
        chunked_cross_entropy(hidden, head, targets[:, :3], chunks=2)
    with pytest.raises(ValueError, match="hidden has width 32 but the head expects 8"):
        chunked_cross_entropy(hidden, torch.nn.Linear(8, 10), targets)


def test_memory_strategy_offers_chunked_loss_only_when_asked() -> None:
    on = MemoryPlanningStrategy(budget="1GiB", chunked_loss=True, loss_chunks=4)
    off = MemoryPlanningStrategy(budget="1GiB", loss_chunks=4)
    assert loss_chunks(SimpleNamespace(trainer=SimpleNamespace(strategy=on))) == 4
    assert loss_chunks(SimpleNamespace(trainer=SimpleNamespace(strategy=off))) == 1
    assert loss_chunks(torch.nn.Linear(2, 2)) == 1
    with pytest.raises(ValueError, match="loss_chunks=0 must be a positive int"):
        MemoryPlanningStrategy(budget="1GiB", chunked_loss=True, loss_chunks=0)
    fields = {f.name: f.default for f in dataclasses.fields(MemoryStrategyConfig)}
    assert fields["chunked_loss"] is False and fields["loss_chunks"] == 8
