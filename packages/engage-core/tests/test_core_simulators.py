import numpy as np
import pytest

from engage.core.simulators import HeatEquation
from engage.core.testing import SimulatorSuite


class TestHeatEquation(SimulatorSuite):
    @pytest.fixture
    def simulator(self):
        return HeatEquation(grid=12, steps=6)


def test_heat_reaches_the_steady_state_of_laplace():
    # uniform boundary temperature: the interior relaxes to it
    sim = HeatEquation(grid=10, steps=200, dt=0.01)
    last = list(sim.run([100, 400, 400, 400, 400]))[-1]
    np.testing.assert_allclose(last, 400.0, atol=0.5)


def test_heat_flows_from_the_hot_boundary_and_is_symmetric():
    sim = HeatEquation(grid=16, steps=10)
    fields = list(sim.run([200, 500, 100, 300, 300]))
    last = fields[-1]
    assert last[0].mean() > last[-1].mean()
    np.testing.assert_allclose(last, last[:, ::-1], rtol=1e-5)  # left = right boundary
    assert np.all(np.diff([f[0].mean() for f in fields]) > 0)  # the top row keeps warming


def test_heat_rejects_bad_settings():
    with pytest.raises(ValueError, match="grid must be >= 3"):
        HeatEquation(grid=2)


def test_the_suite_says_which_sample_breaks_the_declaration():
    """The suite is not a test module of the user's: its assertions say what is wrong themselves."""

    class Leaky(HeatEquation):
        def run(self, parameters):
            for i, field in enumerate(super().run(parameters)):
                if i == 2:
                    field = field.copy()
                    field[0, 0] = np.nan
                yield field
            yield field  # one more than declared

    suite = SimulatorSuite()
    with pytest.raises(AssertionError, match="sample 2 has 1 values that are NaN or infinite"):
        suite.test_samples_match_declaration(Leaky(grid=8, steps=4))
    flat = HeatEquation(grid=8, steps=4)
    flat.sample_shape = (0, 8)
    with pytest.raises(AssertionError, match=r"sample_shape \(0, 8\) has a size that is not positive"):
        suite.test_declares_its_contract(flat)
