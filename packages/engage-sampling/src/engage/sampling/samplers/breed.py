"""Breed: an evolutionary adaptive sampler that breeds new simulations around the hardest ones."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.spatial import cKDTree

from engage.core.samplers.base import FailureAction, Sampler
from engage.core.space import ParameterSpace
from engage.sampling.samplers._unit import check_ratio, reflect
from engage.sampling.samplers.losses import Key, LossAverages

if TYPE_CHECKING:
    from engage.core.online.record import SimulationRecord

#: how far apart (in unit coordinates, any axis) a point told without a simulation id and an
#: asked one may be and still be the same
_MATCH = 1e-6


class BreedSampler(Sampler):
    """Breeds new simulations around the simulations the network finds hardest.

    Points come in *generations* of ``generation_size`` asked points (whatever the batch sizes of
    ``ask``). At the start of each generation the sampler ranks every simulation whose loss it
    was told by its *fitness*, the running mean of the losses told for it (the mean over its
    samples, not the loss of one batch), and keeps the ``parents`` fittest. Each point of the
    generation is then either

    * a uniform draw over the space, with probability ``uniform_share``, which moves linearly
      from ``uniform_start`` in generation 0 to ``uniform_end`` in generation ``generations - 1``
      and stays there; before any loss is known every point is uniform;
    * or a child: a parent drawn with probability proportional to its fitness, moved by a
      Gaussian step of standard deviation ``spread`` in unit coordinates, reflected back into
      the unit cube and mapped to values by the space (integers and categoricals snap to their
      values, log-uniform parameters move in log scale, normal ones in probability).

    The spread adapts once per generation: it is multiplied by ``shrink`` when at least
    ``success_target`` of the children judged since the last generation are fitter than their
    parent (the search has found a hard region: refine it), divided by ``shrink`` otherwise (look
    wider), and kept between ``spread_min`` and the initial ``spread``. A child is judged as soon
    as losses of both it and its parent are known. In online runs a child is its simulation: the
    engine's record of it (``simulation_finished``) names the child by the position it was asked
    at, and its losses come keyed by that simulation's id; losses told without ids (plain
    ``tell(points)``, offline designs) are found by the child's point.

    With ``significance`` (a one-sided z score, default 2), only simulations whose fitness is
    significantly above the mean fitness (:meth:`LossAverages.significant`) can be parents; a
    generation with none is all uniform. Where the difficulty does not vary, fitness differs by
    noise alone and breeding around it would crowd points for nothing; ``None`` breeds from the
    ``parents`` fittest whatever their spread.

    A failed simulation leaves the fitness table and the sampler proposes a replacement
    (:attr:`failure_action` is ``SUBSTITUTE``). The sampler is seeded and
    :meth:`state_dict`/:meth:`load_state_dict` continue exactly.

    Example::

        >>> from engage.core import ParameterSpace
        >>> space = ParameterSpace.from_config({"x": {"low": 0, "high": 1}})
        >>> sampler = BreedSampler(space, seed=0, generation_size=8, generations=2, uniform_end=0.0)
        >>> first = sampler.ask(8)  # generation 0: uniform
        >>> sampler.tell(first, losses=(first[:, 0] > 0.5).astype(float))  # hard where x > 0.5
        >>> bool(np.all(sampler.ask(8) > 0.25))  # generation 1: children of the hard points
        True
        >>> sampler.generation, sampler.current_uniform_share()
        (1, 0.0)
    """

    failure_action = FailureAction.SUBSTITUTE

    def __init__(
        self,
        space: ParameterSpace,
        seed: int | None = 0,
        generation_size: int = 32,
        generations: int = 10,
        uniform_start: float = 1.0,
        uniform_end: float = 0.1,
        parents: int | None = None,
        spread: float = 0.1,
        spread_min: float = 0.01,
        shrink: float = 0.8,
        success_target: float = 0.2,
        max_points: int = 100_000,
        significance: float | None = 2.0,
    ):
        super().__init__(space, seed)
        for name, value in (
            ("generation_size", generation_size),
            ("generations", generations),
            ("max_points", max_points),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if parents is not None and int(parents) < 1:
            raise ValueError(f"parents must be >= 1, got {parents}")
        if not (math.isfinite(float(spread)) and float(spread) > 0):
            raise ValueError(f"spread must be finite and > 0 (a fraction of each parameter's range), got {spread}")
        if not 0 < float(spread_min) <= float(spread):
            raise ValueError(f"need 0 < spread_min <= spread, got {spread_min} and {spread}")
        if not 0 < float(shrink) < 1:
            raise ValueError(f"shrink must be in (0, 1), got {shrink}")
        self.generation_size = int(generation_size)
        self.generations = int(generations)
        self.uniform_start = check_ratio("uniform_start", uniform_start)
        self.uniform_end = check_ratio("uniform_end", uniform_end)
        self.parents = self.generation_size if parents is None else int(parents)
        self.initial_spread = float(spread)
        self.spread_min = float(spread_min)
        self.shrink = float(shrink)
        self.success_target = check_ratio("success_target", success_target)
        if significance is not None and not float(significance) >= 0:
            raise ValueError(f"significance must be >= 0 or None, got {significance}")
        self.significance = None if significance is None else float(significance)
        self.fitness = LossAverages(max_points)
        #: the spread of the current generation, in unit coordinates
        self.spread = self.initial_spread
        #: the current generation; the next one starts when its first point is asked, so that it
        #: breeds from every loss told until then
        self.generation = 0
        #: success rate of the children judged at the start of each generation (``None``: none judged)
        self.success_history: list[float | None] = []
        self._pool = np.empty((0, space.dim))  # the parents of the current generation, unit coordinates
        self._pool_keys: list[Key] = []  # their keys in the fitness table
        self._pool_weights = np.empty(0)
        #: children not yet judged: (position asked at, the child's point key, its parent's fitness key)
        self._children: list[tuple[int, tuple[float, ...], Key]] = []
        self._child_simulations: dict[int, int] = {}  # position asked at -> simulation id, from records

    # ------------------------------------------------------------------ schedule
    def current_uniform_share(self) -> float:
        """The share of uniform points in the current generation."""
        progress = min(self.generation / max(self.generations - 1, 1), 1.0)
        return self.uniform_start + (self.uniform_end - self.uniform_start) * progress

    def loss_table(self) -> tuple[np.ndarray, np.ndarray]:
        """``(unit points, fitness)`` of the simulations whose losses were told."""
        points, losses = self.fitness.table()
        return points.reshape(-1, self.space.dim), losses

    def _judge_children(self) -> float | None:
        """Success rate of the children whose own and parent's fitness are both known.

        A child whose simulation the engine named is found in the fitness table by that
        simulation's id; one told by its point alone, by the nearest told point within 1e-6 in
        unit coordinates (losses told from training batches carry single-precision parameters).
        """
        points, losses = self.loss_table()
        if not self._children or len(points) == 0:
            return None
        row_of = {key: row for row, key in enumerate(self.fitness.table_keys())}
        # told by simulation (online): a child is found by its record alone, never by its point
        by_record = any(isinstance(key, int) for key in row_of)
        tree = cKDTree(points)
        distance, nearest = tree.query([child for _, child, _ in self._children], p=np.inf, distance_upper_bound=_MATCH)
        waiting, better = [], []
        for (asked, child, parent), gap, near in zip(self._children, distance, nearest):
            simulation = self._child_simulations.get(asked)
            if simulation is not None:
                child_row = row_of.get(simulation)
            else:
                child_row = None if by_record or not np.isfinite(gap) else int(near)
            parent_row = row_of.get(parent)
            if child_row is None or parent_row is None:
                waiting.append((asked, child, parent))
                continue
            better.append(losses[child_row] > losses[parent_row])
            self._child_simulations.pop(asked, None)
        self._children = waiting[-self.fitness.max_points :]
        kept = {asked for asked, _, _ in self._children}
        self._child_simulations = {a: s for a, s in self._child_simulations.items() if a in kept}
        return float(np.mean(better)) if better else None

    def _next_generation(self) -> None:
        self.generation += 1
        rate = self._judge_children()
        self.success_history.append(rate)
        if rate is not None:
            factor = self.shrink if rate >= self.success_target else 1.0 / self.shrink
            self.spread = float(np.clip(self.spread * factor, self.spread_min, self.initial_spread))
        points, losses = self.loss_table()
        eligible = self.fitness.candidates(self.significance)
        if len(eligible) == 0:
            self._pool, self._pool_weights, self._pool_keys = np.empty((0, self.space.dim)), np.empty(0), []
            return
        best = eligible[np.argsort(-losses[eligible], kind="stable")[: self.parents]]
        weights = np.clip(losses[best], 0.0, None)
        self._pool = points[best]
        keys = self.fitness.table_keys()
        self._pool_keys = [keys[row] for row in best]
        self._pool_weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(best), 1.0 / len(best))

    # ------------------------------------------------------------------ ask / tell
    def _ask(self, n: int) -> np.ndarray:
        unit = np.empty((n, self.space.dim))
        for i in range(n):
            if i + self.num_asked and (i + self.num_asked) % self.generation_size == 0:
                self._next_generation()
            if len(self._pool) == 0 or self.rng.random() < self.current_uniform_share():
                unit[i] = self.rng.random(self.space.dim)
                continue
            drawn = self.rng.choice(len(self._pool), p=self._pool_weights)
            child = reflect(self._pool[drawn] + self.spread * self.rng.normal(size=self.space.dim))
            # the key of the value the child maps to, as its losses are told without simulation ids
            child_key = self.fitness.key(self.space.to_unit(self.space.from_unit(child[None, :]))[0])
            self._children.append((self.num_asked + i, child_key, self._pool_keys[drawn]))
            unit[i] = child
        return self.space.from_unit(unit)

    def _tell(self, points: np.ndarray, losses: np.ndarray | None, outputs: Sequence[Any] | None) -> None:
        if losses is not None:
            self.fitness.add(self.space.to_unit(points), losses)

    def _tell_simulations(
        self, simulation_ids: np.ndarray, points: np.ndarray, losses: np.ndarray | None, outputs: Sequence[Any] | None
    ) -> None:
        if losses is not None:
            self.fitness.add(self.space.to_unit(points), losses, simulation_ids=simulation_ids)

    def simulation_finished(self, record: SimulationRecord) -> None:
        """Name the child asked at ``record.ask_index`` by its simulation, and place its fitness
        at the record's exact point."""
        super().simulation_finished(record)
        self.fitness.locate(record.simulation_id, record.unit)
        if any(asked == record.ask_index for asked, _, _ in self._children):
            self._child_simulations[record.ask_index] = record.simulation_id

    def simulation_failed(self, record: SimulationRecord) -> FailureAction:
        """Forget the failed simulation's fitness (a partial stream's losses would mislead the
        ranking) and let the sampler propose a replacement."""
        self.fitness.forget(record.simulation_id)
        self._children = [child for child in self._children if child[0] != record.ask_index]
        self._child_simulations.pop(record.ask_index, None)
        return super().simulation_failed(record)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "fitness": self.fitness.state_dict(),
            "spread": self.spread,
            "generation": self.generation,
            "success_history": list(self.success_history),
            "pool": self._pool.tolist(),
            "pool_keys": [_saved(k) for k in self._pool_keys],
            "pool_weights": self._pool_weights.tolist(),
            "children": [[asked, list(child), _saved(parent)] for asked, child, parent in self._children],
            "child_simulations": [[a, s] for a, s in sorted(self._child_simulations.items())],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.fitness.load_state_dict(state["fitness"])
        self.spread = float(state["spread"])
        self.generation = int(state["generation"])
        self.success_history = [None if r is None else float(r) for r in state["success_history"]]
        self._pool = np.asarray(state["pool"], dtype=np.float64).reshape(-1, self.space.dim)
        self._pool_weights = np.asarray(state["pool_weights"], dtype=np.float64)
        # a state saved before children were named by their records: points stand for keys
        self._pool_keys = [_key(k) for k in state.get("pool_keys", [list(self.fitness.key(p)) for p in self._pool])]
        self._children = [
            (int(entry[0]), tuple(entry[1]), _key(entry[2]))
            if len(entry) == 3
            else (-1, tuple(entry[0]), tuple(entry[1]))
            for entry in state["children"]
        ]
        self._child_simulations = {int(a): int(s) for a, s in state.get("child_simulations", [])}


def _saved(key: Key) -> int | list[float]:
    """A fitness key as a state holds it (plain data)."""
    return list(key) if isinstance(key, tuple) else key


def _key(saved: Any) -> Key:
    """A fitness key as a state holds it: a simulation id, or a point's coordinates as a list."""
    return int(saved) if isinstance(saved, int) else tuple(float(v) for v in saved)
