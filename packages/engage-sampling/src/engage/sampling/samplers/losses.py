"""Per-point running means of told losses, shared by the loss-aware samplers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import norm

#: decimals of the unit coordinates that identify a point told without a simulation id
DECIMALS = 9

#: what identifies a point: the id of its simulation record, or its rounded unit coordinates
Key = int | tuple[float, ...]


class LossAverages:
    """The running mean of the losses told for each point (one point, one simulation).

    A training step sees a few samples of a simulation, so the loss of one batch is a noisy
    estimate of how well the network knows that simulation; the mean over every sample told so
    far is not. Losses told with simulation ids (the online engine's batches carry them) are
    keyed by the id: two simulations at the same point stay two, and nothing is matched by
    value. Losses told without are keyed by their unit coordinates rounded to 9 decimals. The
    oldest points are forgotten beyond ``max_points``.

    Example::

        >>> averages = LossAverages()
        >>> averages.add(np.array([[0.5], [0.5], [0.25]]), np.array([1.0, 3.0, 4.0]))
        >>> averages.table()[1].tolist(), averages.count((0.5,))
        ([2.0, 4.0], 2)
        >>> averages.add(np.array([[0.5], [0.5]]), np.array([5.0, 7.0]), simulation_ids=np.array([8, 8]))
        >>> averages.mean(8), len(averages)
        (6.0, 3)
    """

    def __init__(self, max_points: int = 100_000):
        self.max_points = int(max_points)
        self._sums: dict[Key, float] = {}
        self._squares: dict[Key, float] = {}
        self._counts: dict[Key, int] = {}
        self._points: dict[Key, tuple[float, ...]] = {}  # where each point is, unit coordinates
        # simulations that failed for good: losses still told for them (their samples read after
        # the failure) are not counted; an ordered set, the oldest forgotten beyond max_points
        self._failed: dict[int, None] = {}

    @staticmethod
    def keys(unit: np.ndarray | Sequence[Sequence[float]]) -> list[tuple[float, ...]]:
        """The keys of points given in unit coordinates, one per row (rounded at once: a batch's
        are made at every training step that has per-sample losses)."""
        return list(map(tuple, np.round(np.atleast_2d(np.asarray(unit, dtype=np.float64)), DECIMALS).tolist()))

    @staticmethod
    def key(unit_row: np.ndarray | Sequence[float]) -> tuple[float, ...]:
        """The key of a point given in unit coordinates."""
        return LossAverages.keys(unit_row)[0]

    def __len__(self) -> int:
        return len(self._sums)

    def add(
        self, unit: np.ndarray, losses: np.ndarray, replace: bool = False, simulation_ids: np.ndarray | None = None
    ) -> None:
        """Add one loss per row of ``unit`` (with ``replace``, the loss replaces what was told
        before for that point); non-finite losses are ignored. With ``simulation_ids`` each loss
        is about that simulation (``unit`` says where it is, from the first loss told)."""
        rows = self.keys(unit)
        keys: list[Key] = rows if simulation_ids is None else [int(i) for i in np.asarray(simulation_ids).reshape(-1)]
        for key, row, loss in zip(keys, rows, np.asarray(losses, dtype=np.float64).reshape(-1).tolist()):
            if not math.isfinite(loss) or key in self._failed:
                continue
            self._points.setdefault(key, row)
            # popped and re-inserted: the most recently told points survive trimming
            total, count = self._sums.pop(key, 0.0), self._counts.pop(key, 0)
            squares = self._squares.pop(key, 0.0)  # nan (not known) stays nan
            self._sums[key] = loss if replace else total + loss
            self._squares[key] = loss**2 if replace else squares + loss**2
            self._counts[key] = 1 if replace else count + 1
        while len(self._sums) > self.max_points:
            oldest = next(iter(self._sums))
            del self._sums[oldest], self._counts[oldest], self._points[oldest]
            self._squares.pop(oldest, None)

    def locate(self, simulation_id: int, unit_row: Sequence[float]) -> None:
        """Where a simulation is, exactly (its record's unit point: losses told from training
        batches carry single-precision parameters), whether its losses come before or after."""
        if simulation_id in self._failed:
            return
        self._points[simulation_id] = tuple(float(v) for v in unit_row)
        if len(self._points) > 2 * self.max_points:  # located, never told: the oldest go
            for key in [k for k in self._points if k not in self._sums][: len(self._points) - self.max_points]:
                del self._points[key]

    def mean(self, key: Key) -> float | None:
        """The running mean loss of a point, ``None`` when none was told."""
        count = self._counts.get(key)
        return None if not count else self._sums[key] / count

    def count(self, key: Key) -> int:
        """How many losses were told for a point."""
        return self._counts.get(key, 0)

    def forget(self, key: Key) -> None:
        """Drop a point (its simulation failed); a simulation's later losses are not counted."""
        if isinstance(key, int):
            self._failed[key] = None
            while len(self._failed) > self.max_points:
                del self._failed[next(iter(self._failed))]
        self._points.pop(key, None)
        self._sums.pop(key, None)
        self._squares.pop(key, None)
        self._counts.pop(key, None)

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """``(unit points, mean losses)`` in the order the points were last told."""
        if not self._sums:
            return np.empty((0, 0)), np.empty(0)
        keys = list(self._sums)
        points = np.asarray([self._points[k] for k in keys], dtype=np.float64)
        return points, np.asarray([self._sums[k] / self._counts[k] for k in keys])

    def table_keys(self) -> list[Key]:
        """The keys of the rows of :meth:`table`, in its order."""
        return list(self._sums)

    def significant(self, z: float) -> np.ndarray:
        """Which points of :meth:`table` have a mean loss significantly above the mean of all
        points: ``mean_i - z_m * sem_i > mean of the means``, one-sided, with ``sem_i`` the
        standard error of point ``i``'s mean (the spread of a point's losses, pooled over the points
        told at least twice, over the square root of its count) and ``z_m`` the threshold that keeps
        the chance of *any* false pick among the ``m`` points what ``z`` gives for one (Bonferroni:
        ``z = 2`` is 3.1 among 24 points, 3.5 among 100).

        Where the difficulty does not vary across the space, the points' means differ by noise
        alone and (almost always) none passes; a sampler that refines only these points then stays
        a space-filling design there. While no point has two losses told, noise cannot be told from
        signal and every point passes (one loss a point, as an offline design tells them, ranks as
        before).

        Example::

            >>> averages = LossAverages()
            >>> losses = np.random.default_rng(0).normal(1.0, 0.1, size=40) + np.repeat([0, 0, 0, 1.0], 10)
            >>> averages.add(np.repeat([[0.1], [0.2], [0.3], [0.9]], 10, axis=0), losses)
            >>> averages.significant(2.0).tolist()  # only the point whose losses are twice the others'
            [False, False, False, True]
        """
        if not self._sums:
            return np.zeros(0, dtype=bool)
        keys = list(self._sums)
        sums = np.asarray([self._sums[k] for k in keys])
        squares = np.asarray([self._squares.get(k, np.nan) for k in keys])  # nan: not known
        counts = np.asarray([self._counts[k] for k in keys], dtype=np.float64)
        means = sums / counts
        variances = np.maximum(squares / counts - means**2, 0.0) * counts / np.maximum(counts - 1, 1)
        usable = (counts >= 2) & np.isfinite(variances)
        if not usable.any():
            return np.ones(len(keys), dtype=bool)
        pooled = float(np.mean(variances[usable]))
        threshold = float(norm.isf(norm.sf(z) / len(keys)))
        return means - threshold * np.sqrt(pooled / counts) > means.mean()

    def candidates(self, z: float | None) -> np.ndarray:
        """Indices into :meth:`table` of the points a sampler may refine: those :meth:`significant`
        at ``z``, or every point with ``None``."""
        if z is None:
            return np.arange(len(self._sums))
        return np.flatnonzero(self.significant(z))

    def state_dict(self) -> dict[str, Any]:
        """Points, their simulation ids (``None``: keyed by the point), loss sums, sums of squares
        and counts as plain lists (exact: sums, not means, are kept); the simulations located and
        not yet told, and those that failed."""
        keys = list(self._sums)
        return {
            "points": [list(self._points[k]) for k in keys],
            "simulation_ids": [k if isinstance(k, int) else None for k in keys],
            "sums": [self._sums[k] for k in keys],
            "squares": [self._squares.get(k, float("nan")) for k in keys],
            "counts": [self._counts[k] for k in keys],
            "located": [[k, list(p)] for k, p in self._points.items() if k not in self._sums],
            "failed": list(self._failed),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a state without sums of squares counts each
        point's losses as equal: its spread is then the pooled one)."""
        points = [tuple(float(v) for v in p) for p in state["points"]]
        ids = state.get("simulation_ids") or [None] * len(points)
        keys: list[Key] = [p if i is None else int(i) for p, i in zip(points, ids)]
        self._points = dict(zip(keys, points))
        self._sums = {k: float(s) for k, s in zip(keys, state["sums"])}
        self._counts = {k: int(c) for k, c in zip(keys, state["counts"])}
        squares = state.get("squares") or [float("nan")] * len(keys)
        self._squares = {k: float(q) for k, q in zip(keys, squares)}
        for key, point in state.get("located", []):
            self._points[int(key)] = tuple(float(v) for v in point)
        self._failed = dict.fromkeys(int(k) for k in state.get("failed", []))
