"""SALib's Morris design: one-at-a-time trajectories for cheap parameter screening."""

from __future__ import annotations

import numpy as np
from SALib.sample import morris as morris_sample

from engage.core.space import ParameterSpace
from engage.sampling.analysis import SensitivityResult, morris_indices
from engage.sampling.samplers.structured import StructuredDesignSampler


class MorrisSampler(StructuredDesignSampler):
    """Rows of ``SALib.sample.morris`` designs: blocks of ``trajectories`` trajectories of ``D+1``
    points on a ``num_levels`` grid, each trajectory moving one parameter at a time. Groups are
    trajectories; :meth:`analyze` returns ``mu*`` (mean absolute elementary effect), its
    confidence interval and ``sigma``.

    A permanently failed point drops its trajectory from the analysis (``on_failure="drop"``), or
    is re-simulated (``on_failure="resimulate"``).

    Example::

        >>> from engage.core import ParameterSpace
        >>> space = ParameterSpace.from_config({"a": {"low": 0, "high": 1}, "b": {"low": 0, "high": 1}})
        >>> sampler = MorrisSampler(space, seed=0, trajectories=10)
        >>> points = sampler.ask(sampler.block_rows)
        >>> sampler.tell(points, losses=5 * points[:, 0] + points[:, 1])
        >>> np.round(sampler.analyze().mu_star, 3).tolist()
        [5.0, 1.0]
    """

    def __init__(
        self,
        space: ParameterSpace,
        seed: int | None = 0,
        trajectories: int = 10,
        num_levels: int = 4,
        on_failure: str = "drop",
    ):
        if int(trajectories) < 2:
            raise ValueError(f"trajectories must be >= 2, got {trajectories}")
        if int(num_levels) < 2 or int(num_levels) % 2:
            raise ValueError(f"num_levels must be an even number >= 2, got {num_levels}")
        super().__init__(space, seed, on_failure)
        self.trajectories = int(trajectories)
        self.num_levels = int(num_levels)

    @property
    def group_size(self) -> int:
        return self.space.dim + 1

    @property
    def block_rows(self) -> int:
        return self.trajectories * self.group_size

    def _design_block(self, index: int) -> np.ndarray:
        return morris_sample.sample(
            self.space.salib_problem(), self.trajectories, num_levels=self.num_levels, seed=self._block_seed(index)
        )

    def analyze(self, num_resamples: int = 100, conf_level: float = 0.95, seed: int | None = 0) -> SensitivityResult:
        """Morris statistics of the told results over the complete trajectories."""
        X, Y, dropped = self.collected()
        return morris_indices(
            X,
            Y,
            self.space.names,
            num_levels=self.num_levels,
            num_resamples=num_resamples,
            conf_level=conf_level,
            seed=seed,
            groups_dropped=dropped,
            groups_pending=self.pending_groups(),
        )
