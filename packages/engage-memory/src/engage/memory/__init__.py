"""Plan a training step's memory under a budget: keep or recompute (all, or the cheap ops) each block.

Names load on first use (PEP 562), so that importing the plugin module or the package itself does not pull
in torch and Lightning: ``engage plugins`` imports every plugin and must stay fast.

Examples:
    >>> from engage.memory import MemoryPlanningStrategy
    >>> strategy = MemoryPlanningStrategy(budget="12GiB")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engage.memory.blocks import NoBlocksError, find_blocks
    from engage.memory.budget import format_bytes, parse_budget
    from engage.memory.chunked_loss import chunked_cross_entropy, loss_chunks
    from engage.memory.ddp_strategy import DDPMemoryPlanningStrategy
    from engage.memory.decisions import Decision
    from engage.memory.errors import (
        InfeasibleBudgetError,
        PlannedOutOfMemoryError,
        ProfileMismatchError,
        UnsupportedSetupError,
    )
    from engage.memory.meter import MemoryMeter
    from engage.memory.plan import Plan
    from engage.memory.planner import MemoryPlanner
    from engage.memory.profile import Profile
    from engage.memory.solver_cpsat import CpSatSolver
    from engage.memory.solver_dp import DynamicProgrammingSolver
    from engage.memory.strategy import MemoryPlanningStrategy

# Public name -> submodule that defines it.
_EXPORTS = {
    "CpSatSolver": "solver_cpsat",
    "DDPMemoryPlanningStrategy": "ddp_strategy",
    "Decision": "decisions",
    "DynamicProgrammingSolver": "solver_dp",
    "InfeasibleBudgetError": "errors",
    "MemoryMeter": "meter",
    "MemoryPlanner": "planner",
    "MemoryPlanningStrategy": "strategy",
    "NoBlocksError": "blocks",
    "Plan": "plan",
    "PlannedOutOfMemoryError": "errors",
    "Profile": "profile",
    "ProfileMismatchError": "errors",
    "UnsupportedSetupError": "errors",
    "chunked_cross_entropy": "chunked_loss",
    "loss_chunks": "chunked_loss",
    "find_blocks": "blocks",
    "format_bytes": "budget",
    "parse_budget": "budget",
}

__all__ = [
    "CpSatSolver",
    "DDPMemoryPlanningStrategy",
    "Decision",
    "DynamicProgrammingSolver",
    "InfeasibleBudgetError",
    "MemoryMeter",
    "MemoryPlanner",
    "MemoryPlanningStrategy",
    "NoBlocksError",
    "Plan",
    "PlannedOutOfMemoryError",
    "Profile",
    "ProfileMismatchError",
    "UnsupportedSetupError",
    "chunked_cross_entropy",
    "find_blocks",
    "format_bytes",
    "loss_chunks",
    "parse_budget",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
