"""Simulators that are programs speaking the wire protocol, with no Python subclass."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from engage.core.cli import main
from engage.core.config.validate import compose_config
from engage.core.online import OnlineDataModule
from engage.core.samplers import UniformSampler
from engage.core.simulators import ExecutableSimulator
from engage.core.simulators.executable import (
    TRAVELLING_WAVE,
    TRAVELLING_WAVE_SPACE,
    ExecutableSimulatorError,
    travelling_wave_arguments,
)
from engage.core.testing import SimulatorSuite
from engage.core.testing.process import run_engage


class TestTravellingWaveProgram(SimulatorSuite):
    """The conformance suite, through the program and the online engine."""

    @pytest.fixture
    def simulator(self):
        return ExecutableSimulator.travelling_wave(steps=3)


IDS = ["{address}", "{simulation_id}", "{attempt}"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "simulator.argv: empty"),
        ("./sim {address}", "must be a list of words"),
        ([sys.executable, TRAVELLING_WAVE], "no '{address}' placeholder"),
        ([sys.executable, TRAVELLING_WAVE, "{address}", "{simulation_id}"], "no '{attempt}' placeholder"),
        ([sys.executable, TRAVELLING_WAVE, *IDS, "{seed}"], "unknown or malformed placeholder"),
        (["no-such-program-here", *IDS], "program 'no-such-program-here' not found on PATH"),
        ([__file__, *IDS], "is not executable"),
    ],
)
def test_bad_command_lines_are_refused_naming_the_field(argv, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ExecutableSimulator(argv, TRAVELLING_WAVE_SPACE, sample_shape=(16, 16), samples_per_run=3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sample_shape": [0, 16]}, "simulator.sample_shape: 1 to 4 positive integer sizes"),
        ({"sample_shape": [1, 2, 3, 4, 5]}, "simulator.sample_shape: 1 to 4"),
        ({"samples_per_run": 0}, "simulator.samples_per_run: must be an integer >= 1"),
        ({"dtype": "float77"}, "simulator.dtype: 'float77' is not a numpy dtype"),
        ({"value_range": [1.0, -1.0]}, "simulator.value_range: needs finite low < high"),
        ({"env": {"A=B": "1"}}, "simulator.env: 'A=B' is not an environment variable name"),
        ({"cwd": "/no/such/folder"}, "simulator.cwd: '/no/such/folder' is not a folder"),
        ({"parameters": {"frequency": {"low": 2.0, "high": 1.0}}}, "simulator.parameters: "),
    ],
)
def test_bad_arguments_are_refused_naming_the_field(change, message):
    arguments = {**travelling_wave_arguments(3), **change}
    with pytest.raises(ExecutableSimulatorError, match=message.replace("(", r"\(")):
        ExecutableSimulator(**arguments)


def test_a_program_runs_in_its_folder_with_its_environment(tmp_path):
    """``cwd`` and ``env`` reach the program, with no shell parsing its words."""
    program = tmp_path / "wave.sh"
    # a program found relative to cwd that checks where it runs and what it was given
    program.write_text(
        "#!/bin/sh\n"
        f'[ "$(pwd)" = "{tmp_path}" ] || exit 9\n'
        '[ "$WAVE_MARK" = "a b;c" ] || exit 8\n'
        f'exec "{sys.executable}" "{TRAVELLING_WAVE}" "$@"\n'
    )
    program.chmod(0o755)
    arguments = travelling_wave_arguments(2)
    sim = ExecutableSimulator(
        **{**arguments, "argv": ["./wave.sh", *arguments["argv"][2:]]}, env={"WAVE_MARK": "a b;c"}, cwd=tmp_path
    )
    assert len(list(sim.run({"frequency": 1.0, "damping": 0.0}))) == 2


def test_a_program_of_ones_own_declares_its_parameters_whole(capsys, tmp_path, monkeypatch):
    """The example wave's parameters are its own: another program with none declared is refused,
    and the ones it declares are all it has (never merged with the wave's)."""
    monkeypatch.chdir(tmp_path)
    program = tmp_path / "mine.sh"
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{TRAVELLING_WAVE}" "$@"\n')
    program.chmod(0o755)
    argv = f"simulator.argv=[{program},'{{address}}','{{simulation_id}}','{{attempt}}']"
    assert main(["run", "simulator=command", argv, f"hydra.run.dir={tmp_path}"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith("engage run: simulator.parameters: declare your program's parameters, e.g. ++simulator.parameters=")
    )
    cfg = compose_config(["simulator=command", argv, "++simulator.parameters={omega: {low: 1, high: 3}}"])
    assert list(cfg.simulator.parameters) == ["omega"]
    assert list(instantiate(cfg.simulator).space.names) == ["omega"]
    # the example wave, as it ships, keeps its own
    assert list(instantiate(compose_config(["simulator=command"]).simulator).space.names) == ["frequency", "damping"]


def test_bad_command_line_from_engage_run_is_one_line_and_exit_code_2(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # checked when the config is composed, before Hydra's app (or anything else) starts
    argv = "simulator.argv=[nope,'{address}','{simulation_id}','{attempt}']"
    assert main(["run", "simulator=command", argv, f"hydra.run.dir={tmp_path}"]) == 2
    assert not (tmp_path / "online").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "engage run: simulator.argv: program 'nope' not found on PATH; give a path or a program on PATH"
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


@pytest.fixture(scope="session")
def c_wave(tmp_path_factory):
    """The C example client, compiled against the system's libzmq (Debian's libzmq3-dev, which
    ``make test`` installs)."""
    import shutil
    import subprocess

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not Path("/usr/include/zmq.h").exists():
        pytest.skip("no C compiler or libzmq headers (apt-get install libzmq3-dev)")
    binary = tmp_path_factory.mktemp("c-client") / "travelling_wave"
    source = Path(TRAVELLING_WAVE).with_suffix(".c")
    subprocess.run([compiler, "-O2", "-Wall", "-Werror", "-o", str(binary), str(source), "-lzmq", "-lm"], check=True)
    return str(binary)


class TestCClient(SimulatorSuite):
    """The C client authenticates with CURVE (libzmq's API) and passes the conformance suite."""

    @pytest.fixture
    def simulator(self, c_wave):
        return ExecutableSimulator(
            [c_wave, *IDS, "3"], TRAVELLING_WAVE_SPACE, sample_shape=(16, 16), samples_per_run=3, value_range=(-1, 1)
        )


@pytest.mark.parametrize("security", ["curve", "ipc"])
def test_the_c_client_sends_the_same_wave_as_the_python_one(c_wave, security, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("travelling_wave_example", TRAVELLING_WAVE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    sim = ExecutableSimulator([c_wave, *IDS, "4"], TRAVELLING_WAVE_SPACE, sample_shape=(16, 16), samples_per_run=4)
    dm = OnlineDataModule(
        sim, UniformSampler(sim.space, seed=3), simulations=2, val_simulations=0, batch_size=4, capacity=16,
        policy="fifo", max_reads=1, transport_security=security, workdir=str(tmp_path),
    )  # fmt: skip
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
        enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(Flat(), datamodule=dm)
    assert dm.outcome().completed == 2 and dm.outcome().samples_received == 8
    frequency, damping = 1.3, 0.2
    (sample, *_rest) = ExecutableSimulator(
        [c_wave, *IDS, "2"], TRAVELLING_WAVE_SPACE, sample_shape=(16, 16), samples_per_run=2
    ).run({"frequency": frequency, "damping": damping})
    np.testing.assert_allclose(sample, example.field(frequency, damping, 0), atol=1e-6)


def test_the_c_client_stops_at_once_when_the_trainer_refuses_its_keys_or_it_has_none(c_wave, tmp_path):
    import json
    import os
    import subprocess
    import time

    import zmq

    from engage.core.online.security import RunKeys, serve_curve

    context = zmq.Context()
    keys = RunKeys(str(tmp_path / "keys"))
    server = context.socket(zmq.ROUTER)
    authenticator = serve_curve(context, server, keys)
    address = f"tcp://127.0.0.1:{server.bind_to_random_port('tcp://127.0.0.1')}"
    public, secret = zmq.curve_keypair()
    foreign = json.dumps({"server": keys.server_public.decode(), "public": public.decode(), "secret": secret.decode()})
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGAGE_KEY")}
    try:
        started = time.monotonic()
        refused = subprocess.run([c_wave, address, "0", "0", "3"], env={**env, "ENGAGE_KEYS": foreign},
                                 capture_output=True, text=True, timeout=30)  # fmt: skip
        assert time.monotonic() - started < 10  # not the 60 s of a silent trainer
        assert refused.returncode == 1
        assert refused.stderr.startswith("the trainer refused this simulation's keys (CURVE authentication failed, "
                                         "status 400)"), refused.stderr  # fmt: skip
        bare = subprocess.run([c_wave, address, "0", "0", "3"], env=env, capture_output=True, text=True, timeout=30)
        assert bare.returncode == 2 and bare.stderr.startswith(f"no keys for {address}"), bare.stderr
        # strings that are no Z85 keys (libzmq would go on without CURVE), and a key file others can read
        junk = json.dumps({"server": "!" * 40, "public": "~" * 40, "secret": "~" * 40})
        bad = subprocess.run([c_wave, address, "0", "0", "3"], env={**env, "ENGAGE_KEYS": junk},
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        assert bad.returncode == 2 and "holds keys libzmq refuses" in bad.stderr, bad.stderr
        shared = tmp_path / "keys.json"
        shared.write_text(foreign)
        shared.chmod(0o644)
        loose = subprocess.run([c_wave, address, "0", "0", "3"], env={**env, "ENGAGE_KEY_FILE": str(shared)},
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        assert loose.returncode == 2 and "is readable by others (mode 644)" in loose.stderr, loose.stderr
    finally:
        server.close(linger=0)
        authenticator.stop()
        context.term()
        keys.close()
