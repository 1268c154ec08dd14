"""What the planner can decide for one block of a model."""

from __future__ import annotations

from enum import Enum
from typing import Any

#: Why ``offload`` is refused, in one line: what it would need to mean something.
OFFLOAD_UNAVAILABLE = (
    "decision 'offload' is not available: copying saved activations to host memory saves device memory only on a "
    "CUDA GPU in eager mode (on CPU host and device are one memory; under torch.compile every saved tensor is "
    "unpacked at the start of backward), and it needs its GPU tests and benchmark run on a CUDA machine first; "
    "choose among keep, selective, recompute"
)


class Decision(str, Enum):
    """How the tensors a block saves for backward are kept until backward needs them.

    Examples:
        >>> Decision("recompute").label
        'recompute all'
        >>> try:
        ...     Decision("offload")
        ... except ValueError as err:
        ...     print(str(err).split(":")[0])
        decision 'offload' is not available
    """

    KEEP = "keep"
    SELECTIVE = "selective"
    RECOMPUTE = "recompute"

    @classmethod
    def _missing_(cls, value: Any) -> Decision | None:
        if isinstance(value, str) and value.strip().lower() == "offload":
            from engage.memory.errors import UnsupportedSetupError

            raise UnsupportedSetupError(OFFLOAD_UNAVAILABLE)
        return None

    @property
    def label(self) -> str:
        """Short description for plan tables."""
        return {"keep": "keep", "selective": "recompute cheap ops", "recompute": "recompute all"}[self.value]


ALL_DECISIONS: tuple[Decision, ...] = (Decision.KEEP, Decision.SELECTIVE, Decision.RECOMPUTE)
