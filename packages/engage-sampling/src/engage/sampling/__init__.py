"""ENGAGE sampling: which simulations to run.

Samplers (Latin hypercube, Sobol' sequence, SALib Sobol and Morris designs, loss-driven,
loss-density, Breed, sensitivity-weighted and image-similarity refinement) follow the :class:`engage.core.Sampler`
contract, so ``engage run sampler=NAME`` and the online DataModule's scheduler can use them.
Lightning callbacks (:mod:`engage.sampling.callbacks`) analyse the model during training and steer
the active sampler; :func:`active_learning` drives a sampler with a plain ``simulate`` function.

Public names are imported on first use (:mod:`engage.core.lazy`): the plugin, which Hydra loads
to compose any config, does not import SALib, pandas or scikit-image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engage.core.lazy import lazy_exports
from engage.sampling.samplers import SAMPLER_MODULES

if TYPE_CHECKING:
    from engage.sampling.active_learning import ActiveLearningResult, active_learning
    from engage.sampling.analysis import SensitivityResult, morris_indices, sobol_index_maps, sobol_indices
    from engage.sampling.samplers import (
        BreedSampler,
        ImageSimilaritySampler,
        LatinHypercubeSampler,
        LossDensitySampler,
        LossDrivenSampler,
        MorrisSampler,
        SALibSobolSampler,
        SensitivityWeightedSampler,
        SobolSequenceSampler,
    )
    from engage.sampling.similarity import SimilarityLandscape, dissimilarity, similarity_landscape

__version__ = "0.1.0"

__all__ = [
    "ActiveLearningResult",
    "BreedSampler",
    "ImageSimilaritySampler",
    "LatinHypercubeSampler",
    "LossDensitySampler",
    "LossDrivenSampler",
    "MorrisSampler",
    "SALibSobolSampler",
    "SensitivityResult",
    "SensitivityWeightedSampler",
    "SimilarityLandscape",
    "SobolSequenceSampler",
    "active_learning",
    "dissimilarity",
    "morris_indices",
    "similarity_landscape",
    "sobol_index_maps",
    "sobol_indices",
]

_MODULES = {
    "engage.sampling.active_learning": ("ActiveLearningResult", "active_learning"),
    "engage.sampling.analysis": ("SensitivityResult", "morris_indices", "sobol_index_maps", "sobol_indices"),
    "engage.sampling.similarity": ("SimilarityLandscape", "dissimilarity", "similarity_landscape"),
}
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        **{name: module for module, names in _MODULES.items() for name in names},
        # every sampler but the base class of the structured designs
        **{name: module for name, module in SAMPLER_MODULES.items() if name != "StructuredDesignSampler"},
    },
    globals(),
)
