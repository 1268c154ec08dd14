"""Sampler steering: which simulations run next, and what the sampler hears of those that ended.

Each new simulation is one :class:`~.record.SimulationRecord`, created when the sampler is asked
for its point; every rank asks the same sequence (same seed) and keeps its share, so ranks never
simulate the same point. The sampler is told once per settled simulation, from its record. A
sampler that raises ends the run (:class:`SchedulerError`): a run must never go on with a
sampler that stopped steering it.

Example::

    >>> from engage.core import ParameterSpace, UniformSampler
    >>> space = ParameterSpace.from_config({"x": {"low": 0, "high": 1}})
    >>> steering = Steering(UniformSampler(space, seed=0), space, simulations=2)
    >>> [steering.new_record().simulation_id for _ in range(2)], steering.budget_reached(samples=0)
    ([0, 1], True)
"""

from __future__ import annotations

from typing import Any

from engage.core.online.record import SimulationRecord
from engage.core.samplers.base import FailureAction, Sampler


class SchedulerError(RuntimeError):
    """A failure of the trainer's side (the sampler, the buffer), never of a peer: it ends the run."""


class Steering:
    """Asks ``sampler`` for this rank's share of ``simulations`` (``None``: no bound) and tells
    it of settled ones."""

    def __init__(
        self,
        sampler: Sampler,
        space: Any,
        *,
        simulations: int | None,
        max_samples: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.sampler, self.space = sampler, space
        self.rank, self.world_size = rank, world_size
        #: simulations this rank must run (``None``: until stopped or ``max_samples``)
        self.budget = None if simulations is None else len(range(rank, simulations, world_size))
        self.max_samples = max_samples
        self.next_index = 0  # fresh simulations created on this rank
        self.planned = 0  # simulations counting toward the budget
        self.dropped = 0  # failed simulations a structured design leaves out by design

    @property
    def requested(self) -> int | None:
        """Simulations that must complete: the budget, less those a structured design dropped."""
        return None if self.budget is None else self.budget - self.dropped

    def budget_reached(self, samples: int) -> bool:
        if self.max_samples is not None and samples >= self.max_samples:
            return True
        return self.budget is not None and self.planned >= self.budget

    def new_record(self) -> SimulationRecord:
        """The record of the next simulation, at the sampler's next point."""
        first = getattr(self.sampler, "num_asked", 0)
        points = self._call("ask", self.world_size)
        index = self.next_index
        self.next_index += 1
        self.planned += 1
        sid = index * self.world_size + self.rank
        return SimulationRecord.create(self.space, sid, points[self.rank], ask_index=first + self.rank)

    def finished(self, record: SimulationRecord) -> None:
        """Tell the sampler a simulation finished (every sample received), by its record."""
        self._call("simulation_finished", record, record=record)

    def given_up(self, record: SimulationRecord, redraw: bool) -> None:
        """Tell the sampler a simulation failed for good, by its record; with ``redraw`` a new
        point replaces it in the budget. A structured design that drops the failed point's group
        (``drops_by_design``) takes it out of the simulations requested."""
        action = self._call("simulation_failed", record, record=record)
        if redraw:
            self.planned -= 1
        elif action is FailureAction.DROP and getattr(self.sampler, "drops_by_design", False):
            self.dropped += 1

    def _call(self, method: str, *args: Any, record: SimulationRecord | None = None, **kwargs: Any) -> Any:
        try:
            return getattr(self.sampler, method)(*args, **kwargs)
        except Exception as exc:
            on = f" on simulation {record.simulation_id}" if record is not None else ""
            raise SchedulerError(
                f"sampler {type(self.sampler).__name__}.{method} failed{on}: {type(exc).__name__}: {exc}"
            ) from exc

    def state_dict(self) -> dict[str, int]:
        return {"next_index": self.next_index, "planned": self.planned, "dropped": self.dropped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_index, self.planned = int(state["next_index"]), int(state["planned"])
        self.dropped = int(state.get("dropped", 0))
