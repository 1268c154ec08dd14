"""Structured configs of the samplers, selected with ``engage run sampler=NAME``.

Range checks run in ``__post_init__`` and raise core's ``ConfigValueError``, which ``engage run``
reports as one line naming the key (``sampler.base_samples: must be a power of 2, got 100``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from engage.core.config.schema import ConfigValueError
from engage.sampling.names import EXPLORATION_SEQUENCES, METRICS
from engage.sampling.samplers._unit import SCHEDULES
from engage.sampling.samplers.structured import ON_FAILURE


def _positive(owner: object, name: str, minimum: int = 1) -> None:
    value = getattr(owner, name)
    if value is not None and value < minimum:
        raise ConfigValueError(name, f"must be >= {minimum}, got {value}")


def _ratio(owner: object, name: str) -> None:
    value = getattr(owner, name)
    if value is not None and not 0.0 <= value <= 1.0:
        raise ConfigValueError(name, f"must be between 0 and 1, got {value}")


def _significance(owner: LossDrivenConfig | BreedConfig) -> None:
    value = owner.significance
    if value is not None and not value >= 0:
        raise ConfigValueError(
            "significance", f"must be a z score >= 0 (e.g. 2), or null to refine whatever the spread; got {value}"
        )


def _every(owner: object) -> None:
    """``every_n_steps`` and ``every_n_epochs``: null (never) or >= 1; 0 would never run."""
    for name in ("every_n_steps", "every_n_epochs"):
        value = getattr(owner, name)
        if value is not None and value < 1:
            raise ConfigValueError(name, f"must be >= 1, or null to not run on {name[8:]}; got {value}")


def _choice(owner: object, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(owner, name)
    if value not in allowed:
        raise ConfigValueError(name, f"must be one of {', '.join(allowed)}, got {value!r}")


@dataclass
class LatinHypercubeConfig:
    """Latin hypercube designs (scipy.stats.qmc.LatinHypercube)."""

    _target_: str = "engage.sampling.samplers.lhs.LatinHypercubeSampler"
    seed: int = "${seed}"  # type: ignore[assignment]
    design_size: int | None = None
    scramble: bool = True
    optimization: str | None = None

    def __post_init__(self) -> None:
        _positive(self, "design_size")
        if self.optimization not in (None, "random-cd", "lloyd"):
            raise ConfigValueError("optimization", f"must be null, random-cd or lloyd, got {self.optimization!r}")


@dataclass
class SobolSequenceConfig:
    """One scrambled Sobol' sequence (scipy.stats.qmc.Sobol)."""

    _target_: str = "engage.sampling.samplers.sobol_sequence.SobolSequenceSampler"
    seed: int = "${seed}"  # type: ignore[assignment]
    scramble: bool = True


@dataclass
class SALibSobolConfig:
    """SALib's Sobol design for variance-based sensitivity analysis."""

    _target_: str = "engage.sampling.samplers.salib_sobol.SALibSobolSampler"
    seed: int = "${seed}"  # type: ignore[assignment]
    base_samples: int = 64
    calc_second_order: bool = False
    scramble: bool = True
    on_failure: str = "drop"

    def __post_init__(self) -> None:
        n = self.base_samples
        if n < 2 or n & (n - 1):
            raise ConfigValueError("base_samples", f"must be a power of 2 (>= 2), got {n}")
        _choice(self, "on_failure", ON_FAILURE)


@dataclass
class MorrisConfig:
    """SALib's Morris trajectories for cheap screening."""

    _target_: str = "engage.sampling.samplers.morris.MorrisSampler"
    seed: int = "${seed}"  # type: ignore[assignment]
    trajectories: int = 10
    num_levels: int = 4
    on_failure: str = "drop"

    def __post_init__(self) -> None:
        _positive(self, "trajectories", 2)
        if self.num_levels < 2 or self.num_levels % 2:
            raise ConfigValueError("num_levels", f"must be an even number >= 2, got {self.num_levels}")
        _choice(self, "on_failure", ON_FAILURE)


