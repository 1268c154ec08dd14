"""Lightning callbacks that analyse the model during training and steer the active sampler."""

from engage.sampling.callbacks.sensitivity_analysis import SensitivityAnalysis

__all__ = ["SensitivityAnalysis"]
