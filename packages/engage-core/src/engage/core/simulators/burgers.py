"""The 1D viscous Burgers equation: a problem whose difficulty varies across parameter space.

At high viscosity the initial sine wave diffuses smoothly; at low viscosity it steepens into a
shock that a surrogate finds much harder to learn. A sampler that puts more simulations where
the network's loss is high should find the low-viscosity region.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from engage.core.simulators.base import Simulator
from engage.core.space import ParameterSpace

PARAMETERS = ("nu", "amplitude", "phase")


def _minmod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # the smaller slope when both have the same sign, else 0 (sign(a) + sign(b) is then 0)
    return 0.5 * (np.sign(a) + np.sign(b)) * np.minimum(np.abs(a), np.abs(b))


def godunov_flux(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The exact Riemann (Godunov) flux of ``f(u) = u^2 / 2`` between interface states.

    For a convex flux with its minimum at 0 it is ``max(f(max(uL, 0)), f(min(uR, 0)))``: the
    upwind value for waves moving one way, zero at a sonic rarefaction, and the upwind side of a
    shock by the sign of its speed.

    Example::

        >>> godunov_flux(np.array([2.0, -1.0, -1.0, 1.0]), np.array([1.0, -2.0, 1.0, -3.0])).tolist()
        [2.0, 2.0, 0.0, 4.5]
    """
    return 0.5 * np.maximum(np.maximum(left, 0.0) ** 2, np.minimum(right, 0.0) ** 2)


