"""Measuring a training step block by block, and predicting the peak and time of any plan from that."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engage.memory.decisions import ALL_DECISIONS, Decision
from engage.memory.optimizer_step import measure_optimizer_step
from engage.memory.probes import Probe
from engage.memory.runtime import PlanRuntime


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
    host_bytes: int = 0


@dataclass
class BlockProfile:
    """One block: its name and its cost under each decision that was measured."""

    name: str
    costs: dict[str, DecisionCost]
    grad_delta: int = 0

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
                costs={k: DecisionCost(**v) for k, v in b["costs"].items()},
                grad_delta=b.get("grad_delta", 0),
            )
            for b in data["blocks"]
        ]
        return cls(**data)

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
        the input gradient): ``fwd_delta + bwd_delta`` is the block's ``grad_delta``.
        """
        return self.blocks[block].grad_delta - self.cost(block, decision).fwd_delta

    def timeline(self, decisions: Sequence[Decision]) -> list[tuple[str, int]]:
        """Predicted peak of each phase of the step, in execution order (labels, bytes)."""
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
        """Predicted peak bytes of the whole step under ``decisions`` (one per block)."""
        return max(v for _, v in self.timeline(decisions))

    def predict_time(self, decisions: Sequence[Decision]) -> float:
        """Predicted step time (s) under ``decisions``."""
        return self.step_time + sum(b.overhead(d) for b, d in zip(self.blocks, decisions))


Event = tuple[str, int, int, int, float]


def _record_run(
    step: Callable[[], Any], runtime: PlanRuntime, probe: Probe, decisions: dict[int, Decision]
) -> list[Event]:
    events: list[Event] = []

    def record(kind: str, index: int) -> None:
        now = probe.now()
        events.append((kind, index, probe.live(), probe.peak(), now))
        probe.reset_peak()

    runtime.decisions = dict(decisions)
    runtime.recorder = record
    try:
        record("start", -1)
        step()
        record("end", -1)
    finally:
        runtime.recorder = None
    return events


def _positions(events: Sequence[Event]) -> dict[tuple[str, int], int]:
    pos: dict[tuple[str, int], int] = {}
    for k, (kind, index, *_rest) in enumerate(events):
        pos.setdefault((kind, index), k)
    return pos


def _window_peak(events: Sequence[Event], start: int, stop: int) -> int:
    """Highest live bytes in events ``start+1 .. stop`` (each event carries the peak since the one before)."""
    return max((events[k][3] for k in range(start + 1, stop + 1)), default=events[start][2])


def _fwd_window(pos: dict[tuple[str, int], int], index: int, following: int | None) -> tuple[int, int]:
    """Forward window of a block: from its start to the next block's start.

    The gap after a block belongs to it: that is where its input is released (or not, if the block saved
    it), which depends on this block's decision and not on the next one's.
    """
    fs = pos[("fwd_start", index)]
    stop = pos[("fwd_start", following)] if following is not None else pos[("fwd_end", index)]
    return fs, stop


def _bwd_window(events: Sequence[Event], pos: dict[tuple[str, int], int], index: int) -> tuple[int, int]:
    bs = pos.get(("bwd_start", index))
    if bs is None:
        raise RuntimeError(f"block {index} produced no gradient: it does not take part in backward")
    stop = next(k for k in range(bs + 1, len(events)) if events[k][0] in ("bwd_start", "end"))
    return bs, stop


def _block_costs(events: Sequence[Event], index: int, following: int | None, offloaded: int) -> DecisionCost:
    pos = _positions(events)
    fs, fstop = _fwd_window(pos, index, following)
    bs, bstop = _bwd_window(events, pos, index)
    be = pos.get(("bwd_end", index), bstop)
    return DecisionCost(
        fwd_peak=_window_peak(events, fs, fstop) - events[fs][2],
        fwd_delta=events[fstop][2] - events[fs][2],
        bwd_peak=_window_peak(events, bs, bstop) - events[bs][2],
        bwd_delta=events[bstop][2] - events[bs][2],
        fwd_time=events[pos[("fwd_end", index)]][4] - events[fs][4],
        bwd_time=events[be][4] - events[bs][4],
        host_bytes=offloaded,
    )


