"""Per-point running means of told losses, shared by the loss-aware samplers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: decimals of the unit coordinates that identify a point (told losses are matched on them)
DECIMALS = 9


class LossAverages:
    """The running mean of the losses told for each point (one point, one simulation).

    A training step sees a few samples of a simulation, so the loss of one batch is a noisy
    estimate of how well the network knows that simulation; the mean over every sample told so
    far is not. Points are keyed by their unit coordinates rounded to 9 decimals; the oldest
    points are forgotten beyond ``max_points``.

    Example::

        >>> averages = LossAverages()
        >>> averages.add(np.array([[0.5], [0.5], [0.25]]), np.array([1.0, 3.0, 4.0]))
        >>> averages.table()[1].tolist(), averages.count((0.5,))
        ([2.0, 4.0], 2)
    """

    def __init__(self, max_points: int = 100_000):
        self.max_points = int(max_points)
        self._sums: dict[tuple[float, ...], float] = {}
        self._counts: dict[tuple[float, ...], int] = {}

    @staticmethod
    def key(unit_row: np.ndarray | Sequence[float]) -> tuple[float, ...]:
        """The key of a point given in unit coordinates."""
        return tuple(np.round(np.asarray(unit_row, dtype=np.float64), DECIMALS).tolist())

    def __len__(self) -> int:
        return len(self._sums)

    def add(self, unit: np.ndarray, losses: np.ndarray, replace: bool = False) -> None:
        """Add one loss per row of ``unit`` (with ``replace``, the loss replaces what was told
        before for that point); non-finite losses are ignored."""
        for row, loss in zip(np.atleast_2d(unit), np.asarray(losses, dtype=np.float64).reshape(-1)):
            if not np.isfinite(loss):
                continue
            key = self.key(row)
            # popped and re-inserted: the most recently told points survive trimming
            total, count = self._sums.pop(key, 0.0), self._counts.pop(key, 0)
            self._sums[key] = float(loss) if replace else total + float(loss)
            self._counts[key] = 1 if replace else count + 1
        while len(self._sums) > self.max_points:
            oldest = next(iter(self._sums))
            del self._sums[oldest], self._counts[oldest]

    def mean(self, key: tuple[float, ...]) -> float | None:
        """The running mean loss of a point, ``None`` when none was told."""
        count = self._counts.get(key)
        return None if not count else self._sums[key] / count

    def count(self, key: tuple[float, ...]) -> int:
        """How many losses were told for a point."""
        return self._counts.get(key, 0)

    def forget(self, key: tuple[float, ...]) -> None:
        """Drop a point (its simulation failed)."""
        self._sums.pop(key, None)
        self._counts.pop(key, None)

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """``(unit points, mean losses)`` in the order the points were last told."""
        if not self._sums:
            return np.empty((0, 0)), np.empty(0)
        keys = list(self._sums)
        return np.asarray(keys, dtype=np.float64), np.asarray([self._sums[k] / self._counts[k] for k in keys])

    def state_dict(self) -> dict[str, Any]:
        """Points, loss sums and counts as plain lists (exact: sums, not means, are kept)."""
        keys = list(self._sums)
        return {
            "points": [list(k) for k in keys],
            "sums": [self._sums[k] for k in keys],
            "counts": [self._counts[k] for k in keys],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        keys = [tuple(float(v) for v in p) for p in state["points"]]
        self._sums = {k: float(s) for k, s in zip(keys, state["sums"])}
        self._counts = {k: int(c) for k, c in zip(keys, state["counts"])}
