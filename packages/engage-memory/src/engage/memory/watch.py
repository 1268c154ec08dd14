"""Noticing a training step that leaves its plan: blocks called more often than profiled, a higher peak."""

from __future__ import annotations

from collections import Counter

import torch

from engage.memory.budget import format_bytes
from engage.memory.plan import Plan
from engage.memory.profile import Profile
from engage.memory.runtime import PlanRuntime


def profiled_calls(profile: Profile) -> Counter[int]:
    """How many times the profiled step called each planned module (by index in ``profile.units``)."""
    return Counter(profile.module_of(i) for i in range(len(profile.blocks)))


class StepWatch:
    """Compares each finished step with what its plan was made for; says why a step needs a new plan.

    Blocks calls are counted by the :class:`~engage.memory.runtime.PlanRuntime` on every device; on CUDA
    the allocator's peak over the step is compared with the plan's budget as well.

    Examples:
        >>> import torch
        >>> from engage.memory.runtime import PlanRuntime
        >>> watch = StepWatch(PlanRuntime([("a", torch.nn.Linear(2, 2))], torch.device("cpu")), torch.device("cpu"))
        >>> watch.check() is None  # nothing to compare with before a plan exists
        True
    """

    def __init__(self, runtime: PlanRuntime, device: torch.device) -> None:
        self.runtime = runtime
        self.device = torch.device(device)
        self.plan: Plan | None = None
        self.expected: Counter[int] = Counter()

    def follow(self, plan: Plan, profile: Profile | None) -> None:
        """Compare the next steps with ``plan`` and the step ``profile`` measured."""
        self.plan = plan
        self.expected = profiled_calls(profile) if profile is not None else Counter()

    def start(self) -> None:
        """A step begins: count its block calls (and on CUDA its peak) afresh."""
        self.runtime.reset_calls()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def check(self) -> str | None:
        """Why the step since :meth:`start` left its plan (one line), or ``None`` if it kept to it."""
        if self.plan is None:
            return None
        names = self.plan.names
        for index, count in sorted(self.runtime.calls.items()):
            if self.expected and count > self.expected.get(index, 0):
                return (
                    f"block {names[index]} ran {count} times in a step, but {self.expected.get(index, 0)} "
                    "times in the profiled one"
                )
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
            if peak > self.plan.budget:
                return (
                    f"a step peaked at {format_bytes(peak)}, above the plan's budget {format_bytes(self.plan.budget)}"
                )
        return None
