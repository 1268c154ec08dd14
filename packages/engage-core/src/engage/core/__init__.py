"""ENGAGE core: plugin system, parameter spaces, samplers, simulators, and ``engage run``."""

from engage.core.hookspecs import hookimpl, hookspec
from engage.core.samplers.base import FailureAction, Sampler
from engage.core.samplers.uniform import UniformSampler
from engage.core.simulators.base import Simulator
from engage.core.space import Parameter, ParameterSpace, ParameterSpaceError

__version__ = "0.1.0"

__all__ = [
    "FailureAction",
    "Parameter",
    "ParameterSpace",
    "ParameterSpaceError",
    "Sampler",
    "Simulator",
    "UniformSampler",
    "hookimpl",
    "hookspec",
]
