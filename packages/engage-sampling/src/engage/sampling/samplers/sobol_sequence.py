"""Scrambled Sobol' low-discrepancy sequences (``scipy.stats.qmc.Sobol``)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy.stats import qmc

from engage.core.samplers.base import FailureAction, Sampler
from engage.core.space import ParameterSpace


class SobolSequenceSampler(Sampler):
    """Consecutive points of one scrambled Sobol' sequence, whatever the batch sizes asked.

    The sequence is balanced at every power of two of the total number of points, so a budget
    of ``2**m`` simulations gives the best coverage. The engine is rebuilt from the seed and
    fast-forwarded on restore, so a resumed sampler continues the very same sequence.

    A failed point is replaced by the next point of the sequence (``SUBSTITUTE``).

    Example::

        >>> from engage.core import ParameterSpace
        >>> space = ParameterSpace.from_config({"a": {"low": 0, "high": 1}, "b": {"low": 0, "high": 1}})
        >>> sampler = SobolSequenceSampler(space, seed=1)
        >>> first = np.concatenate([sampler.ask(3), sampler.ask(5)])
        >>> np.allclose(first, SobolSequenceSampler(space, seed=1).ask(8))
        True
    """

    failure_action = FailureAction.SUBSTITUTE

    def __init__(self, space: ParameterSpace, seed: int | None = 0, scramble: bool = True):
        super().__init__(space, seed)
        self.scramble = bool(scramble)
        # a seedless sampler still needs one fixed engine seed to be resumable
        self._engine_seed = int(seed) if seed is not None else int(self.rng.integers(2**63))
        self._drawn = 0
        self._engine = self._new_engine()

    def _new_engine(self) -> qmc.Sobol:
        return qmc.Sobol(self.space.dim, scramble=self.scramble, rng=self._engine_seed)

    def _next_unit(self, n: int) -> np.ndarray:
        """The sequence's next ``n`` points in the unit cube."""
        with warnings.catch_warnings():
            # balance holds for the whole stream at powers of two, not for each small batch
            warnings.filterwarnings("ignore", message=".*balance properties of Sobol.*")
            unit = self._engine.random(n)
        self._drawn += n
        return unit

    def _ask(self, n: int) -> np.ndarray:
        return self.space.from_unit(self._next_unit(n))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "engine_seed": self._engine_seed, "drawn": self._drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._engine_seed = int(state["engine_seed"])
        self._drawn = int(state["drawn"])
        self._engine = self._new_engine()
        if self._drawn:
            self._engine.fast_forward(self._drawn)
