"""Records passed to the event hooks (``engage_simulation_*``, ``engage_run_started``, ``engage_run_finished``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from engage.core.online.record import SimulationRecord

__all__ = ["RunRecord", "SimulationRecord"]


@dataclass
class RunRecord:
    """One ``engage run`` job: when its MLflow run opened (``RUNNING``) or at its end."""

    run_id: str | None
    status: str
    tracking_uri: str
    output_dir: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
