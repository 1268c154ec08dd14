"""Errors the memory planner raises, each readable in one line."""

from __future__ import annotations

from engage.memory.budget import format_bytes


class InfeasibleBudgetError(ValueError):
    """No plan fits the budget; ``minimum`` is the smallest budget (bytes) that has one.

    Examples:
        >>> err = InfeasibleBudgetError(2**30, 3 * 2**30)
        >>> str(err).startswith("no memory plan fits budget=1.00 GiB: the smallest feasible budget is 3.00 GiB")
        True
    """

    def __init__(self, budget: int, minimum: int) -> None:
        self.budget = budget
        self.minimum = minimum
        super().__init__(
            f"no memory plan fits budget={format_bytes(budget)}: the smallest feasible budget is "
            f"{format_bytes(minimum)} (the lowest-memory plan); set budget to at least {format_bytes(minimum)}"
        )


class PlannedOutOfMemoryError(RuntimeError):
    """The device ran out of memory during a planned step; the message carries the plan and the measured peak."""
