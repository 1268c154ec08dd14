"""A checkpoint of another simulator, parameter space or sampler is refused in one line that
says what differs."""

from __future__ import annotations

import pytest

from engage.core.online.datamodule import _describe, check_resumable
from engage.core.samplers.uniform import UniformSampler
from engage.core.simulators.heat import HeatEquation
from engage.core.space import ParameterSpace


def _state(simulator, sampler) -> dict:
    return {
        "simulator": _describe(simulator),
        "sampler": type(sampler).__name__,
        "ranks": [{"sampler": {"space": sampler.space.to_config()}}],
    }


def test_the_same_run_resumes():
    sim = HeatEquation(grid=8, steps=8)
    check_resumable(_state(sim, UniformSampler(sim.space)), HeatEquation(grid=8, steps=8), UniformSampler(sim.space))


def test_another_simulator_is_refused_naming_what_differs():
    sim = HeatEquation(grid=8, steps=8)
    state = _state(sim, UniformSampler(sim.space))
    other = HeatEquation(grid=16, steps=9)
    with pytest.raises(ValueError) as refused:
        check_resumable(state, other, UniformSampler(other.space))
    line = str(refused.value)
    assert "another simulator" in line and "\n" not in line
    assert "samples_per_run: 9 -> 10" in line or "samples_per_run: 8 -> 9" in line, line
    assert "sample_shape" in line, line


def test_another_sampler_or_parameter_space_is_refused():
    sim = HeatEquation(grid=8, steps=8)
    state = _state(sim, UniformSampler(sim.space))

    class LatinHypercube(UniformSampler):
        pass

    with pytest.raises(ValueError, match="written with sampler UniformSampler, this run uses LatinHypercube"):
        check_resumable(state, sim, LatinHypercube(sim.space))
    narrower = {name: dict(p) for name, p in sim.space.to_config().items()}
    first = next(iter(narrower))
    narrower[first]["high"] = narrower[first]["high"] / 2
    state.pop("simulator")  # a checkpoint that names no simulator: the space is still compared
    with pytest.raises(ValueError, match=rf"another parameter space \(checkpoint -> this run: {first}\.high: "):
        check_resumable(state, sim, UniformSampler(ParameterSpace.from_config(narrower)))


def test_other_simulator_settings_are_refused():
    """Settings the simulator's description does not show (a heat simulator's ``alpha``) are its
    configured arguments, compared too where both the checkpoint and the run have them."""
    sim = HeatEquation(grid=8, steps=8)
    settings = {"target": "engage.core.simulators.heat.HeatEquation", "kwargs": {"grid": 8, "alpha": 1.0}}
    state = {**_state(sim, UniformSampler(sim.space)), "simulator_settings": settings}
    check_resumable(state, sim, UniformSampler(sim.space), settings)
    check_resumable(state, sim, UniformSampler(sim.space))  # a DataModule given no simulator spec
    hotter = {**settings, "kwargs": {"grid": 8, "alpha": 3.0}}
    with pytest.raises(
        ValueError, match=r"other simulator settings \(checkpoint -> this run: kwargs.alpha: 1.0 -> 3.0\)"
    ):
        check_resumable(state, sim, UniformSampler(sim.space), hotter)