@dataclass
class LossDrivenConfig:
    """Around the highest-loss points, mixed with space-filling exploration."""

    _target_: str = "engage.sampling.samplers.loss_driven.LossDrivenSampler"
    seed: int = "${seed}"  # type: ignore[assignment]
    exploration: float = 0.3
    exploration_final: float | None = None
    schedule: str = "constant"
    horizon: int = 1000
    sigma: float = 0.05
    top_k: int = 16
    max_points: int = 100_000
    exploration_sequence: str = "sobol"
    adaptive_radius: bool = True
    candidates: int = 4
    average_losses: bool = True
    significance: float | None = 2.0

    def __post_init__(self) -> None:
        _significance(self)
        _ratio(self, "exploration")
        _ratio(self, "exploration_final")
        _choice(self, "schedule", SCHEDULES)
        _choice(self, "exploration_sequence", EXPLORATION_SEQUENCES)
        _positive(self, "horizon")
        _positive(self, "top_k")
        _positive(self, "max_points")
        _positive(self, "candidates")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ConfigValueError(
                "sigma", f"must be finite and > 0 (a fraction of each parameter's range), got {self.sigma}"
            )


@dataclass
class BreedConfig:
    """Generations of children bred around the highest-loss simulations, plus a shrinking uniform share."""

    _target_: str = "engage.sampling.samplers.breed.BreedSampler"
    seed: int = "${seed}"  # type: ignore[assignment]
    generation_size: int = 32
    generations: int = 10
    uniform_start: float = 1.0
    uniform_end: float = 0.1
    parents: int | None = None
    spread: float = 0.1
    spread_min: float = 0.01
    shrink: float = 0.8
    success_target: float = 0.2
    max_points: int = 100_000
    significance: float | None = 2.0

    def __post_init__(self) -> None:
        _significance(self)
        _positive(self, "generation_size")
        _positive(self, "generations")
        _positive(self, "parents")
        _positive(self, "max_points")
        _ratio(self, "uniform_start")
        _ratio(self, "uniform_end")
        _ratio(self, "success_target")
        if not (math.isfinite(self.spread) and self.spread > 0):
            raise ConfigValueError(
                "spread", f"must be finite and > 0 (a fraction of each parameter's range), got {self.spread}"
            )
        if not 0 < self.spread_min <= self.spread:
            raise ConfigValueError("spread_min", f"must be > 0 and <= spread ({self.spread}), got {self.spread_min}")
        if not 0 < self.shrink < 1:
            raise ConfigValueError("shrink", f"must be between 0 and 1 (exclusive), got {self.shrink}")


@dataclass
class LossDensityConfig:
    """A scrambled Sobol' sequence made denser along each parameter where the told losses are high."""

    _target_: str = "engage.sampling.samplers.loss_density.LossDensitySampler"
    seed: int = "${seed}"  # type: ignore[assignment]
    bins: int = 6
    max_ratio: float = 4.0
    prior: float = 2.0
    alpha: float | None = 0.05
    max_points: int = 100_000

    def __post_init__(self) -> None:
        _positive(self, "bins", 2)
        _positive(self, "max_points")
        if not (math.isfinite(self.max_ratio) and self.max_ratio >= 1):
            raise ConfigValueError("max_ratio", f"must be finite and >= 1 (1: no warping), got {self.max_ratio}")
        if not (math.isfinite(self.prior) and self.prior > 0):
            raise ConfigValueError("prior", f"must be finite and > 0 (pseudo-simulations per bin), got {self.prior}")
        if self.alpha is not None and not 0 < self.alpha <= 1:
            raise ConfigValueError("alpha", f"must be in (0, 1], or null to warp every parameter; got {self.alpha}")


@dataclass
class SensitivityWeightedConfig:
    """Weighted maximin space filling, weights from sensitivity analysis."""

    _target_: str = "engage.sampling.samplers.sensitivity_weighted.SensitivityWeightedSampler"
    seed: int = "${seed}"  # type: ignore[assignment]
    candidates: int = 50

    def __post_init__(self) -> None:
        _positive(self, "candidates")


