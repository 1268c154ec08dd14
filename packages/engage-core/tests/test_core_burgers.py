"""The 1D viscous Burgers simulator: the stream contract, its physics and its registration."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from engage.core.simulators.burgers import BurgersSimulatorConfig, ViscousBurgers, godunov_flux
from engage.core.testing import SimulatorSuite


class TestViscousBurgers(SimulatorSuite):
    @pytest.fixture
    def simulator(self):
        return ViscousBurgers(grid=32, steps=6, t_final=0.3)


class TestViscousBurgersFlat(SimulatorSuite):
    @pytest.fixture
    def simulator(self):
        return ViscousBurgers(grid=16, steps=3, row=False)


def _steepest(u: np.ndarray) -> float:
    """Largest |du/dx| on the periodic grid."""
    return float(np.abs(np.diff(np.r_[u, u[0]])).max() * len(u))


def test_low_viscosity_forms_a_shock_and_high_viscosity_stays_smooth():
    sim = ViscousBurgers()  # the default grid and range
    finals = {nu: list(sim.run({"nu": nu, "amplitude": 1.0, "phase": 0.3}))[-1][0] for nu in (1e-3, 5e-2)}
    sharp, smooth = _steepest(finals[1e-3]), _steepest(finals[5e-2])
    assert sharp > 10 * smooth, (sharp, smooth)
    # the initial steepest slope is 2 pi: low viscosity steepens it, high viscosity flattens it
    assert sharp > 5 * 2 * np.pi and smooth < 2 * np.pi


@pytest.mark.parametrize("nu", [1e-3, 1e-2, 5e-2])
def test_mass_is_conserved_and_values_stay_in_range(nu):
    sim = ViscousBurgers()
    fields = np.asarray(list(sim.run({"nu": nu, "amplitude": 1.5, "phase": 2.0})), dtype=np.float64)[:, 0]
    mass = fields.sum(axis=1) * sim.dx  # the integral of u over the periodic interval
    np.testing.assert_allclose(mass, sim.offset, rtol=1e-6)
    low, high = sim.value_range
    assert fields.min() >= low - 1e-6 and fields.max() <= high + 1e-6
    assert np.all(np.diff(np.abs(fields - sim.offset).max(axis=1)) <= 1e-6)  # the wave only decays


def test_initial_state_is_the_cell_average_of_the_sine():
    sim = ViscousBurgers(grid=256)
    u0 = sim.initial_condition(1.0, 0.5)
    np.testing.assert_allclose(u0, 0.5 + np.sin(2 * np.pi * sim.x + 0.5), atol=1e-4)
    assert abs(u0.mean() - 0.5) < 1e-12


def test_godunov_flux_is_upwind_and_picks_the_entropy_solution():
    f = 0.5 * np.array([3.0, -2.0]) ** 2
    # right-moving and left-moving waves: upwind values
    assert godunov_flux(np.array([3.0]), np.array([4.0]))[0] == f[0]
    assert godunov_flux(np.array([-3.0]), np.array([-2.0]))[0] == f[1]
    # transonic rarefaction: the sonic point, zero flux; shocks: upwind of the shock speed's sign
    assert godunov_flux(np.array([-1.0]), np.array([1.0]))[0] == 0.0
    assert godunov_flux(np.array([3.0]), np.array([-2.0]))[0] == f[0]
    assert godunov_flux(np.array([2.0]), np.array([-3.0]))[0] == 4.5


def test_bad_arguments_and_config_values_are_rejected():
    with pytest.raises(ValueError, match="nu_low"):
        ViscousBurgers(nu_low=0.1, nu_high=0.01)
    with pytest.raises(ValueError, match="cfl"):
        ViscousBurgers(cfl=0.9)
    with pytest.raises(ValueError, match="grid"):
        OmegaConf.to_object(OmegaConf.structured(BurgersSimulatorConfig(grid=4)))
    with pytest.raises(ValueError, match="phase_low"):
        ViscousBurgers(phase_low=1.0, phase_high=1.0)
    with pytest.raises(ValueError, match="phase_low"):
        OmegaConf.to_object(OmegaConf.structured(BurgersSimulatorConfig(phase_low=2.0, phase_high=1.0)))


def test_the_phase_range_bounds_the_initial_wave():
    narrow = ViscousBurgers(grid=32, steps=2, phase_low=0.0, phase_high=0.5)
    assert narrow.space.bounds[2].tolist() == [0.0, 0.5]
    # a phase is a shift of the wave: the initial condition at phase p is the one at 0, moved
    shifted = narrow.initial_condition(1.0, 2 * np.pi / 32 * 3)  # three cells to the left
    assert np.allclose(shifted, np.roll(narrow.initial_condition(1.0, 0.0), -3))


def test_registered_as_a_simulator_and_a_config_option():
    from engage.core.config.store import config_options
    from engage.core.plugins import get_plugin_manager, simulators

    manager = get_plugin_manager()
    assert simulators(manager)["burgers"] is ViscousBurgers
    options = {(o.group, o.name): o.node for _, o in config_options(manager)}
    node = options[("simulator", "burgers")]
    built = OmegaConf.to_object(OmegaConf.structured(node))
    assert built._target_ == "engage.core.simulators.burgers.ViscousBurgers"
