import numpy as np
import pytest

from engage.core import UniformSampler
from engage.core.testing import SamplerSuite, parameter_spaces


class TestUniformSampler(SamplerSuite):
    @pytest.fixture
    def make_sampler(self):
        return lambda space, seed: UniformSampler(space, seed=seed)


def test_uniform_sampler_covers_the_space_evenly():
    space = parameter_spaces()["continuous"]
    points = space.to_unit(UniformSampler(space, seed=0).ask(4000))
    counts, _ = np.histogram(points[:, 0], bins=10, range=(0, 1))
    assert counts.min() > 320 and counts.max() < 480


def test_ask_rejects_bad_counts():
    sampler = UniformSampler(parameter_spaces()["one"])
    with pytest.raises(ValueError, match="non-negative integer"):
        sampler.ask(-1)


def test_a_sampler_that_produces_nan_is_stopped_at_ask():
    class Broken(UniformSampler):
        def _ask(self, n):
            points = super()._ask(n)
            points[1, 0] = np.nan
            return points

    space = parameter_spaces()["continuous"]
    sampler = Broken(space, seed=0)
    with pytest.raises(ValueError, match=rf"Broken asked point 1 with parameter '{space.names[0]}' = nan"):
        sampler.ask(3)
    assert sampler.num_asked == 0
