"""The sampler contract: ask for points, tell results, save and restore state."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from engage.core.space import ParameterSpace

if TYPE_CHECKING:
    from engage.core.online.record import SimulationRecord


class FailureAction(str, enum.Enum):
    """What a sampler does with a point whose simulation failed for good."""

    RESIMULATE = "resimulate"  # run the same parameters again
    SUBSTITUTE = "substitute"  # the sampler proposes replacement points (see ``ask``)
    DROP = "drop"  # forget the point (and, for structured designs, its group)


class Sampler(ABC):
    """Base class of every sampler.

    A sampler proposes points of a :class:`ParameterSpace` (``ask``), learns from the results of
    earlier points (``tell``), and can be checkpointed (``state_dict``/``load_state_dict``): a
    sampler restored from a state continues exactly as the original would have. Points are
    ``(n, d)`` float arrays of parameter *values* (categoricals as choice indices).

    Subclasses implement :meth:`_ask` and, if they keep state beyond the random generator and the
    counters kept here, extend :meth:`state_dict` and :meth:`load_state_dict`.

    Example::

        >>> from engage.core import ParameterSpace, UniformSampler
        >>> space = ParameterSpace.from_config({"x": {"low": 0, "high": 1}})
        >>> sampler = UniformSampler(space, seed=3)
        >>> sampler.ask(4).shape
        (4, 1)
    """

    #: how this sampler treats a permanently failed point (see :class:`FailureAction`)
    failure_action: FailureAction = FailureAction.DROP
    #: a structured design that leaves a failed point's group out of its analysis: such a failure
    #: is part of the design, and the online engine no longer counts that simulation as requested
    drops_by_design: bool = False

    def __init__(self, space: ParameterSpace, seed: int | None = 0):
        if not isinstance(space, ParameterSpace):
            hint = "; make one with ParameterSpace.from_config(...)" if isinstance(space, dict) else ""
            raise TypeError(f"space must be a ParameterSpace, got {type(space).__name__}{hint}")
        self.space = space
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.num_asked = 0
        self.num_told = 0
        self.num_finished = 0  # simulations the online engine reported finished
        self.failed: list[list[float]] = []

    # ------------------------------------------------------------------ contract
    def ask(self, n: int) -> np.ndarray:
        """The next ``n`` points, an ``(n, d)`` array inside the space."""
        if int(n) != n or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        n = int(n)
        if n == 0:
            return np.empty((0, self.space.dim))
        points = np.asarray(self._ask(n), dtype=np.float64).reshape(n, self.space.dim)
        bad = ~np.isfinite(points)
        if bad.any():
            row, column = (int(i[0]) for i in np.nonzero(bad))
            raise ValueError(
                f"{type(self).__name__} asked point {row} with parameter {self.space.names[column]!r} = "
                f"{points[row, column]}: a sampler's points are finite values inside the space"
            )
        self.num_asked += n
        return points

    @abstractmethod
    def _ask(self, n: int) -> np.ndarray:
        """Produce ``n`` new points (values, not unit coordinates)."""

    def tell(
        self,
        points: np.ndarray,
        *,
        losses: Sequence[float] | np.ndarray | None = None,
        outputs: Sequence[Any] | None = None,
        simulation_ids: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Report results of earlier points: a loss per point and/or an output per point.

        With ``simulation_ids`` (one per row: the id of the simulation record each result is
        about, as the online engine's batches carry it in ``simulation_id``), results are keyed by
        their simulation, never matched by the values of ``points``, which then only say where each
        simulation is. Without them (plain Lightning code, offline designs) a result is about the
        point at those values.

        The base class only counts them; adaptive samplers override :meth:`_tell` and, to key
        results by simulation, :meth:`_tell_simulations`.
        """
        points = np.atleast_2d(np.asarray(points, dtype=np.float64))
        if points.shape[1] != self.space.dim:
            raise ValueError(f"points have {points.shape[1]} coordinates; the space has {self.space.dim}")
        for name, values in (("losses", losses), ("outputs", outputs), ("simulation_ids", simulation_ids)):
            if values is not None and len(values) != len(points):
                raise ValueError(f"{name} has {len(values)} entries for {len(points)} points")
        self.num_told += len(points)
        losses = None if losses is None else np.asarray(losses, dtype=np.float64)
        if simulation_ids is None:
            self._tell(points, losses, outputs)
            return
        ids = np.asarray(simulation_ids)
        if len(ids) and (ids.dtype.kind not in "iu" or ids.min() < 0):
            raise ValueError("simulation_ids must be non-negative integers (the ids of simulation records)")
        self._tell_simulations(ids.astype(np.int64), points, losses, outputs)

    def _tell(self, points: np.ndarray, losses: np.ndarray | None, outputs: Sequence[Any] | None) -> None:  # noqa: B027
        """Learn from results; non-adaptive samplers ignore them (hence not abstract)."""

    def _tell_simulations(
        self, simulation_ids: np.ndarray, points: np.ndarray, losses: np.ndarray | None, outputs: Sequence[Any] | None
    ) -> None:
        """Learn from results keyed by simulation id; by default they are told as points."""
        self._tell(points, losses, outputs)

    # ------------------------------------------------------------------ the online engine's contract
    def simulation_finished(self, record: SimulationRecord) -> None:
        """The online engine's word that the simulation of ``record`` finished: every sample of it
        reached the training buffer. Called once per simulation, with the record created when
        this sampler was asked for its point (``record.ask_index`` is the point's position in the
        sequence :meth:`ask` produced, counting from 0), never matched by value. Results (losses,
        outputs) reach the sampler through :meth:`tell`, from callbacks that compute them; the
        base class only counts finished simulations."""
        self.num_finished += 1

    def simulation_failed(self, record: SimulationRecord) -> FailureAction:
        """The online engine's word that the simulation of ``record`` failed for good (once per
        simulation, by record); returns what the sampler does about it. By default the point is
        reported to :meth:`report_failure`; structured designs find their row by
        ``record.ask_index``."""
        return self.report_failure(np.asarray(record.vector, dtype=np.float64)[None, :])

    def report_failure(self, points: np.ndarray) -> FailureAction:
        """Tell the sampler these points failed for good; returns what it does about it."""
        for row in np.atleast_2d(np.asarray(points, dtype=np.float64)):
            self.failed.append(row.tolist())
        return self.failure_action

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this sampler is (plain Python data)."""
        return {
            "class": type(self).__qualname__,
            "seed": self.seed,
            "rng": self.rng.bit_generator.state,
            "num_asked": self.num_asked,
            "num_told": self.num_told,
            "num_finished": self.num_finished,
            "failed": [list(row) for row in self.failed],
            "space": self.space.to_config(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` of a sampler of the same class and space."""
        if state.get("class") != type(self).__qualname__:
            raise ValueError(f"state is of sampler {state.get('class')!r}, not {type(self).__qualname__!r}")
        if ParameterSpace.from_config(state["space"]) != self.space:
            raise ValueError("state was saved for another parameter space")
        self.seed = state["seed"]
        self.rng.bit_generator.state = state["rng"]
        self.num_asked = int(state["num_asked"])
        self.num_told = int(state["num_told"])
        self.num_finished = int(state.get("num_finished", 0))
        self.failed = [list(row) for row in state.get("failed", [])]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(space={self.space!r}, seed={self.seed})"
