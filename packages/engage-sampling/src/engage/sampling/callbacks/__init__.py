"""Lightning callbacks that analyse the model during training and steer the active sampler."""

from engage.sampling.callbacks.image_similarity_sampling import ImageSimilaritySampling
from engage.sampling.callbacks.loss_driven_sampling import LossDrivenSampling, mse_per_sample
from engage.sampling.callbacks.sensitivity_analysis import SensitivityAnalysis

__all__ = ["ImageSimilaritySampling", "LossDrivenSampling", "SensitivityAnalysis", "mse_per_sample"]
