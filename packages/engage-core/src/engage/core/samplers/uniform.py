"""Independent random points drawn from each parameter's distribution."""

from __future__ import annotations

import numpy as np

from engage.core.samplers.base import FailureAction, Sampler


class UniformSampler(Sampler):
    """Draws each point independently: uniform in the unit hypercube, mapped through each
    parameter's inverse CDF (so a ``normal`` parameter is sampled normally).

    A failed point is simply replaced by the next draw, so failures never bias the design.

    Example::

        >>> from engage.core import ParameterSpace
        >>> space = ParameterSpace.from_config({"a": {"low": -1, "high": 1}, "b": {"low": 0, "high": 5}})
        >>> bool(UniformSampler(space, seed=0).ask(8).min() >= -1)
        True
    """

    failure_action = FailureAction.SUBSTITUTE

    def _ask(self, n: int) -> np.ndarray:
        return self.space.from_unit(self.rng.random((n, self.space.dim)))
