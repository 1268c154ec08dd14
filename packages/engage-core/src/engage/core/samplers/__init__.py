"""Samplers: which simulation parameters to run next. Core ships :class:`UniformSampler`."""

from engage.core.samplers.base import FailureAction, Sampler
from engage.core.samplers.uniform import UniformSampler

__all__ = ["FailureAction", "Sampler", "UniformSampler"]
