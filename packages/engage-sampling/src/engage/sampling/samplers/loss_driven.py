"""Loss-driven adaptive sampling: more simulations where the network's loss is highest."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import qmc

from engage.core.samplers.base import FailureAction, Sampler
from engage.core.space import ParameterSpace
from engage.sampling.names import EXPLORATION_SEQUENCES
from engage.sampling.samplers._unit import (
    SCHEDULES,
    check_ratio,
    check_whole,
    normalised_weights,
    reflect,
    scheduled_ratio,
)
from engage.sampling.samplers.losses import LossAverages

if TYPE_CHECKING:
    from engage.core.online.record import SimulationRecord


class LossDrivenSampler(Sampler):
    """Proposes new points around the points with the highest reported loss, mixed with
    space-filling exploration.

    Each proposed point is, with probability ``exploration``, an exploratory point (the next point
    of one scrambled Sobol' sequence with ``exploration_sequence="sobol"``, a uniform draw with
    ``"uniform"``); otherwise a Gaussian perturbation of a *parent* drawn among the ``top_k``
    highest-loss points with probability proportional to its loss. The perturbation's standard
    deviation is ``sigma`` in unit coordinates, per parameter scaled by
    :meth:`set_parameter_weights`; with ``adaptive_radius`` it shrinks as ``(1 + m)^(-1/d)`` with
    the number ``m`` of known points within ``sigma`` of the parent, so a region is refined ever
    more finely as it fills. With ``candidates > 1`` each exploiting point is the one of
    ``candidates`` proposals farthest from the known points and from the batch so far, which
    keeps a batch from piling onto one parent.

    The exploration ratio follows ``schedule`` (``constant``, ``linear`` or ``cosine``) from
    ``exploration`` to ``exploration_final`` over the first ``horizon`` asked points. Until
    losses are told, every point is exploratory.

    Losses are told per point (``tell(points, losses=...)``), or per simulation with
    ``simulation_ids`` (what :class:`~engage.sampling.LossDrivenSampling` does with the online
    engine's batches: two simulations at one point stay two). With ``average_losses`` (default)
    the loss of a point is the running mean of every loss told for it: one training batch holds
    a few samples of a simulation, so its loss there is noisy, while the mean over the samples
    told so far is a steadier measure of how hard the simulation is. Without it, telling a point
    again replaces its loss, so the sampler follows the latest losses only.

    With ``significance`` (a one-sided z score, default 2), only points whose mean loss is
    significantly above the mean of all points (:meth:`LossAverages.significant`) are parents;
    while none is, every point is exploratory. Where the difficulty does not vary across the
    space, the losses differ by noise and the sampler stays a space-filling design (refining
    around noise crowds points and costs simulations there); ``None`` refines around the
    ``top_k`` highest losses whatever their spread.

    Example::

        >>> from engage.core import ParameterSpace
        >>> space = ParameterSpace.from_config({"x": {"low": 0, "high": 1}})
        >>> sampler = LossDrivenSampler(space, seed=0, exploration=0.0, sigma=0.01)
        >>> points = [[0.2], [0.4], [0.6], [0.8]] * 4  # four losses told for each point
        >>> sampler.tell(points, losses=[0.0, 0.1, 0.0, 1.0] * 4)
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
        exploration_sequence: str = "sobol",
        adaptive_radius: bool = True,
        candidates: int = 4,
        average_losses: bool = True,
        significance: float | None = 2.0,
    ):
        super().__init__(space, seed)
        self.exploration = check_ratio("exploration", exploration)
        self.exploration_final = check_ratio(
            "exploration_final", exploration if exploration_final is None else exploration_final
        )
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        for name, value in (
            ("horizon", horizon),
            ("top_k", top_k),
            ("max_points", max_points),
            ("candidates", candidates),
        ):
            check_whole(name, value)
        if not (math.isfinite(float(sigma)) and float(sigma) > 0):
            raise ValueError(f"sigma must be finite and > 0 (a fraction of each parameter's range), got {sigma}")
        if exploration_sequence not in EXPLORATION_SEQUENCES:
            raise ValueError(
                f"exploration_sequence must be one of {', '.join(EXPLORATION_SEQUENCES)}, got {exploration_sequence!r}"
            )
        self.schedule = schedule
        self.horizon = int(horizon)
        self.sigma = float(sigma)
        self.top_k = int(top_k)
        self.max_points = int(max_points)
        self.exploration_sequence = exploration_sequence
        self.adaptive_radius = bool(adaptive_radius)
        self.candidates = int(candidates)
        self.average_losses = bool(average_losses)
        if significance is not None and not float(significance) >= 0:
            raise ValueError(f"significance must be >= 0 or None, got {significance}")
        self.significance = None if significance is None else float(significance)
        self.weights = np.ones(space.dim)
        self._losses = LossAverages(self.max_points)
        # a seedless sampler still needs one fixed engine seed to be resumable
        self._engine_seed = int(seed) if seed is not None else int(self.rng.integers(2**63))
        self._explored = 0
        self._engine = self._new_engine()

    # ------------------------------------------------------------------ adaptive interface
    def set_parameter_weights(self, weights: np.ndarray | list[float]) -> None:
        """Stretch the perturbations along important parameters (e.g. total Sobol indices)."""
        self.weights = normalised_weights(weights, self.space.dim)

    def current_exploration(self) -> float:
        """The exploration ratio at this point of the schedule."""
        return scheduled_ratio(self.exploration, self.exploration_final, self.schedule, self.num_asked / self.horizon)

    def loss_table(self) -> tuple[np.ndarray, np.ndarray]:
        """``(unit points, losses)`` currently known (with ``average_losses``, running means)."""
        points, losses = self._losses.table()
        return points.reshape(-1, self.space.dim), losses

    def _tell(self, points: np.ndarray, losses: np.ndarray | None, outputs: Sequence[Any] | None) -> None:
        if losses is not None:
            self._losses.add(self.space.to_unit(points), losses, replace=not self.average_losses)

    def _tell_simulations(
        self, simulation_ids: np.ndarray, points: np.ndarray, losses: np.ndarray | None, outputs: Sequence[Any] | None
    ) -> None:
        if losses is not None:
            unit = self.space.to_unit(points)
            self._losses.add(unit, losses, replace=not self.average_losses, simulation_ids=simulation_ids)

    def simulation_finished(self, record: SimulationRecord) -> None:
        """Place the finished simulation's losses at its record's exact point."""
        super().simulation_finished(record)
        self._losses.locate(record.simulation_id, record.unit)

    def simulation_failed(self, record: SimulationRecord) -> FailureAction:
        """Forget the failed simulation's losses (a partial stream's would mislead the ranking)
        and let the sampler propose a replacement."""
        self._losses.forget(record.simulation_id)
        return super().simulation_failed(record)

    def _new_engine(self) -> qmc.Sobol:
        return qmc.Sobol(self.space.dim, scramble=True, rng=self._engine_seed)

    def _explore(self, n: int) -> np.ndarray:
        if self.exploration_sequence == "uniform":
            return self.rng.random((n, self.space.dim))
        with warnings.catch_warnings():
            # balance holds for the whole stream at powers of two, not for each small batch
            warnings.filterwarnings("ignore", message=".*balance properties of Sobol.*")
            unit = self._engine.random(n)
        self._explored += n
        return unit

    def _radii(self, parents: np.ndarray, tree: cKDTree) -> np.ndarray:
        """Per-parent step scale: ``sigma``, shrunk by how crowded the parent's neighbourhood is."""
        if not self.adaptive_radius:
            return np.full(len(parents), self.sigma)
        crowd = np.asarray(tree.query_ball_point(parents, r=self.sigma, return_length=True)) - 1  # minus the parent
        return self.sigma * (1.0 + np.maximum(crowd, 0)) ** (-1.0 / self.space.dim)

    def _exploit(self, parents: np.ndarray, known: np.ndarray) -> np.ndarray:
        tree = cKDTree(known)
        radii = self._radii(parents, tree)[:, None, None]
        steps = self.rng.normal(size=(len(parents), self.candidates, self.space.dim)) * radii * self.weights
        proposals = reflect(parents[:, None, :] + steps)
        if self.candidates == 1:
            return proposals[:, 0]
        # farthest candidate from the known points and from the points chosen so far in this batch
        gaps = tree.query(proposals.reshape(-1, self.space.dim))[0].reshape(len(parents), self.candidates)
        chosen = np.empty_like(parents)
        for i, options in enumerate(proposals):
            if i:
                batch_gaps = np.linalg.norm(options[:, None, :] - chosen[None, :i, :], axis=2).min(axis=1)
                gaps[i] = np.minimum(gaps[i], batch_gaps)
            chosen[i] = options[int(np.argmax(gaps[i]))]
        return chosen

    def parent_candidates(self) -> np.ndarray:
        """Indices into :meth:`loss_table` of the points that may be parents: those significantly
        above the others with ``significance``, else every known point."""
        return self._losses.candidates(self.significance)

    def _ask(self, n: int) -> np.ndarray:
        known, losses = self.loss_table()
        eligible = self.parent_candidates() if len(known) else np.empty(0, dtype=np.int64)
        exploit = self.rng.random(n) >= self.current_exploration() if len(eligible) else np.zeros(n, dtype=bool)
        unit = np.empty((n, self.space.dim))
        count = int(exploit.sum())
        if count < n:
            unit[~exploit] = self._explore(n - count)
        if count:
            top = eligible[np.argsort(losses[eligible])[::-1][: self.top_k]]
            weights = np.clip(losses[top], 0.0, None)
            probabilities = weights / weights.sum() if weights.sum() > 0 else None
            parents = known[self.rng.choice(top, size=count, p=probabilities)]
            unit[exploit] = self._exploit(parents, np.vstack([known, unit[~exploit]]))
        return self.space.from_unit(unit)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "weights": self.weights.tolist(),
            "loss_averages": self._losses.state_dict(),
            "engine_seed": self._engine_seed,
            "explored": self._explored,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.weights = np.asarray(state["weights"], dtype=np.float64)
        if "loss_averages" in state:
            self._losses.load_state_dict(state["loss_averages"])
        else:  # a state that kept one loss per point
            self._losses.load_state_dict(
                {"points": state["points"], "sums": state["losses"], "counts": [1] * len(state["losses"])}
            )
        self._engine_seed = int(state.get("engine_seed", self._engine_seed))
        self._explored = int(state.get("explored", 0))
        self._engine = self._new_engine()
        if self._explored:
            self._engine.fast_forward(self._explored)
