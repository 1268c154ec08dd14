"""engage-sampling's plugin: samplers and their ``sampler=NAME`` config options."""

from __future__ import annotations

from engage.core.config.options import ConfigOption
from engage.core.hookspecs import hookimpl
from engage.sampling import config
from engage.sampling.samplers import (
    ImageSimilaritySampler,
    LatinHypercubeSampler,
    LossDrivenSampler,
    MorrisSampler,
    SALibSobolSampler,
    SensitivityWeightedSampler,
    SobolSequenceSampler,
)

SAMPLERS = {
    "lhs": (LatinHypercubeSampler, config.LatinHypercubeConfig, "Latin hypercube designs"),
    "sobol_sequence": (SobolSequenceSampler, config.SobolSequenceConfig, "scrambled Sobol' sequence"),
    "salib_sobol": (SALibSobolSampler, config.SALibSobolConfig, "SALib Sobol design for Sobol indices"),
    "morris": (MorrisSampler, config.MorrisConfig, "SALib Morris trajectories for screening"),
    "loss_driven": (LossDrivenSampler, config.LossDrivenConfig, "around high-loss points plus exploration"),
    "sensitivity_weighted": (
        SensitivityWeightedSampler,
        config.SensitivityWeightedConfig,
        "space filling stretched along sensitive parameters",
    ),
    "image_similarity": (
        ImageSimilaritySampler,
        config.ImageSimilarityConfig,
        "refine where neighbouring outputs differ most",
    ),
}


@hookimpl
def engage_samplers() -> dict[str, type]:
    return {name: cls for name, (cls, _, _) in SAMPLERS.items()}


@hookimpl
def engage_config_options() -> list[ConfigOption]:
    return [ConfigOption("sampler", name, node, text) for name, (_, node, text) in SAMPLERS.items()]
