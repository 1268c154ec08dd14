"""Records passed to the event hooks (``engage_simulation_*``, ``engage_run_finished``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class SimulationRecord:
    """One simulation as the journal records it.

    ``status`` is one of ``pending``, ``running``, ``finished``, ``failed``; ``attempt`` counts
    from 1 and grows with each retry of the same parameters.
    """

    simulation_id: int
    parameters: dict[str, Any]
    status: str = "pending"
    attempt: int = 1
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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration"] = self.duration
        data["stream_bytes_per_s"] = self.stream_bytes_per_s
        return data


@dataclass
class RunRecord:
    """One ``engage run`` job at its end."""

    run_id: str | None
    status: str
    tracking_uri: str
    output_dir: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
