"""Shared machinery of structured designs (Sobol, Morris): groups of rows that only mean
something together, results matched back to their rows, and failure handling per group."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from engage.core.samplers.base import FailureAction, Sampler
from engage.core.space import ParameterSpace

ON_FAILURE = ("drop", "resimulate")


class StructuredDesignSampler(Sampler):
    """Serves the rows of a structured design in order, block after block, and keeps the results
    told for them so that the design can be analysed.

    A design is made of *groups* (a base row of a Sobol design with its radial rows, a Morris
    trajectory) of :attr:`group_size` rows. When a point fails for good:

    * ``on_failure="drop"`` (``FailureAction.DROP``): its whole group is left out of the analysis;
      the remaining groups still form a valid (smaller) design.
    * ``on_failure="resimulate"`` (``FailureAction.RESIMULATE``): the caller runs the same
      parameters again; the row waits for that result.

    Subclasses implement :meth:`_design_block` and :meth:`analyze`.
    """

    def __init__(self, space: ParameterSpace, seed: int | None = 0, on_failure: str = "drop"):
        super().__init__(space, seed)
        if on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure must be one of {', '.join(ON_FAILURE)}, got {on_failure!r}")
        self.on_failure = on_failure
        self.failure_action = FailureAction.DROP if on_failure == "drop" else FailureAction.RESIMULATE
        self.drops_by_design = on_failure == "drop"
        # blocks are regenerated from this seed on restore instead of being stored in checkpoints
        self._design_seed = int(seed) if seed is not None else int(self.rng.integers(2**31))
        self._cursor = 0
        self._results: dict[int, np.ndarray] = {}
        self._failed_rows: set[int] = set()
        self._reset_rows()

    def _reset_rows(self) -> None:
        # every row generated so far, unit coordinates, in a store that grows by doubling; and an
        # index from each served row's rounded values to its rows, extended as rows are served:
        # telling one result costs the same after 40,000 rows as after 10
        self._rows = np.empty((0, self.space.dim))
        self._generated = 0
        self._block_count = 0
        # keys: a row's values rounded to 9 digits, as bytes; values: its row, or the list of rows
        # that share those values (Morris trajectories share grid points). Neither bytes nor ints
        # are tracked by the garbage collector, whose passes would otherwise grow with the design
        self._index: dict[bytes, int | list[int]] = {}
        self._indexed = 0

    # ------------------------------------------------------------------ design
    @property
    @abstractmethod
    def group_size(self) -> int:
        """Rows per group."""

    @property
    @abstractmethod
    def block_rows(self) -> int:
        """Rows per generated block (a whole number of groups)."""

    @abstractmethod
    def _design_block(self, index: int) -> np.ndarray:
        """The unit-cube rows of block ``index``, deterministic given the design seed."""

    def _block_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self._design_seed, index]).generate_state(1)[0])

    def _unit_rows(self, stop: int) -> np.ndarray:
        while self._generated < stop:
            block = np.asarray(self._design_block(self._block_count), dtype=np.float64)
            self._block_count += 1
            end = self._generated + len(block)
            if end > len(self._rows):
                grown = np.empty((max(end, 2 * len(self._rows)), self.space.dim))
                grown[: self._generated] = self._rows[: self._generated]
                self._rows = grown
            self._rows[self._generated : end] = block
            self._generated = end
        return self._rows[:stop]

    def design(self, unit: bool = False) -> np.ndarray:
        """Every row served so far, in design order (values, or unit coordinates with ``unit``)."""
        rows = self._unit_rows(self._cursor)
        return rows if unit else self._values(rows)

    def _values(self, unit: np.ndarray) -> np.ndarray:
        # designs hit the faces of the cube exactly; clip the round-off of the inverse CDFs there
        bounds = self.space.bounds
        return np.clip(self.space.from_unit(unit), bounds[:, 0], bounds[:, 1])

    def _ask(self, n: int) -> np.ndarray:
        rows = self._unit_rows(self._cursor + n)[self._cursor :]
        self._cursor += n
        return self._values(rows)

    # ------------------------------------------------------------------ results
    @staticmethod
    def _keys(points: np.ndarray) -> list[bytes]:
        rounded = np.ascontiguousarray(np.round(np.atleast_2d(points), 9) + 0.0)  # + 0.0: no -0.0
        return [row.tobytes() for row in rounded]

    def _rows_at(self, key: bytes) -> list[int]:
        if self._indexed < self._cursor:
            new = self._values(self._unit_rows(self._cursor)[self._indexed : self._cursor])
            for i, k in enumerate(self._keys(new), start=self._indexed):
                held = self._index.get(k)
                self._index[k] = i if held is None else ([held, i] if isinstance(held, int) else [*held, i])
            self._indexed = self._cursor
        rows = self._index.get(key)
        return [] if rows is None else [rows] if isinstance(rows, int) else rows

    def _match(self, points: np.ndarray, want_pending: bool) -> list[int | None]:
        matched: list[int | None] = []
        for key in self._keys(points):
            rows = self._rows_at(key)
            # identical points (Morris trajectories share grid points) fill their rows in design order
            waiting = [r for r in rows if r not in self._results and r not in self._failed_rows and r not in matched]
            pick = waiting[0] if waiting else None
            if pick is None and not want_pending and rows:
                pick = rows[0]
            matched.append(pick)
        return matched

    def _tell(self, points: np.ndarray, losses: np.ndarray | None, outputs: Sequence[Any] | None) -> None:
        values = outputs if outputs is not None else losses
        if values is None:
            return
        for row, value in zip(self._match(points, want_pending=True), values):
            if row is not None:
                self._results[row] = np.asarray(value, dtype=np.float64)

    def simulation_failed(self, record: Any) -> FailureAction:
        """The simulation of design row ``record.ask_index`` failed for good: that row, found by
        its position in the design, never by its values."""
        row = int(record.ask_index)
        if not 0 <= row < self._cursor:
            return super().simulation_failed(record)
        self.failed.append(list(record.vector))
        if self.failure_action is FailureAction.DROP:
            self._failed_rows.add(row)
        return self.failure_action

    def report_failure(self, points: np.ndarray) -> FailureAction:
        action = super().report_failure(points)
        if action is FailureAction.DROP:
            for row in self._match(points, want_pending=False):
                if row is not None:
                    self._failed_rows.add(row)
        return action

    def complete_groups(self) -> tuple[np.ndarray, int]:
        """Indices of the groups whose rows all have results, and how many groups were dropped
        because one of their points failed."""
        groups = self._cursor // self.group_size
        complete, dropped = [], 0
        for g in range(groups):
            rows = range(g * self.group_size, (g + 1) * self.group_size)
            if any(r in self._failed_rows for r in rows):
                dropped += 1
            elif all(r in self._results for r in rows):
                complete.append(g)
        return np.asarray(complete, dtype=int), dropped

    def pending_groups(self) -> int:
        """Groups asked for (in part too), none of whose points failed, still without every
        result: never run (a budget spent on re-simulations) or still running; an analysis now
        leaves them out, as it does dropped ones."""
        complete, dropped = self.complete_groups()
        return -(-self._cursor // self.group_size) - len(complete) - dropped

    def collected(self) -> tuple[np.ndarray, np.ndarray, int]:
        """``(unit rows, outputs, groups dropped)`` of the complete groups, in design order."""
        complete, dropped = self.complete_groups()
        rows = [g * self.group_size + k for g in complete for k in range(self.group_size)]
        if not rows:
            raise ValueError(
                f"no complete design group yet ({self.num_told} results told, group size {self.group_size}); "
                "ask and tell at least one whole group"
            )
        X = self._unit_rows(self._cursor)[rows]
        Y = np.stack([self._results[r] for r in rows])
        return X, Y, dropped

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "design_seed": self._design_seed,
            "cursor": self._cursor,
            "on_failure": self.on_failure,
            "results": {int(k): v.tolist() for k, v in self._results.items()},
            "failed_rows": sorted(self._failed_rows),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._design_seed = int(state["design_seed"])
        self._cursor = int(state["cursor"])
        self._reset_rows()
        self._results = {int(k): np.asarray(v, dtype=np.float64) for k, v in state.get("results", {}).items()}
        self._failed_rows = {int(r) for r in state.get("failed_rows", [])}
