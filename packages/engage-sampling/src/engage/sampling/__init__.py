"""ENGAGE sampling: which simulations to run.

Samplers (Latin hypercube, Sobol' sequence, SALib Sobol and Morris designs, loss-driven,
sensitivity-weighted and image-similarity refinement) follow the :class:`engage.core.Sampler`
contract, so ``engage run sampler=NAME`` and the online DataModule's scheduler can use them.
Lightning callbacks (:mod:`engage.sampling.callbacks`) analyse the model during training and steer
the active sampler; :func:`active_learning` drives a sampler with a plain ``simulate`` function.
"""

from engage.sampling.active_learning import ActiveLearningResult, active_learning
from engage.sampling.analysis import SensitivityResult, morris_indices, sobol_index_maps, sobol_indices
from engage.sampling.samplers import (
    ImageSimilaritySampler,
    LatinHypercubeSampler,
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
    "ImageSimilaritySampler",
    "LatinHypercubeSampler",
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
