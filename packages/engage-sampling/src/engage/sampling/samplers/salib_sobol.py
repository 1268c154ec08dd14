"""SALib's Sobol design (Saltelli's extension of the Sobol' sequence) for variance-based
sensitivity analysis."""

from __future__ import annotations

import warnings

import numpy as np
from SALib.sample import sobol as sobol_sample

from engage.core.space import ParameterSpace
from engage.sampling.analysis import SensitivityResult, sobol_indices
from engage.sampling.samplers._unit import check_whole
from engage.sampling.samplers.structured import StructuredDesignSampler


class SALibSobolSampler(StructuredDesignSampler):
    """Rows of ``SALib.sample.sobol`` designs: blocks of ``N·(D+2)`` rows (``N·(2D+2)`` with
    ``calc_second_order``), ``N`` a power of two. Groups are the ``D+2`` (``2D+2``) rows built from
    one base row; once whole groups have results, :meth:`analyze` returns first- and total-order
    indices with bootstrap confidence intervals. Blocks after the first use new scrambles, and
    the groups of all blocks together form one larger valid design.

    A permanently failed point drops its group from the analysis (``on_failure="drop"``), or is
    re-simulated (``on_failure="resimulate"``).

    Example::

        >>> from engage.core import ParameterSpace
        >>> space = ParameterSpace.from_config({"a": {"low": 0, "high": 1}, "b": {"low": 0, "high": 1}})
        >>> sampler = SALibSobolSampler(space, seed=0, base_samples=64)
        >>> points = sampler.ask(sampler.block_rows)
        >>> sampler.tell(points, losses=points[:, 0] + 0.1 * points[:, 1])
        >>> bool(sampler.analyze().ST[0] > 0.9)
        True
    """

    def __init__(
        self,
        space: ParameterSpace,
        seed: int | None = 0,
        base_samples: int = 64,
        calc_second_order: bool = False,
        scramble: bool = True,
        on_failure: str = "drop",
    ):
        base_samples = check_whole("base_samples", base_samples, minimum=2)
        if base_samples & (base_samples - 1):
            raise ValueError(f"base_samples must be a power of 2 (>= 2), got {base_samples}")
        super().__init__(space, seed, on_failure)
        self.base_samples = base_samples
        self.calc_second_order = bool(calc_second_order)
        self.scramble = bool(scramble)

    @property
    def group_size(self) -> int:
        d = self.space.dim
        return 2 * d + 2 if self.calc_second_order else d + 2

    @property
    def block_rows(self) -> int:
        return self.base_samples * self.group_size

    def _design_block(self, index: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SALib's notes on skip_values do not apply to fresh scrambles
            return sobol_sample.sample(
                self.space.salib_problem(),
                self.base_samples,
                calc_second_order=self.calc_second_order,
                scramble=self.scramble,
                seed=self._block_seed(index),
            )

    def analyze(self, num_resamples: int = 100, conf_level: float = 0.95, seed: int | None = 0) -> SensitivityResult:
        """Sobol indices of the told results over the complete groups (dropped groups left out)."""
        _, Y, dropped = self.collected()
        return sobol_indices(
            Y,
            self.space.names,
            calc_second_order=self.calc_second_order,
            num_resamples=num_resamples,
            conf_level=conf_level,
            seed=seed,
            groups_dropped=dropped,
            groups_pending=self.pending_groups(),
        )
