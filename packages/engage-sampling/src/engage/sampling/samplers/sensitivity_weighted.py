"""Space filling that resolves important parameters more finely."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from engage.core.samplers.base import FailureAction, Sampler
from engage.core.space import ParameterSpace
from engage.sampling.samplers._unit import normalised_weights


class SensitivityWeightedSampler(Sampler):
    """Greedy weighted maximin design: each new point is, among ``candidates`` uniform
    candidates per point, the one farthest from all earlier points in a metric where parameter
    ``i`` is stretched by its weight. Important parameters (large weights, e.g. total Sobol
    indices from :class:`~engage.sampling.callbacks.SensitivityAnalysis`) are therefore covered
    densely, and parameters with no effect hardly constrain the design.

    With equal weights (the default) this is an ordinary space-filling design.

    Example::

        >>> from engage.core import ParameterSpace
        >>> space = ParameterSpace.from_config({"a": {"low": 0, "high": 1}, "b": {"low": 0, "high": 1}})
        >>> sampler = SensitivityWeightedSampler(space, seed=0)
        >>> sampler.set_parameter_weights([1.0, 0.0])
        >>> a = np.sort(sampler.ask(10)[:, 0])
        >>> bool(np.diff(a).min() > 0.03)  # a is spread evenly, b is ignored
        True
    """

    failure_action = FailureAction.SUBSTITUTE

    def __init__(self, space: ParameterSpace, seed: int | None = 0, candidates: int = 50, weights: Any = None):
        super().__init__(space, seed)
        if int(candidates) < 1:
            raise ValueError(f"candidates must be >= 1, got {candidates}")
        self.candidates = int(candidates)
        self.weights = np.ones(space.dim) if weights is None else normalised_weights(weights, space.dim)
        self._history: list[list[float]] = []

    def set_parameter_weights(self, weights: np.ndarray | Sequence[float]) -> None:
        """Importance of each parameter (any non-negative scale; normalised to mean 1)."""
        self.weights = normalised_weights(weights, self.space.dim)

    def _ask(self, n: int) -> np.ndarray:
        chosen = np.empty((n, self.space.dim))
        candidates = self.rng.random((n * self.candidates, self.space.dim))
        scaled = candidates * self.weights
        if self._history:
            nearest, _ = cKDTree(np.asarray(self._history) * self.weights).query(scaled)
        else:
            nearest = np.full(len(candidates), np.inf)
        for i in range(n):
            best = int(np.argmax(nearest)) if np.isfinite(nearest).any() else int(self.rng.integers(len(candidates)))
            chosen[i] = candidates[best]
            nearest = np.minimum(nearest, np.linalg.norm(scaled - scaled[best], axis=1))
        self._history.extend(chosen.tolist())
        return self.space.from_unit(chosen)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "weights": self.weights.tolist(), "history": self._history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.weights = np.asarray(state["weights"], dtype=np.float64)
        self._history = [list(row) for row in state["history"]]