class ViscousBurgers(Simulator):
    """``du/dt + d(u^2/2)/dx = nu d2u/dx2`` on the periodic unit interval, ``grid`` finite volumes.

    Parameters: the viscosity ``nu`` (log-uniform in ``[nu_low, nu_high]``, from smooth decay at
    the top of the range to a sharp shock at the bottom), and the initial condition
    ``u0(x) = offset + amplitude * sin(2 pi x + phase)`` (``amplitude`` uniform in
    ``[amplitude_low, amplitude_high]``, ``phase`` uniform in ``[phase_low, phase_high]``, by
    default the whole period ``[0, 2 pi]``).

    The solver is conservative: a second-order MUSCL reconstruction (minmod limiter) with the
    exact Godunov flux for the convective term, central differences for diffusion, and Heun's
    method (SSP Runge-Kutta 2) in time with an explicit step limited by both the convective CFL
    number and the diffusion number, ``dt = cfl / (max|u| / dx + 2 nu / dx^2)``. The total mass
    ``sum(u) * dx`` is conserved to round-off and the field stays within the initial extremes
    (maximum principle), hence :attr:`value_range`.

    Each run yields the field at ``steps`` equally spaced times up to ``t_final`` (the last at
    ``t_final``) as a float32 array: ``samples_per_run == steps``. Its shape is ``(1, grid)``, one
    row, so that models of 2D fields (the default surrogate) take it, or ``(grid,)`` with
    ``row=False``. A run of the default grid takes from about 20 ms (low viscosity) to 0.2 s
    (high viscosity: the diffusion number limits the time step).

    Example::

        >>> sim = ViscousBurgers(grid=64, steps=4, row=False)
        >>> smooth = list(sim.run({"nu": 0.05, "amplitude": 1.0, "phase": 0.0}))
        >>> sharp = list(sim.run({"nu": 0.001, "amplitude": 1.0, "phase": 0.0}))
        >>> len(sharp), sharp[-1].shape
        (4, (64,))
        >>> def steepest(u):
        ...     return float(np.abs(np.diff(u)).max() * 64)
        >>> steepest(sharp[-1]) > 10 * steepest(smooth[-1])  # a shock forms at low viscosity
        True
        >>> bool(abs(sharp[-1].mean() - sharp[0].mean()) < 1e-6)  # mass is conserved
        True
    """

    fresh_samples = True  # every snapshot is a new array (astype copies)

    def __init__(
        self,
        grid: int = 128,
        steps: int = 50,
        t_final: float = 0.5,
        nu_low: float = 1e-3,
        nu_high: float = 5e-2,
        amplitude_low: float = 0.5,
        amplitude_high: float = 1.5,
        offset: float = 0.5,
        cfl: float = 0.4,
        row: bool = True,
        phase_low: float = 0.0,
        phase_high: float = 2.0 * math.pi,
    ):
        if grid < 8:
            raise ValueError(f"grid must be >= 8, got {grid}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not t_final > 0:
            raise ValueError(f"t_final must be > 0, got {t_final}")
        if not 0 < nu_low < nu_high:
            raise ValueError(f"need 0 < nu_low < nu_high, got {nu_low} and {nu_high}")
        if not 0 <= amplitude_low < amplitude_high:
            raise ValueError(f"need 0 <= amplitude_low < amplitude_high, got {amplitude_low} and {amplitude_high}")
        if not 0 < cfl <= 0.5:
            raise ValueError(f"cfl must be in (0, 0.5], got {cfl}")
        if not phase_low < phase_high:
            raise ValueError(f"need phase_low < phase_high, got {phase_low} and {phase_high}")
        self.grid = int(grid)
        self.steps = int(steps)
        self.t_final = float(t_final)
        self.offset = float(offset)
        self.cfl = float(cfl)
        self.dx = 1.0 / self.grid
        self.x = (np.arange(self.grid) + 0.5) * self.dx  # cell centres
        self.space = ParameterSpace.from_config(
            {
                "nu": {"distribution": "loguniform", "low": nu_low, "high": nu_high},
                "amplitude": {"low": amplitude_low, "high": amplitude_high},
                "phase": {"low": float(phase_low), "high": float(phase_high), "unit": "rad"},
            }
        )
        self.sample_shape = (1, self.grid) if row else (self.grid,)
        self.dtype = np.dtype("float32")
        self.samples_per_run = self.steps
        # maximum principle: u stays between the extremes of the initial sine
        self.value_range = (self.offset - float(amplitude_high), self.offset + float(amplitude_high))

    def initial_condition(self, amplitude: float, phase: float) -> np.ndarray:
        """Cell averages of ``offset + amplitude * sin(2 pi x + phase)`` (exact, so the initial
        mass is exactly ``offset``)."""
        k = 2.0 * math.pi
        left = self.x - 0.5 * self.dx
        # average of sin over a cell: (cos(k a + p) - cos(k b + p)) / (k dx)
        average = (np.cos(k * left + phase) - np.cos(k * (left + self.dx) + phase)) / (k * self.dx)
        return self.offset + amplitude * average

    def _rate(self, u: np.ndarray, nu: float) -> np.ndarray:
        # two ghost cells on each side carry the periodic neighbours
        extended = np.concatenate((u[-2:], u, u[:2]))
        jumps = np.diff(extended)  # jumps[j] = extended[j + 1] - extended[j]
        slope = _minmod(jumps[:-1], jumps[1:])  # limited slopes of extended cells 1 .. n + 2
        # states on either side of the n + 1 interfaces from the left face of cell 0 to the right of n - 1
        left = extended[1:-2] + 0.5 * slope[:-1]
        right = extended[2:-1] - 0.5 * slope[1:]
        flux = godunov_flux(left, right)
        convection = np.diff(flux) / self.dx
        diffusion = nu * np.diff(jumps[1:-1]) / self.dx**2
        return diffusion - convection

    def _time_step(self, u: np.ndarray, nu: float) -> float:
        speed = float(np.abs(u).max())
        return self.cfl / (speed / self.dx + 2.0 * nu / self.dx**2)

    def simulate(self, parameters: np.ndarray) -> Iterator[np.ndarray]:
        nu, amplitude, phase = (float(v) for v in parameters)
        u = self.initial_condition(amplitude, phase)
        t = 0.0
        for index in range(1, self.steps + 1):
            t_out = self.t_final * index / self.steps
            while t < t_out:
                dt = self._time_step(u, nu)
                if t + dt >= t_out:  # land on the output time exactly
                    dt, t = t_out - t, t_out
                else:
                    t += dt
                stage = u + dt * self._rate(u, nu)
                u = 0.5 * (u + stage + dt * self._rate(stage, nu))
            yield u.astype(np.float32).reshape(self.sample_shape)


@dataclass
class BurgersSimulatorConfig:
    """The 1D viscous Burgers equation (:class:`engage.core.simulators.burgers.ViscousBurgers`),
    selected with ``engage run simulator=burgers``."""

    _target_: str = "engage.core.simulators.burgers.ViscousBurgers"
    grid: int = 128
    steps: int = 50
    t_final: float = 0.5
    nu_low: float = 1e-3
    nu_high: float = 5e-2
    amplitude_low: float = 0.5
    amplitude_high: float = 1.5
    offset: float = 0.5
    cfl: float = 0.4
    row: bool = True
    phase_low: float = 0.0
    phase_high: float = 2.0 * math.pi

    def __post_init__(self) -> None:
        # imported here: the config schema pulls in OmegaConf, the simulator itself does not need it
        from engage.core.config.schema import ConfigValueError

        if self.grid < 8:
            raise ConfigValueError("grid", f"must be >= 8, got {self.grid}")
        if self.steps < 1:
            raise ConfigValueError("steps", f"must be >= 1, got {self.steps}")
        if not self.t_final > 0:
            raise ConfigValueError("t_final", f"must be > 0, got {self.t_final}")
        if not 0 < self.nu_low < self.nu_high:
            raise ConfigValueError("nu_low", f"must be > 0 and < nu_high ({self.nu_high}), got {self.nu_low}")
        if not self.phase_low < self.phase_high:
            raise ConfigValueError("phase_low", f"must be < phase_high ({self.phase_high}), got {self.phase_low}")
        if not 0 <= self.amplitude_low < self.amplitude_high:
            raise ConfigValueError(
                "amplitude_low", f"must be >= 0 and < amplitude_high ({self.amplitude_high}), got {self.amplitude_low}"
            )
        if not 0 < self.cfl <= 0.5:
            raise ConfigValueError("cfl", f"must be in (0, 0.5], got {self.cfl}")
