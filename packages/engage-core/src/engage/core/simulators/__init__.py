"""Simulators: given a parameter vector, a stream of samples of a declared shape and dtype."""

from engage.core.simulators.base import Simulator, SimulatorOutputError
from engage.core.simulators.executable import ExecutableSimulator
from engage.core.simulators.function import FunctionSimulator
from engage.core.simulators.heat import HeatEquation

__all__ = ["ExecutableSimulator", "FunctionSimulator", "HeatEquation", "Simulator", "SimulatorOutputError"]