def _epilogue(events: Sequence[Event], last: int, first_bwd: int) -> tuple[int, int]:
    """Peak (above the live bytes at the end of the last block) and delta of the loss computation."""
    pos = _positions(events)
    fe, bs = pos[("fwd_end", last)], pos[("bwd_start", first_bwd)]
    return _window_peak(events, fe, bs) - events[fe][2], events[bs][2] - events[fe][2]


def _clear_grads(params: Iterable[nn.Parameter]) -> None:
    for p in params:
        p.grad = None


def optimizer_state_bytes(optimizers: Iterable[torch.optim.Optimizer]) -> tuple[int, int]:
    """Bytes an optimizer's state will hold in steady state, and its step's temporaries (estimates).

    Adam-like optimizers keep two moments per parameter (three with AMSGrad); SGD with momentum keeps
    one. Temporaries: the multi-tensor (foreach) path allocates about one parameter-sized copy.
    """
    state = temp = 0
    for opt in optimizers:
        name = type(opt).__name__.lower()
        for group in opt.param_groups:
            nbytes = sum(p.numel() * p.element_size() for p in group["params"] if p.requires_grad)
            largest = max((p.numel() * p.element_size() for p in group["params"]), default=0)
            if "adam" in name:
                per = 3 if group.get("amsgrad") else 2
            elif group.get("momentum", 0):
                per = 1
            else:
                per = 0
            already = sum(
                v.numel() * v.element_size()
                for p in group["params"]
                for v in opt.state.get(p, {}).values()
                if isinstance(v, torch.Tensor) and v.dim() > 0
            )
            state += max(per * nbytes - already, 0)
            on_cuda = any(p.is_cuda for p in group["params"])
            temp += nbytes if (on_cuda and group.get("foreach") is not False) else 2 * largest
    return state, temp


