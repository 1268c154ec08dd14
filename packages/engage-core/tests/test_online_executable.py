"""Simulators that are programs speaking the wire protocol, with no Python subclass."""

from __future__ import annotations

import sys

import lightning.pytorch as pl
import pytest
import torch

from engage.core.cli import main
from engage.core.online import OnlineDataModule
from engage.core.samplers import UniformSampler
from engage.core.simulators import ExecutableSimulator
from engage.core.simulators.executable import TRAVELLING_WAVE, TRAVELLING_WAVE_SPACE
from engage.core.testing import SimulatorSuite
from engage.core.testing.process import run_engage


class TestTravellingWaveProgram(SimulatorSuite):
    """The conformance suite, through the program and the online engine."""

    @pytest.fixture
    def simulator(self):
        return ExecutableSimulator.travelling_wave(steps=3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "simulator.argv: empty"),
        ([sys.executable, TRAVELLING_WAVE], "no '{address}' placeholder"),
        ([sys.executable, TRAVELLING_WAVE, "{address}", "{seed}"], "unknown or malformed placeholder"),
        (["no-such-program-here", "{address}"], "program 'no-such-program-here' not found"),
        ([__file__, "{address}"], "is not executable"),
    ],
)
def test_bad_command_lines_are_refused_naming_the_field(argv, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ExecutableSimulator(argv, TRAVELLING_WAVE_SPACE, sample_shape=(16, 16), samples_per_run=3)


def test_bad_command_line_from_engage_run_is_one_line_and_exit_code_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:  # found when the simulator is built, inside Hydra's app
        main(["run", "simulator=command", "simulator.argv=[nope,'{address}']", f"hydra.run.dir={tmp_path}"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "engage run: simulator.argv: program 'nope' not found; give a path or a program on PATH"
    )


class Flat(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(256, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch["target"].reshape(len(batch["target"]), -1)).pow(2).mean()

    validation_step = training_step

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_a_program_trains_and_validates_through_the_online_datamodule(tmp_path):
    sim = ExecutableSimulator.travelling_wave(steps=4)
    dm = OnlineDataModule(
        sim, UniformSampler(sim.space, seed=0), simulations=2, val_simulations=1, batch_size=4, capacity=8,
        batches_per_epoch=100, policy="fifo",
    )  # fmt: skip
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path)
    )
    trainer.fit(Flat(), datamodule=dm)
    outcome = dm.outcome()
    assert (outcome.completed, outcome.samples_received, outcome.samples_trained) == (2, 8, 8)
    assert len(dm.val_dataset) == 4  # the held-out simulation ran as the program too


@pytest.mark.slow
def test_engage_run_trains_on_a_program_with_no_python_subclass(tmp_path):
    result = run_engage(
        "run", "simulator=command", "data.train_simulations=2", "data.val_simulations=1", "trainer.max_epochs=1",
        "trainer.limit_train_batches=3", "model.width=4", "trainer.enable_progress_bar=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "simulations: 2 requested, 2 completed, 0 failed, 0 given up; samples: 40 received" in result.stderr
