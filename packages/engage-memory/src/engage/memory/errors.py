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
        low, high = format_bytes(budget), format_bytes(minimum)
        if low == high:  # two sizes that print alike: show the bytes that tell them apart
            low, high = f"{low} ({budget} B)", f"{high} ({minimum} B)"
        super().__init__(
            f"no memory plan fits budget={low}: the smallest feasible budget is "
            f"{high} (the lowest-memory plan); set budget to at least {high}"
        )


class PlannedOutOfMemoryError(RuntimeError):
    """The device ran out of memory during a planned step; the message carries the plan and the measured peak."""


class ProfileMismatchError(ValueError):
    """A saved profile was measured for another model or another input than the one being trained."""


class UnsupportedSetupError(ValueError):
    """A training setup the memory planner cannot plan for; the message says what to change."""


class BlocksWithoutBackward(ValueError):
    """Blocks that ran in the profiled step but took no part in its backward (frozen layers before
    any that train, a teacher run without gradients): nothing of theirs waits for backward, so
    there is nothing to plan. ``names``: those blocks."""

    def __init__(self, names: list[str], message: str) -> None:
        super().__init__(message)
        self.names = names
