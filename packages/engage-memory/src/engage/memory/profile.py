"""A measured training step, block by block, and the peak and time it predicts for any plan."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engage.memory.decisions import ALL_DECISIONS, Decision

if TYPE_CHECKING:
    from torch import nn


def model_signature(model: nn.Module, blocks: Sequence[tuple[str, nn.Module]]) -> str:
    """Names the model a profile belongs to: its class, planned blocks and parameter shapes (hashed).

    Examples:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        >>> model_signature(net, list(net.named_children())).startswith("Sequential, 2 blocks, 4 tensors #")
        True
    """
    tensors = [(n, tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters()]
    digest = hashlib.sha256(repr((tensors, [name for name, _ in blocks])).encode()).hexdigest()[:12]
    return f"{type(model).__name__}, {len(blocks)} blocks, {len(tensors)} tensors #{digest}"


def input_signature(roots: Sequence[Any]) -> str:
    """Shapes and dtypes of a step's input tensors, as text.

    Examples:
        >>> import torch
        >>> input_signature([torch.zeros(8, 64, dtype=torch.long)])
        'int64[8, 64]'
    """
    parts = [
        f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"
        for t in roots
        if hasattr(t, "shape") and hasattr(t, "dtype")
    ]
    return ", ".join(parts)


@dataclass
class DecisionCost:
    """What one block costs under one decision, measured in context (bytes, seconds).

    ``fwd_peak``/``bwd_peak`` are the highest live bytes during the block's forward/backward window above
    the live bytes when it started; ``fwd_delta`` is what the block leaves alive after its forward.
    """

    fwd_peak: int
    fwd_delta: int
    bwd_peak: int
    bwd_delta: int
    fwd_time: float
    bwd_time: float


def _decision_cost(data: dict[str, Any]) -> DecisionCost:
    # profiles written when offload was offered also carry its host_bytes, no cost of any decision now
    return DecisionCost(**{f.name: data[f.name] for f in fields(DecisionCost)})


@dataclass
class BlockProfile:
    """One block: its name and its cost under each decision that was measured."""

    name: str
    costs: dict[str, DecisionCost]
    grad_delta: int = 0
    #: index of the planned module this call belongs to (a module called twice per step has two blocks);
    #: -1: the block's own index
    module: int = -1

    def overhead(self, decision: Decision) -> float:
        """Extra step time (s) of ``decision`` over keeping everything, never negative."""
        keep = self.costs[Decision.KEEP.value]
        cost = self.costs[decision.value]
        extra = (cost.fwd_time + cost.bwd_time) - (keep.fwd_time + keep.bwd_time)
        if decision is Decision.RECOMPUTE:
            # Recomputing a whole block redoes at least its forward; timing noise must not hide that.
            extra = max(extra, keep.fwd_time)
        return max(extra, 0.0)


@dataclass
class Profile:
    """A measured training step: per-block costs plus the memory no plan can remove.

    Save it with :meth:`save` and plan again later with :meth:`load` without re-profiling.

    Examples:
        >>> p = Profile(blocks=[], base=100, prologue_peak=120, epilogue_peak={"keep": 10}, epilogue_delta={"keep": 5},
        ...             end_live=90, fwd_order=[], bwd_order=[], chain=True, step_time=0.1)
        >>> Profile.from_dict(p.to_dict()).base
        100
    """

    blocks: list[BlockProfile]
    base: int
    prologue_peak: int
    epilogue_peak: dict[str, int]
    epilogue_delta: dict[str, int]
    end_live: int
    fwd_order: list[int]
    bwd_order: list[int]
    chain: bool
    step_time: float
    extra: int = 0
    optimizer_peak: int = 0
    forward_extra: int = 0
    device: str = "cpu"
    input_shapes: list[list[int]] = field(default_factory=list)
    profiling_seconds: float = 0.0
    decisions: list[str] = field(default_factory=lambda: [d.value for d in ALL_DECISIONS])
    #: names of the planned modules, one decision each; empty: one per block (no module called twice)
    modules: list[str] = field(default_factory=list)
    #: what the profile was measured for (see :meth:`check_matches`); empty when unknown
    model_signature: str = ""
    input_signature: str = ""
    #: median time (s) of whole steps with every block under one decision, timed without the memory meter
    #: and without waiting for the device at each block (see :meth:`overhead`); empty: not timed
    step_times: dict[str, float] = field(default_factory=dict)
    #: how many timed steps each median of ``step_times`` took
    timing_runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["blocks"] = [
            BlockProfile(
                name=b["name"],
                costs={k: _decision_cost(v) for k, v in b["costs"].items()},
                grad_delta=b.get("grad_delta", 0),
                module=b.get("module", -1),
            )
            for b in data["blocks"]
        ]
        return cls(**data)

    @property
    def units(self) -> list[str]:
        """Names of the planned modules: a plan has one decision for each."""
        return list(self.modules) if self.modules else [b.name for b in self.blocks]

    def module_of(self, block: int) -> int:
        """Index (in :attr:`units`) of the module that ``block`` is a call of."""
        module = self.blocks[block].module
        return block if module < 0 else module

    def expand(self, decisions: Sequence[Decision]) -> list[Decision]:
        """Per-block decisions from per-module ones (every call of a module runs under its decision)."""
        if len(decisions) != len(self.units):
            raise ValueError(f"{len(decisions)} decisions given for {len(self.units)} planned modules")
        return [decisions[self.module_of(i)] for i in range(len(self.blocks))]

    def check_matches(self, model_signature: str, input_signature: str, source: str = "the profile") -> None:
        """Raise :class:`~engage.memory.errors.ProfileMismatchError` if measured for another model or input."""
        from engage.memory.errors import ProfileMismatchError

        for what, saved, now in (
            ("model", self.model_signature, model_signature),
            ("input", self.input_signature, input_signature),
        ):
            if saved and now and saved != now:
                raise ProfileMismatchError(
                    f"{source} was measured for another {what} ({saved}; this run: {now}); "
                    "delete it or set another profile_path so that the step is profiled again"
                )

    def save(self, path: str | Path) -> Path:
        """Write the profile as JSON."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read a profile written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    @property
    def available(self) -> list[Decision]:
        """Decisions measured for every block."""
        return [Decision(d) for d in self.decisions]

    def cost(self, block: int, decision: Decision) -> DecisionCost:
        """Measured cost of ``decision`` for ``block``."""
        return self.blocks[block].costs[decision.value]

    def bwd_delta(self, block: int, decision: Decision) -> int:
        """Live-bytes change over a block's backward, made consistent with its forward.

        Whatever the decision, forward then backward leaves the same thing behind (parameter gradients,
        the input gradient): ``fwd_delta + bwd_delta`` is the block's ``grad_delta``. Not so under ``offload``,
        whose tensors leave the device one block late in forward and come back one block early in backward: its
        own measured change stands.
        """
        if decision is Decision.OFFLOAD:
            return self.cost(block, decision).bwd_delta
        return self.blocks[block].grad_delta - self.cost(block, decision).fwd_delta

    def timeline(self, decisions: Sequence[Decision]) -> list[tuple[str, int]]:
        """Predicted peak of each phase of the step, in execution order (labels, bytes); one decision per module."""
        decisions = self.expand(decisions)
        mem = self.base + self.extra
        # forward_extra (the previous step's gradients, freed by zero_grad before backward) counts up to the loss.
        ahead = self.forward_extra
        points = [("prologue", self.prologue_peak + self.extra + ahead)]
        for i in self.fwd_order:
            cost = self.cost(i, decisions[i])
            points.append((f"{self.blocks[i].name} fwd", mem + ahead + cost.fwd_peak))
            mem += cost.fwd_delta
        last = decisions[self.fwd_order[-1]].value
        points.append(("loss", mem + ahead + self.epilogue_peak[last]))
        mem += self.epilogue_delta[last]
        for i in self.bwd_order:
            points.append((f"{self.blocks[i].name} bwd", mem + self.cost(i, decisions[i]).bwd_peak))
            mem += self.bwd_delta(i, decisions[i])
        if self.optimizer_peak:
            points.append(("optimizer", self.optimizer_peak))
        return points

    def predict_peak(self, decisions: Sequence[Decision]) -> int:
        """Predicted peak bytes of the whole step under ``decisions`` (one per module)."""
        return max(v for _, v in self.timeline(decisions))

    def overhead(self, block: int, decision: Decision) -> float:
        """Extra step time (s) of ``decision`` for ``block`` over keeping everything.

        The block windows of the profiling runs (under the memory meter on CPU, waiting for the device at each
        block on CUDA) say how the extra time of a decision splits among blocks; ``step_times``, whole steps
        timed without either, say how much it is: the block's share of the measured difference between the
        step with every block under ``decision`` and the step that keeps everything. :meth:`overheads` gives
        every block's at once.
        """
        total = sum(b.overhead(decision) for b in self.blocks)
        return self._scaled(self.blocks[block].overhead(decision), decision, total)

    def overheads(self) -> dict[tuple[int, Decision], float]:
        """:meth:`overhead` of every block under every measured decision, keyed ``(block, decision)``."""
        measured = [Decision(d) for d in self.blocks[0].costs] if self.blocks else []
        raw = {(i, d): b.overhead(d) for i, b in enumerate(self.blocks) for d in measured}
        totals = {d: sum(raw[i, d] for i in range(len(self.blocks))) for d in measured}
        return {(i, d): self._scaled(value, d, totals[d]) for (i, d), value in raw.items()}

    def _scaled(self, raw: float, decision: Decision, total: float) -> float:
        measured, keep = self.step_times.get(decision.value), self.step_times.get(Decision.KEEP.value)
        if measured is None or keep is None or decision is Decision.KEEP:
            return raw
        if total <= 0.0:
            return max(measured - keep, 0.0) / len(self.blocks)
        return max(measured - keep, 0.0) * raw / total

    def predict_time(self, decisions: Sequence[Decision]) -> float:
        """Predicted step time (s) under ``decisions`` (one per module)."""
        decisions = self.expand(decisions)
        base = self.step_times.get(Decision.KEEP.value, self.step_time)
        overheads = self.overheads()
        return base + sum(overheads[i, d] for i, d in enumerate(decisions))