@dataclass
class ImageSimilarityConfig:
    """Refinement between neighbouring points whose outputs differ most."""

    _target_: str = "engage.sampling.samplers.image_similarity.ImageSimilaritySampler"
    seed: int = "${seed}"  # type: ignore[assignment]
    exploration: float = 0.3
    metric: str = "ssim"
    neighbours: int = 4
    data_range: float | None = None
    jitter: float = 0.25
    top_k: int | None = 32

    def __post_init__(self) -> None:
        _ratio(self, "exploration")
        _ratio(self, "jitter")
        _choice(self, "metric", METRICS)
        _positive(self, "neighbours")
        _positive(self, "top_k")
        if self.data_range is not None and not self.data_range > 0:
            raise ConfigValueError("data_range", f"must be > 0, got {self.data_range}")


# --------------------------------------------------------------------------- callbacks
# Selected with ``engage run +callbacks=NAME`` (several: ``+callbacks=[sensitivity,loss_driven]``);
# each option adds one named entry to core's ``callbacks`` dict, which ``engage run`` instantiates.
# The callbacks find the active sampler and the parameter space on the DataModule.


@dataclass
class SensitivityAnalysisConfig:
    """Sobol/Morris indices of the model during training (``SensitivityAnalysis``)."""

    method: str = "sobol"
    base_samples: int = 256
    calc_second_order: bool = False
    trajectories: int = 50
    num_levels: int = 4
    every_n_epochs: int | None = None
    every_n_steps: int | None = 1000
    num_resamples: int = 100
    conf_level: float = 0.95
    seed: int = "${seed}"  # type: ignore[assignment]
    inputs: str = "unit"
    reweight_sampler: bool = False
    log_plots: bool = True
    plot_dir: str | None = None
    batch_size: int = 8192

    def __post_init__(self) -> None:
        _choice(self, "method", ("sobol", "morris"))
        n = self.base_samples
        if n < 2 or n & (n - 1):
            raise ConfigValueError("base_samples", f"must be a power of 2 (>= 2), got {n}")
        if self.trajectories < 2:
            raise ConfigValueError("trajectories", f"must be >= 2, got {self.trajectories}")
        if self.num_levels < 2 or self.num_levels % 2:
            raise ConfigValueError("num_levels", f"must be an even number >= 2, got {self.num_levels}")
        _every(self)
        _positive(self, "num_resamples")
        _positive(self, "batch_size")
        if not 0 < self.conf_level < 1:
            raise ConfigValueError("conf_level", f"must be between 0 and 1 (exclusive), got {self.conf_level}")
        _choice(self, "inputs", ("unit", "values"))


@dataclass
class LossDrivenSamplingConfig:
    """Per-simulation training loss told to the active sampler (``LossDrivenSampling``)."""

    stage: str = "train"
    every_n_steps: int = 10
    output_key: str = "per_sample_loss"
    exploration: float | None = None
    exploration_final: float | None = None
    schedule: str = "linear"
    relative: bool = True

    def __post_init__(self) -> None:
        _choice(self, "stage", ("train", "val"))
        _positive(self, "every_n_steps")
        _ratio(self, "exploration")
        _ratio(self, "exploration_final")
        if self.exploration is None and self.exploration_final is not None:
            raise ConfigValueError("exploration_final", "needs exploration, the schedule's start: give both")
        _choice(self, "schedule", SCHEDULES)


@dataclass
class ImageSimilaritySamplingConfig:
    """Similarity landscape of predictions or targets handed to the sampler (``ImageSimilaritySampling``)."""

    source: str = "predictions"
    probe_points: int = 64
    metric: str = "ssim"
    neighbours: int = 4
    data_range: float | None = None
    every_n_epochs: int | None = None
    every_n_steps: int | None = 200
    max_points: int = 512
    seed: int = "${seed}"  # type: ignore[assignment]
    log_plots: bool = True
    plot_dir: str | None = None

    def __post_init__(self) -> None:
        _choice(self, "source", ("predictions", "targets"))
        _choice(self, "metric", METRICS)
        _positive(self, "probe_points", minimum=2)
        _positive(self, "neighbours")
        _positive(self, "max_points", minimum=2)
        _every(self)
        if self.data_range is not None and not self.data_range > 0:
            raise ConfigValueError(
                "data_range", f"must be > 0, or null to take it from the data; got {self.data_range}"
            )
