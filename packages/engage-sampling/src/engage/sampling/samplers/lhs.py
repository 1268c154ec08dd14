"""Latin hypercube designs (``scipy.stats.qmc.LatinHypercube``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import qmc

from engage.core.samplers.base import FailureAction, Sampler
from engage.core.space import ParameterSpace


class LatinHypercubeSampler(Sampler):
    """Latin hypercube points: every parameter's range is cut into equal-probability strata and each
    stratum receives one point.

    Without ``design_size`` every :meth:`ask` is its own Latin hypercube of the requested size.
    Online schedulers often ask for one or a few points at a time, which would make each design
    trivially small; with ``design_size`` the sampler draws whole designs of that size and serves
    them point by point, so every consecutive block of ``design_size`` points is stratified.

    A failed point is replaced by the next point of the design (``SUBSTITUTE``); a lost point
    costs one stratum of one design, which does not bias later designs.

    Example::

        >>> from engage.core import ParameterSpace
        >>> space = ParameterSpace.from_config({"a": {"low": 0, "high": 1}, "b": {"low": 0, "high": 10}})
        >>> points = LatinHypercubeSampler(space, seed=0).ask(5)
        >>> sorted((points[:, 0] * 5).astype(int).tolist())  # one point per fifth of a's range
        [0, 1, 2, 3, 4]
    """

    failure_action = FailureAction.SUBSTITUTE

    def __init__(
        self,
        space: ParameterSpace,
        seed: int | None = 0,
        design_size: int | None = None,
        scramble: bool = True,
        optimization: str | None = None,
    ):
        super().__init__(space, seed)
        if design_size is not None and int(design_size) < 1:
            raise ValueError(f"design_size must be >= 1 or None, got {design_size}")
        if optimization not in (None, "random-cd", "lloyd"):
            raise ValueError(f"optimization must be None, 'random-cd' or 'lloyd', got {optimization!r}")
        self.design_size = None if design_size is None else int(design_size)
        self.scramble = bool(scramble)
        self.optimization = optimization
        self._pending: list[list[float]] = []

    def _design(self, n: int) -> np.ndarray:
        # each design gets its seed from the sampler's generator, so the checkpointed rng state is enough
        engine = qmc.LatinHypercube(
            self.space.dim, scramble=self.scramble, optimization=self.optimization, rng=int(self.rng.integers(2**63))
        )
        return engine.random(n)

    def _ask(self, n: int) -> np.ndarray:
        if self.design_size is None:
            return self.space.from_unit(self._design(n))
        while len(self._pending) < n:
            self._pending.extend(self._design(self.design_size).tolist())
        unit, self._pending = np.asarray(self._pending[:n]), self._pending[n:]
        return self.space.from_unit(unit)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pending": [list(row) for row in self._pending]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._pending = [list(row) for row in state.get("pending", [])]
