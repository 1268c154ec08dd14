"""The reference simulators of online training: image renderer and function simulators."""

from __future__ import annotations

import numpy as np
import pytest

from engage.core.simulators.function import FunctionSimulator
from engage.core.simulators.render import ImageRenderer
from engage.core.testing import SimulatorSuite


class TestImageRenderer(SimulatorSuite):
    @pytest.fixture
    def simulator(self):
        return ImageRenderer(size=16)


def render(**overrides) -> np.ndarray:
    params = {"light_azimuth": 0, "light_elevation": 45, "albedo": 0.8, "shininess": 10, "shape_size": 0.8}
    params.update({"shape": "sphere"}, **overrides)
    return next(ImageRenderer(size=32).run(params))


def test_renderer_shading_follows_the_light_and_shape():
    left, right = render(light_azimuth=-90), render(light_azimuth=90)
    # the lit half of the sphere follows the light
    assert left[:, :16].mean() > left[:, 16:].mean() and right[:, 16:].mean() > right[:, :16].mean()
    assert render(albedo=0.3).mean() < render(albedo=1.0).mean()
    sphere, box, torus = render(), render(shape="box"), render(shape="torus")
    assert (sphere > 0).sum() != (box > 0).sum() and torus[16, 16] == 0.0  # the torus has a hole


def ones(parameters, steps=2):
    for _ in range(steps):
        yield np.full(3, parameters["a"], dtype=np.float32)


def test_function_simulator_describes_itself_for_processes():
    sim = FunctionSimulator(ones, {"a": {"low": 0, "high": 1}}, sample_shape=(3,), samples_per_run=2)
    spec = sim.launch_spec()
    assert spec["kwargs"]["function"].endswith(":ones")
    assert FunctionSimulator(lambda p: iter(()), {"a": {"low": 0, "high": 1}}, (3,)).launch_spec() is None
    with pytest.raises(ValueError, match="has shape"):
        list(FunctionSimulator(ones, {"a": {"low": 0, "high": 1}}, sample_shape=(4,)).run([0.5]))


SIMULATOR_MODULE = """
import numpy as np

def ramp(p, steps=4):
    for t in range(steps):
        yield np.full((3,), float(p["a"]) * t, dtype=np.float32)
"""

SCRIPT = """
import lightning.pytorch as pl
import torch

from engage.core.online import OnlineDataModule
from engage.core.samplers import UniformSampler
from engage.core.simulators.function import FunctionSimulator


class Model(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 3)

    def training_step(self, batch, i):
        x = torch.cat([batch["parameters"], batch["time"]], 1)
        return torch.nn.functional.mse_loss(self.net(x), batch["target"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), 0.01)


sim = FunctionSimulator("mysim:ramp", {"a": {"low": 0.0, "high": 1.0}}, sample_shape=(3,), samples_per_run=4)
dm = OnlineDataModule(sim, UniformSampler(sim.space, seed=0), simulations=2, val_simulations=0, batch_size=4,
                      batches_per_epoch=2, policy="fifo")
pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
           enable_model_summary=False).fit(Model(), datamodule=dm)
print(dm.outcome().line())
"""


@pytest.mark.slow
def test_a_simulator_beside_a_script_run_from_another_folder_is_imported_by_its_processes(tmp_path):
    """``python proj/train.py`` from another folder: the script imports ``mysim`` from its own
    folder, and so must the simulation processes, fresh interpreters started with ``-m``."""
    import subprocess
    import sys

    project = tmp_path / "proj"
    project.mkdir()
    (project / "mysim.py").write_text(SIMULATOR_MODULE)
    (project / "train.py").write_text(SCRIPT)
    done = subprocess.run([sys.executable, "proj/train.py"], cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 received, 8 trained" in done.stdout, done.stdout[-2000:]


def test_a_datamodule_refuses_what_is_no_simulator_or_no_sampler_of_its_space_in_one_line():
    """Each failed only inside the simulation processes, after their retries (a class where an
    instance is due: a missing argument of ``run``; a sampler of another simulator: a count of
    parameters), or at the first batch (``None``: an attribute error)."""
    from engage.core.online import OnlineDataModule
    from engage.core.samplers import UniformSampler
    from engage.core.simulators import HeatEquation
    from engage.core.simulators.burgers import ViscousBurgers

    heat = HeatEquation(grid=8, steps=4)
    other = UniformSampler(ViscousBurgers().space)
    cases = [
        ((HeatEquation, UniformSampler(heat.space)), "simulator is the class HeatEquation, not a simulator; pass"),
        ((heat, None), "sampler is NoneType, not a Sampler; pass one made on the simulator's space"),
        ((heat, UniformSampler), "sampler is the class UniformSampler, not a Sampler"),
        ((heat, other), r"sampler draws \(.*\) but HeatEquation takes \(.*\); make the sampler on simulator.space"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message) as refused:
            OnlineDataModule(*args)
        assert "\n" not in str(refused.value)
