"""Samplers of engage-sampling; each one follows :class:`engage.core.Sampler` (ask, tell, state).

Imported on first use (:mod:`engage.core.lazy`): the SALib-based ones bring SciPy and pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engage.core.lazy import lazy_exports

if TYPE_CHECKING:
    from engage.sampling.samplers.breed import BreedSampler
    from engage.sampling.samplers.image_similarity import ImageSimilaritySampler
    from engage.sampling.samplers.lhs import LatinHypercubeSampler
    from engage.sampling.samplers.loss_density import LossDensitySampler
    from engage.sampling.samplers.loss_driven import LossDrivenSampler
    from engage.sampling.samplers.morris import MorrisSampler
    from engage.sampling.samplers.salib_sobol import SALibSobolSampler
    from engage.sampling.samplers.sensitivity_weighted import SensitivityWeightedSampler
    from engage.sampling.samplers.sobol_sequence import SobolSequenceSampler
    from engage.sampling.samplers.structured import StructuredDesignSampler

#: public class -> the module that defines it
SAMPLER_MODULES = {
    "BreedSampler": "engage.sampling.samplers.breed",
    "ImageSimilaritySampler": "engage.sampling.samplers.image_similarity",
    "LatinHypercubeSampler": "engage.sampling.samplers.lhs",
    "LossDensitySampler": "engage.sampling.samplers.loss_density",
    "LossDrivenSampler": "engage.sampling.samplers.loss_driven",
    "MorrisSampler": "engage.sampling.samplers.morris",
    "SALibSobolSampler": "engage.sampling.samplers.salib_sobol",
    "SensitivityWeightedSampler": "engage.sampling.samplers.sensitivity_weighted",
    "SobolSequenceSampler": "engage.sampling.samplers.sobol_sequence",
    "StructuredDesignSampler": "engage.sampling.samplers.structured",
}

__all__ = [
    "BreedSampler",
    "ImageSimilaritySampler",
    "LatinHypercubeSampler",
    "LossDensitySampler",
    "LossDrivenSampler",
    "MorrisSampler",
    "SALibSobolSampler",
    "SensitivityWeightedSampler",
    "SobolSequenceSampler",
    "StructuredDesignSampler",
]

__getattr__, __dir__ = lazy_exports(__name__, SAMPLER_MODULES, globals())