class Profiler:
    """Runs a training step once per decision (forward and backward) and builds a :class:`Profile`.

    Each run applies one decision to a subset of blocks and recomputation to the others, which keeps the
    profiling runs themselves within memory; on a CUDA out-of-memory error the subsets are halved.

    Examples:
        >>> import torch
        >>> from engage.memory.meter import MemoryMeter
        >>> model = torch.nn.Sequential(*[torch.nn.Linear(32, 32) for _ in range(3)])
        >>> x = torch.randn(8, 32, requires_grad=True)
        >>> rt = PlanRuntime(list(model.named_children()), torch.device("cpu")); rt.install()
        >>> with MemoryMeter(model, x) as meter:
        ...     prof = Profiler(rt, Probe(torch.device("cpu"), meter), model.parameters()).run(
        ...         lambda: model(x).sum().backward())
        >>> len(prof.blocks)
        3
    """

    def __init__(
        self,
        runtime: PlanRuntime,
        probe: Probe,
        params: Iterable[nn.Parameter],
        decisions: Sequence[Decision] = ALL_DECISIONS,
    ) -> None:
        self.runtime = runtime
        self.probe = probe
        self.params = list(params)
        self.decisions = list(dict.fromkeys([Decision.KEEP, *decisions]))

    def _measure(
        self, step: Callable[[], Any], decision: Decision, fwd_order: list[int], bwd_order: list[int]
    ) -> tuple[dict[int, DecisionCost], tuple[int, int], list[Event]]:
        n = len(fwd_order)
        following = dict(zip(fwd_order, [*fwd_order[1:], None]))
        stride = 1
        while True:
            try:
                costs: dict[int, DecisionCost] = {}
                epilogue = (0, 0)
                events: list[Event] = []
                for r in range(stride):
                    chosen = {i: decision if i % stride == r else Decision.RECOMPUTE for i in range(n)}
                    events = _record_run(step, self.runtime, self.probe, chosen)
                    _clear_grads(self.params)
                    for i in range(r, n, stride):
                        costs[i] = _block_costs(events, i, following[i], self.runtime.offloader.host_bytes.get(i, 0))
                    if fwd_order[-1] % stride == r:
                        epilogue = _epilogue(events, fwd_order[-1], bwd_order[0])
                return costs, epilogue, events
            except torch.cuda.OutOfMemoryError:
                _clear_grads(self.params)
                torch.cuda.empty_cache()
                if stride >= n:
                    raise
                stride *= 2

    def run(
        self,
        step: Callable[[], Any],
        extra: int = 0,
        optimizer_temp: int = 0,
        optimizers: Sequence[torch.optim.Optimizer] = (),
    ) -> Profile:
        """Profile ``step`` (a callable running forward and backward) and return the profile.

        ``extra`` is memory alive through the whole step that the runs do not show (gradients kept for
        accumulation). With ``optimizers``, their step is measured on the first run's gradients (and undone):
        the state it creates joins the fixed memory and its temporaries set the optimizer phase's peak;
        ``optimizer_temp`` is then ignored. Without, ``optimizer_temp`` (with ``extra``) sets that phase.
        """
        n = len(self.runtime.blocks)
        started = time.perf_counter()
        # A first, low-memory run pays one-off costs (allocator growth, kernel selection) off the clock,
        # and tells the execution order of the blocks.
        reference = _record_run(step, self.runtime, self.probe, {i: Decision.RECOMPUTE for i in range(n)})
        optimizer_state = None
        if optimizers:
            try:
                optimizer_state, optimizer_temp = measure_optimizer_step(optimizers, self.probe)
            except (RuntimeError, TypeError):
                # An optimizer that needs a closure (LBFGS), or no room for a trial step: estimate instead.
                if self.probe.device.type == "cuda":
                    torch.cuda.empty_cache()
                optimizer_state, optimizer_temp = optimizer_state_bytes(optimizers)
        _clear_grads(self.params)
        pos = _positions(reference)
        missing = [self.runtime.blocks[i][0] for i in range(n) if ("fwd_start", i) not in pos]
        if missing:
            raise ValueError(f"blocks {missing} did not run in the training step; pass blocks= naming modules it uses")
        fwd_order = sorted(range(n), key=lambda i: pos[("fwd_start", i)])
        bwd_order = sorted(range(n), key=lambda i: pos[("bwd_start", i)])
        chain = all(self.runtime.chain_links.get(i, False) for i in fwd_order[1:]) and bwd_order == fwd_order[::-1]
        per_decision: dict[Decision, dict[int, DecisionCost]] = {}
        epilogues: dict[str, tuple[int, int]] = {}
        for decision in self.decisions:
            per_decision[decision], epilogues[decision.value], events = self._measure(
                step, decision, fwd_order, bwd_order
            )
            if decision is Decision.RECOMPUTE:
                reference = events
        pos = _positions(reference)
        fs0 = pos[("fwd_start", fwd_order[0])]
        blocks = []
        for i, (name, _) in enumerate(self.runtime.blocks):
            costs = {d.value: per_decision[d][i] for d in self.decisions}
            grad_delta = round(sum(c.fwd_delta + c.bwd_delta for c in costs.values()) / len(costs))
            blocks.append(BlockProfile(name=name, costs=costs, grad_delta=grad_delta))
        try:
            keep_events = _record_run(step, self.runtime, self.probe, {i: Decision.KEEP for i in range(n)})
            step_time = keep_events[-1][4] - keep_events[0][4]
        except torch.cuda.OutOfMemoryError:
            # The unplanned step does not fit: derive its time from the all-recompute run instead.
            torch.cuda.empty_cache()
            step_time = reference[-1][4] - reference[0][4] - sum(b.overhead(Decision.RECOMPUTE) for b in blocks)
        _clear_grads(self.params)
        end_live = reference[-1][2]
        return Profile(
            blocks=blocks,
            base=reference[fs0][2],
            prologue_peak=_window_peak(reference, 0, fs0),
            epilogue_peak={d: e[0] for d, e in epilogues.items()},
            epilogue_delta={d: e[1] for d, e in epilogues.items()},
            end_live=end_live,
            fwd_order=fwd_order,
            bwd_order=bwd_order,
            chain=chain,
            step_time=step_time,
            extra=extra + (optimizer_state or 0),
            optimizer_peak=(
                end_live + optimizer_state + optimizer_temp
                if optimizer_state is not None
                else (end_live + extra + optimizer_temp if (extra or optimizer_temp) else 0)
            ),
            device=str(self.probe.device),
            decisions=[d.value for d in self.decisions],
            profiling_seconds=time.perf_counter() - started,
        )
