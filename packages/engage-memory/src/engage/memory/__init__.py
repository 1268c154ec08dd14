"""Plan a training step's memory under a budget: recompute, offload to host, pipeline.

Example:
    >>> from engage.memory import MemoryPlanningStrategy
    >>> strategy = MemoryPlanningStrategy(budget="12GiB")
"""

from engage.memory.budget import format_bytes, parse_budget
from engage.memory.ddp_strategy import DDPMemoryPlanningStrategy
from engage.memory.decisions import Decision
from engage.memory.errors import InfeasibleBudgetError, PlannedOutOfMemoryError
from engage.memory.meter import MemoryMeter
from engage.memory.plan import Plan
from engage.memory.planner import MemoryPlanner, find_blocks
from engage.memory.profile import Profile
from engage.memory.solver_cpsat import CpSatSolver
from engage.memory.solver_dp import DynamicProgrammingSolver
from engage.memory.strategy import MemoryPlanningStrategy

__all__ = [
    "CpSatSolver",
    "DDPMemoryPlanningStrategy",
    "Decision",
    "DynamicProgrammingSolver",
    "InfeasibleBudgetError",
    "MemoryMeter",
    "MemoryPlanner",
    "MemoryPlanningStrategy",
    "Plan",
    "PlannedOutOfMemoryError",
    "Profile",
    "find_blocks",
    "format_bytes",
    "parse_budget",
]
