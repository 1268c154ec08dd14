"""One simulation, as one typed record keyed by its id.

A :class:`SimulationRecord` is created once, when the sampler is asked for the simulation's
point, and travels whole: the JOB message a simulation process receives is built from it, the
journal writes it, a checkpoint holds it, and the scheduler tells the sampler about it by its id.
Its parameters are fixed at creation (values in the order of the parameter space, their unit-cube
coordinates and the named values); what changes is its attempt, the sample index a rerun resumes
from, its status and its counters.

Example::

    >>> import numpy as np
    >>> from engage.core import ParameterSpace
    >>> space = ParameterSpace.from_config({"k": {"low": 0.0, "high": 2.0}})
    >>> record = SimulationRecord.create(space, simulation_id=3, vector=np.array([0.5]))
    >>> record.parameters, record.unit, record.status
    ({'k': 0.5}, [0.25], 'pending')
    >>> SimulationRecord.from_dict(record.to_dict()) == record
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

#: what a record's ``status`` may be
STATUSES = ("pending", "running", "finished", "failed")


@dataclass
class SimulationRecord:
    """One simulation (see the module doc).

    ``status`` is one of ``pending``, ``running``, ``finished``, ``failed``. ``attempt`` counts the
    processes started for this simulation, from 1 (a retry and a resumed run each start a new
    one); ``failures`` counts those that failed, against the retry budget. ``resume_from`` is the
    index of the first sample the next process must send: the samples before it are held already.
    """

    simulation_id: int
    parameters: dict[str, Any]
    #: the point's position in the sequence the sampler's ``ask`` produced (from 0): how the
    #: sampler knows which of its points a result is about
    ask_index: int = 0
    vector: list[float] = field(default_factory=list)
    unit: list[float] = field(default_factory=list)
    status: str = "pending"
    attempt: int = 1
    failures: int = 0
    resume_from: int = 0
    samples_sent: int = 0
    samples_received: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    host: str = "localhost"
    error: str | None = None
    stderr_tail: str = ""
    #: when this attempt's first sample arrived; with ``bytes_received``, the stream's throughput
    first_sample_at: float | None = None
    bytes_received: int = 0

    @classmethod
    def create(cls, space: Any, simulation_id: int, vector: np.ndarray, ask_index: int = 0) -> SimulationRecord:
        """The record of a new simulation at ``vector`` (parameter values in the order of ``space``),
        the sampler's point number ``ask_index``."""
        values = np.asarray(vector, dtype=np.float64).reshape(1, -1)
        return cls(
            simulation_id=int(simulation_id),
            parameters=space.to_dicts(values)[0],
            ask_index=int(ask_index),
            vector=values[0].tolist(),
            unit=space.to_unit(values)[0].tolist(),
        )

    @property
    def settled(self) -> bool:
        """Finished, or failed for good (no process of it will start again)."""
        return self.status in ("finished", "failed")

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    @property
    def stream_bytes_per_s(self) -> float | None:
        """Sample bytes per second from this attempt's first sample to its end: the stream's rate,
        without the process start-up that ``duration`` includes."""
        if self.first_sample_at is None or self.ended_at is None or self.ended_at <= self.first_sample_at:
            return None
        return self.bytes_received / (self.ended_at - self.first_sample_at)

    def next_attempt(self) -> None:
        """Make this record the one of a new process, resuming after the samples held."""
        self.attempt += 1
        self.status = "pending"
        self.error, self.stderr_tail = None, ""
        self.started_at = self.ended_at = self.first_sample_at = None
        self.bytes_received = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON and checkpoints), with the derived ``duration`` and stream rate.

        A copy (the lists and the parameters' dict too): the record goes on changing. Written
        field by field: ``dataclasses.asdict`` deep-copies every number, and the journal calls
        this twice per simulation."""
        data = {name: getattr(self, name) for name in _FIELD_NAMES}
        data["parameters"], data["vector"], data["unit"] = dict(self.parameters), list(self.vector), list(self.unit)
        data["duration"] = self.duration
        data["stream_bytes_per_s"] = self.stream_bytes_per_s
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimulationRecord:
        """The record :meth:`to_dict` wrote (derived values are ignored)."""
        return cls(**{k: v for k, v in data.items() if k in _FIELD_NAMES})


_FIELD_NAMES = tuple(f.name for f in fields(SimulationRecord))
