"""Small models shared by the engage-memory tests: a transformer, a CNN with skips, a two-branch network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class TinyBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 128, d: int = 64, layers: int = 4, heads: int = 4, seq: int = 64) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.blocks = nn.ModuleList([TinyBlock(d, heads) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.n1, self.n2 = nn.GroupNorm(4, c), nn.GroupNorm(4, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.n2(self.c2(F.relu(self.n1(self.c1(x))))))


class SkipCNN(nn.Module):
    def __init__(self, c: int = 16, depth: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.stages = nn.Sequential(*[ResBlock(c) for _ in range(depth)])
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stages(self.stem(x)).mean((2, 3)))


class Branchy(nn.Module):
    """Two branches on one input, joined at the end: blocks do not form a chain."""

    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.left = nn.ModuleList([self._mlp(d, nn.GELU()) for _ in range(2)])
        self.right = nn.ModuleList([self._mlp(d, nn.Tanh()) for _ in range(2)])
        self.head = nn.Linear(2 * d, 1)

    @staticmethod
    def _mlp(d: int, act: nn.Module) -> nn.Sequential:
        return nn.Sequential(nn.Linear(d, 4 * d), act, nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        a, b = h, h
        for blk in self.left:
            a = blk(a)
        for blk in self.right:
            b = blk(b)
        return self.head(torch.cat([a, b], dim=-1))

    block_names = ["left.0", "left.1", "right.0", "right.1"]


def _gpt_case() -> tuple:
    model = TinyGPT()
    x = torch.randint(0, 128, (8, 64))
    return model, x, lambda m, inp: F.cross_entropy(m(inp).flatten(0, 1), inp.flatten()), None


def _cnn_case() -> tuple:
    return SkipCNN(), torch.randn(8, 3, 32, 32), lambda m, inp: m(inp).square().mean(), None


def _branch_case() -> tuple:
    return Branchy(), torch.randn(256, 64), lambda m, inp: m(inp).square().mean(), Branchy.block_names


CASES = {"transformer": _gpt_case, "skip_cnn": _cnn_case, "branch": _branch_case}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple:
    """(name, model, input, loss function, block names) for each test model."""
    torch.manual_seed(0)
    return (request.param, *CASES[request.param]())


@pytest.fixture
def gpt() -> TinyGPT:
    """A small transformer language model (vocabulary 128, sequence up to 64)."""
    torch.manual_seed(0)
    return TinyGPT()


@pytest.fixture
def small_gpt() -> TinyGPT:
    """A smaller transformer (width 32, 3 layers, sequence up to 32) for whole Trainer runs."""
    torch.manual_seed(0)
    return TinyGPT(vocab=128, d=32, layers=3, heads=2, seq=32)
