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
