"""Blocks are found in any model (a U-Net's encoder and decoder), budgets are kept exactly, profiles are keyed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engage.memory import (
    Decision,
    InfeasibleBudgetError,
    MemoryPlanner,
    NoBlocksError,
    Profile,
    ProfileMismatchError,
    find_blocks,
)
from engage.memory.profile import input_signature, model_signature


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.reduce, self.conv = nn.Conv2d(cin, cout, 1), nn.Conv2d(2 * cout, cout, 3, padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.reduce(x), scale_factor=2.0)
        return F.relu(self.conv(torch.cat([x, skip], dim=1)))


class UNet(nn.Module):
    """Four levels: an encoder list of three down blocks, a decoder list of three up blocks, skips between."""

    def __init__(self, c: int = 8, levels: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.encoder = nn.ModuleList([_Down(c * 2**i, c * 2 ** (i + 1)) for i in range(levels - 1)])
        self.decoder = nn.ModuleList([_Up(c * 2 ** (i + 1), c * 2**i) for i in reversed(range(levels - 1))])
        self.head = nn.Conv2d(c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for down in self.encoder:
            skips.append(x)
            x = down(x)
        for up in self.decoder:
            x = up(x, skips.pop())
        return self.head(x)


class _TwoBranches(nn.Module):
    """Two lists of blocks on one input, joined at the end: not a chain, so CP-SAT plans it."""

    def __init__(self, d: int = 64) -> None:
        super().__init__()
        self.inp, self.head = nn.Linear(d, d), nn.Linear(2 * d, 1)
        self.left = nn.ModuleList([nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)) for _ in "ab"])
        self.right = nn.ModuleList([nn.Sequential(nn.Linear(d, 4 * d), nn.Tanh(), nn.Linear(4 * d, d)) for _ in "ab"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = b = self.inp(x)
        for left, right in zip(self.left, self.right):
            a, b = left(a), right(b)
        return self.head(torch.cat([a, b], dim=-1))


def _unet_planner() -> tuple[MemoryPlanner, UNet, torch.Tensor]:
    torch.manual_seed(0)
    model, x = UNet(), torch.randn(4, 3, 64, 64)
    planner = MemoryPlanner(model)
    planner.profile(lambda: model(x).square().mean().backward(), roots=[x])
    return planner, model, x


def test_memory_unet_plans_encoder_and_decoder_down_to_the_per_block_checkpoint_peak() -> None:
    planner, model, x = _unet_planner()
    profile = planner.profile_
    assert profile is not None
    assert profile.units == [f"encoder.{i}" for i in range(3)] + [f"decoder.{i}" for i in range(3)]
    checkpointed = profile.predict_peak([Decision.RECOMPUTE] * 6)
    assert checkpointed < profile.predict_peak([Decision.KEEP] * 6)
    plan = planner.plan(checkpointed)  # the peak of checkpointing every block is a budget it accepts
    assert plan.predicted_peak <= checkpointed
    # Skip connections share tensors between blocks: fit() measures the plan and tightens it if needed.
    plan, measured, _ = planner.fit(checkpointed, lambda: model(x).square().mean().backward(), roots=[x])
    assert measured <= checkpointed, plan.render(measured)
    assert plan.budget == checkpointed
    planner.remove()


def test_memory_model_without_blocks_is_one_line_naming_the_fix() -> None:
    with pytest.raises(NoBlocksError, match=r"pass blocks=\['name.of.block', ...\]") as info:
        MemoryPlanner(nn.Linear(4, 4))
    assert "\n" not in str(info.value)
    with pytest.raises(NoBlocksError, match="blocks= names 'nope'"):
        find_blocks(UNet(), ["nope"])


def test_memory_blocks_inside_a_planned_block_are_part_of_it() -> None:
    names = [name for name, _ in find_blocks(_TwoBranches())]
    assert names == ["left.0", "left.1", "right.0", "right.1"]  # not the Linear layers inside them


def _branch_planner() -> MemoryPlanner:
    torch.manual_seed(0)
    model, x = _TwoBranches(), torch.randn(256, 64)
    planner = MemoryPlanner(model)
    planner.profile(lambda: model(x).square().mean().backward(), roots=[x])
    return planner


def test_memory_cpsat_floor_is_feasible_and_one_byte_less_is_not() -> None:
    planner = _branch_planner()
    profile = planner.profile_
    assert profile is not None and not profile.chain
    floor = planner.minimum_budget()
    plan = planner.plan(floor, solver="cpsat")
    assert plan.solver == "cpsat" and plan.predicted_peak <= floor
    with pytest.raises(InfeasibleBudgetError) as info:
        planner.plan(floor - 1, solver="cpsat")
    assert info.value.minimum == floor
    assert f"({floor} B)" in str(info.value)  # sizes that print alike carry their bytes
    keep = profile.predict_peak([Decision.KEEP] * 4)
    middle = planner.plan((floor + keep) // 2, solver="cpsat")
    assert middle.predicted_peak <= (floor + keep) // 2
    planner.remove()


def test_memory_profile_is_keyed_by_model_and_input(tmp_path) -> None:
    planner = _branch_planner()
    profile = planner.profile_
    assert profile is not None
    path = profile.save(tmp_path / "profile.json")
    loaded = Profile.load(path)
    model = planner.model
    same = (model_signature(model, planner.runtime.blocks), input_signature([torch.randn(256, 64)]))
    loaded.check_matches(*same)
    with pytest.raises(
        ProfileMismatchError, match=r"another input \(float32\[256, 64\]; this run: float32\[32, 64\]\)"
    ):
        loaded.check_matches(same[0], input_signature([torch.randn(32, 64)]))
    other = UNet()
    with pytest.raises(ProfileMismatchError, match="another model") as info:
        loaded.check_matches(model_signature(other, find_blocks(other)), same[1])
    assert "\n" not in str(info.value)
    planner.remove()
