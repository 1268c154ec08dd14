"""Samplers of engage-sampling; each one follows :class:`engage.core.Sampler` (ask, tell, state)."""

from engage.sampling.samplers.image_similarity import ImageSimilaritySampler
from engage.sampling.samplers.lhs import LatinHypercubeSampler
from engage.sampling.samplers.loss_driven import LossDrivenSampler
from engage.sampling.samplers.morris import MorrisSampler
from engage.sampling.samplers.salib_sobol import SALibSobolSampler
from engage.sampling.samplers.sensitivity_weighted import SensitivityWeightedSampler
from engage.sampling.samplers.sobol_sequence import SobolSequenceSampler
from engage.sampling.samplers.structured import StructuredDesignSampler

__all__ = [
    "ImageSimilaritySampler",
    "LatinHypercubeSampler",
    "LossDrivenSampler",
    "MorrisSampler",
    "SALibSobolSampler",
    "SensitivityWeightedSampler",
    "SobolSequenceSampler",
    "StructuredDesignSampler",
]
