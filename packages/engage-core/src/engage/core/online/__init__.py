"""Online training: simulations run while the model trains and stream their samples to it.

``OnlineDataModule`` is the entry point; the pieces (wire protocol, client, buffer, scheduler,
journal) are usable on their own. Names are imported on first use, so simulation processes,
which import only the client, start without loading torch or Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Journal": "engage.core.online.journal",
    "OnlineDataModule": "engage.core.online.datamodule",
    "OnlineProgress": "engage.core.online.progress",
    "SimulationReport": "engage.core.online.report",
    "SimulationClient": "engage.core.online.client",
    "SimulationScheduler": "engage.core.online.scheduler",
    "TrainingBuffer": "engage.core.online.buffer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engage.core.online' has no attribute {name!r}")
