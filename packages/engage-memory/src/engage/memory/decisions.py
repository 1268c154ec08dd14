"""What the planner can decide for one block of a model."""

from __future__ import annotations

from enum import Enum


class Decision(str, Enum):
    """How the tensors a block saves for backward are kept until backward needs them.

    Examples:
        >>> Decision("recompute").label
        'recompute all'
    """

    KEEP = "keep"
    SELECTIVE = "selective"
    RECOMPUTE = "recompute"
    OFFLOAD = "offload"

    @property
    def label(self) -> str:
        """Short description for plan tables."""
        return {
            "keep": "keep",
            "selective": "recompute cheap ops",
            "recompute": "recompute all",
            "offload": "offload to host",
        }[self.value]


ALL_DECISIONS: tuple[Decision, ...] = (Decision.KEEP, Decision.SELECTIVE, Decision.RECOMPUTE, Decision.OFFLOAD)
