"""What a training step changes besides activations is as it would be without the strategy,
though profiling runs the step about 15 times on the first batch: parameters a step updates
itself, metric states, counters, a batch changed in place, generators modules hold (recomputed
blocks draw the same masks), and a manually stepped learning-rate scheduler. Blocks that take no
part in backward are not planned."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from engage.memory import MemoryPlanningStrategy
from engage.memory.blocks import find_blocks

torchmetrics = pytest.importorskip("torchmetrics")


class HeldDropout(torch.nn.Module):
    """Dropout drawn from a generator the module holds (not torch's global one)."""

    def __init__(self) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(x.shape, generator=self.generator) > 0.3
        return x * keep / 0.7


class Block(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, width)
        self.drop = HeldDropout()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(torch.tanh(self.linear(x)))


class Net(torch.nn.Module):
    def __init__(self, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(Block(width) for _ in range(depth))
        self.head = torch.nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class SideEffects(L.LightningModule):
    """A student, a frozen teacher it updates as a moving average, an accuracy metric, a counter,
    and a batch normalised in place."""

    def __init__(self) -> None:
        super().__init__()
        self.student = Net()
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.accuracy = torchmetrics.classification.MulticlassAccuracy(num_classes=4, average="micro")
        self.steps_seen = 0

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        x.mul_(0.5)
        self.steps_seen += 1
        logits = self.student(x)
        with torch.no_grad():
            target = self.teacher(x).softmax(-1)
            for t, s in zip(self.teacher.parameters(), self.student.parameters()):
                t.mul_(0.9).add_(0.1 * s)
        self.accuracy.update(logits.argmax(-1), y)
        return F.cross_entropy(logits, y) + F.cross_entropy(logits, target)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.student.parameters(), lr=0.1)


class ManualSchedule(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = Net()

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        optimizer.zero_grad()
        self.manual_backward(F.cross_entropy(self.net(x), y))
        optimizer.step()
        scheduler.step()

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.net.parameters(), lr=0.1)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)]


class PromptTuned(L.LightningModule):
    """Frozen blocks; a prompt added to the input before them, and the head after them, train."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()
        self.net.blocks.requires_grad_(False)
        self.prompt = torch.nn.Parameter(torch.zeros(16))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x + self.prompt), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


def _fit(model: L.LightningModule, strategy: MemoryPlanningStrategy | None, tmp_path) -> L.LightningModule:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 16, generator=generator), torch.randint(0, 4, (32,), generator=generator))
    options = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    trainer = L.Trainer(
        accelerator="cpu", max_steps=4, enable_model_summary=False, default_root_dir=tmp_path, **options,
        **({"strategy": strategy} if strategy is not None else {}),
    )  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=8))
    return model


def _strategy() -> MemoryPlanningStrategy:
    # every block recomputed: their dropout masks are drawn a second time in backward
    return MemoryPlanningStrategy(budget="1.0", print_plan=False, verify=False, decisions=["recompute"])


def test_what_a_step_changes_is_as_without_the_strategy(tmp_path) -> None:
    torch.manual_seed(0)
    plain = _fit(SideEffects(), None, tmp_path / "plain")
    torch.manual_seed(0)
    planned = _fit(SideEffects(), _strategy(), tmp_path / "planned")
    # the same initial weights (same seed), then four steps each: bitwise the same model
    for (name, a), b in zip(plain.state_dict().items(), planned.state_dict().values()):
        assert torch.equal(a, b), name
    assert planned.steps_seen == plain.steps_seen == 4
    assert int(planned.accuracy.tp + planned.accuracy.fp) == int(plain.accuracy.tp + plain.accuracy.fp) == 32
    assert planned.accuracy.compute() == plain.accuracy.compute()
    generators = [b.drop.generator.get_state() for b in (plain.student.blocks[0], planned.student.blocks[0])]
    assert torch.equal(*generators)


def test_a_manually_stepped_scheduler_is_as_without_the_strategy(tmp_path) -> None:
    torch.manual_seed(0)
    plain = _fit(ManualSchedule(), None, tmp_path / "plain")
    torch.manual_seed(0)
    planned = _fit(ManualSchedule(), _strategy(), tmp_path / "planned")
    assert planned.lr_schedulers().last_epoch == plain.lr_schedulers().last_epoch == 4
    assert planned.optimizers().param_groups[0]["lr"] == plain.optimizers().param_groups[0]["lr"] == 0.1 * 0.5**4
    for a, b in zip(plain.parameters(), planned.parameters()):
        assert torch.equal(a, b)


def test_blocks_that_take_no_part_in_backward_are_left_out_and_frozen_ones_gradients_pass_through_are_not(
    tmp_path,
) -> None:
    # the teacher's blocks are found with the student's, run without gradients, and left out
    strategy = _strategy()
    with pytest.warns(UserWarning, match=r"blocks teacher\.blocks\.0, .*teacher\.blocks\.3 take no part in backward"):
        _fit(SideEffects(), strategy, tmp_path / "teacher")
    assert strategy.plan.names == [f"student.blocks.{i}" for i in range(4)]
    # prompt tuning: every block frozen, gradients pass through them to what trains before them
    tuned = PromptTuned()
    assert [name for name, _ in find_blocks(tuned)] == [f"net.blocks.{i}" for i in range(4)]
    strategy = _strategy()
    _fit(tuned, strategy, tmp_path / "tuned")
    assert strategy.plan.names == [f"net.blocks.{i}" for i in range(4)]


def test_a_batch_of_expanded_tensors_and_blocks_given_by_an_iterator() -> None:
    from engage.memory.step_state import preserved_state

    net = torch.nn.Linear(2, 2)
    x, shared = torch.randn(8, 2), torch.ones(1, 2).expand(8, 2)  # one element for all rows
    with preserved_state(net, [x, shared]):
        x.mul_(0.5)
    assert torch.equal(shared, torch.ones(8, 2))
    strategy = MemoryPlanningStrategy(budget="1GiB", blocks=(f"net.blocks.{i}" for i in range(4)))
    assert strategy.blocks == [f"net.blocks.{i}" for i in range(4)]
