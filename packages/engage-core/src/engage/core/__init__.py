"""ENGAGE core: plugin system, parameter spaces, samplers, simulators, and ``engage run``.

The classes below are imported on first use (:mod:`engage.core.lazy`): a process that needs a
small part of the package (a sweep job's runner, the CLI printing its help) does not pay for NumPy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engage.core.hookspecs import hookimpl, hookspec
from engage.core.lazy import lazy_exports

if TYPE_CHECKING:
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

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "FailureAction": "engage.core.samplers.base",
        "Sampler": "engage.core.samplers.base",
        "UniformSampler": "engage.core.samplers.uniform",
        "Simulator": "engage.core.simulators.base",
        "Parameter": "engage.core.space",
        "ParameterSpace": "engage.core.space",
        "ParameterSpaceError": "engage.core.space",
    },
    globals(),
)
