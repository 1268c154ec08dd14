"""Loss-driven adaptive sampling: more simulations where the network's loss is highest."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engage.core.samplers.base import FailureAction, Sampler
from engage.core.space import ParameterSpace
from engage.sampling.samplers._unit import SCHEDULES, check_ratio, normalised_weights, reflect, scheduled_ratio


class LossDrivenSampler(Sampler):
    """Proposes new points around the points with the highest reported loss, mixed with uniform
    exploration.

    Each proposed point is, with probability ``exploration``, a uniform draw; otherwise a Gaussian
    perturbation (standard deviation ``sigma`` in unit coordinates, per parameter scaled by
    :meth:`set_parameter_weights`) of a *parent* drawn among the ``top_k`` highest-loss points
    with probability proportional to its loss. The exploration ratio follows ``schedule``
    (``constant``, ``linear`` or ``cosine``) from ``exploration`` to ``exploration_final`` over the
    first ``horizon`` asked points. Until losses are told, every point is exploratory.

    Losses are told per point (``tell(points, losses=...)``); telling the same point again
    replaces its loss, so the sampler follows what the network has not learnt *yet*.

    Example::

        >>> from engage.core import ParameterSpace
        >>> space = ParameterSpace.from_config({"x": {"low": 0, "high": 1}})
        >>> sampler = LossDrivenSampler(space, seed=0, exploration=0.0, sigma=0.01)
        >>> sampler.tell([[0.2], [0.8]], losses=[0.0, 1.0])
        >>> bool(np.all(np.abs(sampler.ask(20) - 0.8) < 0.06))
        True
    """

    failure_action = FailureAction.SUBSTITUTE

    def __init__(
        self,
        space: ParameterSpace,
        seed: int | None = 0,
        exploration: float = 0.3,
        exploration_final: float | None = None,
        schedule: str = "constant",
        horizon: int = 1000,
        sigma: float = 0.05,
        top_k: int = 16,
        max_points: int = 100_000,
    ):
        super().__init__(space, seed)
        self.exploration = check_ratio("exploration", exploration)
        self.exploration_final = check_ratio(
            "exploration_final", exploration if exploration_final is None else exploration_final
        )
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if int(horizon) < 1 or not float(sigma) > 0 or int(top_k) < 1 or int(max_points) < 1:
            raise ValueError("horizon, top_k and max_points must be >= 1 and sigma > 0")
        self.schedule = schedule
        self.horizon = int(horizon)
        self.sigma = float(sigma)
        self.top_k = int(top_k)
        self.max_points = int(max_points)
        self.weights = np.ones(space.dim)
        self._losses: dict[tuple[float, ...], float] = {}

    # ------------------------------------------------------------------ adaptive interface
    def set_parameter_weights(self, weights: np.ndarray | list[float]) -> None:
        """Stretch the perturbations along important parameters (e.g. total Sobol indices)."""
        self.weights = normalised_weights(weights, self.space.dim)

    def current_exploration(self) -> float:
        """The exploration ratio at this point of the schedule."""
        return scheduled_ratio(self.exploration, self.exploration_final, self.schedule, self.num_asked / self.horizon)

    def loss_table(self) -> tuple[np.ndarray, np.ndarray]:
        """``(unit points, losses)`` currently known."""
        if not self._losses:
            return np.empty((0, self.space.dim)), np.empty(0)
        keys = list(self._losses)
        return np.asarray(keys, dtype=np.float64), np.asarray([self._losses[k] for k in keys])

    def _tell(self, points: np.ndarray, losses: np.ndarray | None, outputs: Sequence[Any] | None) -> None:
        if losses is None:
            return
        unit = np.round(self.space.to_unit(points), 9)
        for row, loss in zip(unit, losses):
            if np.isfinite(loss):
                self._losses.pop(tuple(row), None)  # re-insert: most recent entries survive trimming
                self._losses[tuple(row)] = float(loss)
        while len(self._losses) > self.max_points:
            self._losses.pop(next(iter(self._losses)))

    def _ask(self, n: int) -> np.ndarray:
        unit = self.rng.random((n, self.space.dim))
        known, losses = self.loss_table()
        if len(known) == 0:
            return self.space.from_unit(unit)
        exploit = self.rng.random(n) >= self.current_exploration()
        count = int(exploit.sum())
        if count:
            top = np.argsort(losses)[::-1][: self.top_k]
            weights = np.clip(losses[top], 0.0, None)
            probabilities = weights / weights.sum() if weights.sum() > 0 else None
            parents = known[self.rng.choice(top, size=count, p=probabilities)]
            steps = self.rng.normal(size=(count, self.space.dim)) * self.sigma * self.weights
            unit[exploit] = reflect(parents + steps)
        return self.space.from_unit(unit)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        points, losses = self.loss_table()
        return {
            **super().state_dict(),
            "weights": self.weights.tolist(),
            "points": points.tolist(),
            "losses": losses.tolist(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.weights = np.asarray(state["weights"], dtype=np.float64)
        self._losses = {tuple(p): float(v) for p, v in zip(state["points"], state["losses"])}
