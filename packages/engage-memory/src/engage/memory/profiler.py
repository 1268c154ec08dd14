"""Measuring a training step block by block (one run per decision) into a :class:`Profile`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from engage.memory.decisions import ALL_DECISIONS, Decision
from engage.memory.errors import BlocksWithoutBackward
from engage.memory.optimizer_step import measure_optimizer_step
from engage.memory.probes import Probe
from engage.memory.profile import BlockProfile, DecisionCost, Profile
from engage.memory.runtime import Call, PlanRuntime

#: (event kind, (module index, call number), live bytes, peak bytes since the last event, seconds)
Event = tuple[str, Call, int, int, float]
_EDGE: Call = (-1, 0)


def _record_run(
    step: Callable[[], Any], runtime: PlanRuntime, probe: Probe, decisions: dict[int, Decision]
) -> list[Event]:
    events: list[Event] = []

    def record(kind: str, call: Call) -> None:
        now = probe.now()
        events.append((kind, call, probe.live(), probe.peak(), now))
        probe.reset_peak()

    runtime.decisions = dict(decisions)
    runtime.recorder = record
    runtime.reset_calls()
    try:
        record("start", _EDGE)
        step()
        record("end", _EDGE)
    finally:
        runtime.recorder = None
    return events


def _positions(events: Sequence[Event]) -> dict[tuple[str, Call], int]:
    pos: dict[tuple[str, Call], int] = {}
    for k, (kind, call, *_rest) in enumerate(events):
        pos.setdefault((kind, call), k)
    return pos


def _window_peak(events: Sequence[Event], start: int, stop: int) -> int:
    """Highest live bytes in events ``start+1 .. stop`` (each event carries the peak since the one before)."""
    return max((events[k][3] for k in range(start + 1, stop + 1)), default=events[start][2])


def _fwd_window(pos: dict[tuple[str, Call], int], call: Call, following: Call | None) -> tuple[int, int]:
    """Forward window of a block: from its start to the next block's start.

    The gap after a block belongs to it: that is where its input is released (or not, if the block saved
    it), which depends on this block's decision and not on the next one's.
    """
    fs = pos[("fwd_start", call)]
    stop = pos[("fwd_start", following)] if following is not None else pos[("fwd_end", call)]
    return fs, stop


def _bwd_window(events: Sequence[Event], pos: dict[tuple[str, Call], int], call: Call) -> tuple[int, int]:
    bs = pos.get(("bwd_start", call))
    if bs is None:
        raise ValueError(
            f"block {call[0]} produced no gradient: it does not take part in backward; leave it out of blocks="
        )
    stop = next(k for k in range(bs + 1, len(events)) if events[k][0] in ("bwd_start", "end"))
    return bs, stop


def _block_costs(events: Sequence[Event], call: Call, following: Call | None) -> DecisionCost:
    pos = _positions(events)
    fs, fstop = _fwd_window(pos, call, following)
    bs, bstop = _bwd_window(events, pos, call)
    be = pos.get(("bwd_end", call), bstop)
    return DecisionCost(
        fwd_peak=_window_peak(events, fs, fstop) - events[fs][2],
        fwd_delta=events[fstop][2] - events[fs][2],
        bwd_peak=_window_peak(events, bs, bstop) - events[bs][2],
        bwd_delta=events[bstop][2] - events[bs][2],
        fwd_time=events[pos[("fwd_end", call)]][4] - events[fs][4],
        bwd_time=events[be][4] - events[bs][4],
    )


def _epilogue(events: Sequence[Event], last: Call, first_bwd: Call) -> tuple[int, int]:
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

    Each run applies one decision to a subset of modules and recomputation to the others, which keeps the
    profiling runs themselves within memory; on a CUDA out-of-memory error the subsets are halved. A
    module called several times per step gives one block per call, all under the module's decision.

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

    def time_steps(self, step: Callable[[], Any], profile: Profile, runs: int = 3) -> Profile:
        """Fill ``profile.step_times``: the median of ``runs`` whole steps with every block under each decision.

        Call it outside the memory meter (whose bookkeeping slows every op several times over): the steps are
        timed with no event per block and, on CUDA, one synchronisation at each end, as training runs them.
        Rounds interleave the decisions so that they share the machine's drifts. A decision whose step does not
        fit on the GPU is left out (its block windows stand).
        """
        n = len(self.runtime.blocks)
        cuda = self.probe.device.type == "cuda"
        times: dict[Decision, list[float]] = {d: [] for d in self.decisions}
        failed: set[Decision] = set()
        for _ in range(runs):
            for decision in self.decisions:
                if decision in failed:
                    continue
                self.runtime.decisions = dict.fromkeys(range(n), decision)
                self.runtime.reset_calls()
                try:
                    if cuda:
                        torch.cuda.synchronize(self.probe.device)
                    started = time.perf_counter()
                    step()
                    if cuda:
                        torch.cuda.synchronize(self.probe.device)
                    times[decision].append(time.perf_counter() - started)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    failed.add(decision)
                finally:
                    _clear_grads(self.params)
        profile.step_times = {d.value: statistics.median(t) for d, t in times.items() if t}
        profile.timing_runs = runs
        if Decision.KEEP.value in profile.step_times:
            profile.step_time = profile.step_times[Decision.KEEP.value]
        return profile

    def _measure(
        self, step: Callable[[], Any], decision: Decision, fwd_order: list[Call], bwd_order: list[Call]
    ) -> tuple[dict[Call, DecisionCost], tuple[int, int], list[Event]]:
        n = len(self.runtime.blocks)
        following = dict(zip(fwd_order, [*fwd_order[1:], None]))
        stride = 1
        while True:
            try:
                costs: dict[Call, DecisionCost] = {}
                epilogue = (0, 0)
                events: list[Event] = []
                for r in range(stride):
                    chosen = {i: decision if i % stride == r else Decision.RECOMPUTE for i in range(n)}
                    if decision is Decision.OFFLOAD:
                        # off the clock: the first offloaded step allocates its pinned host buffers
                        _record_run(step, self.runtime, self.probe, chosen)
                        _clear_grads(self.params)
                    events = _record_run(step, self.runtime, self.probe, chosen)
                    _clear_grads(self.params)
                    for call in fwd_order:
                        if call[0] % stride == r:
                            costs[call] = _block_costs(events, call, following[call])
                    if fwd_order[-1][0] % stride == r:
                        epilogue = _epilogue(events, fwd_order[-1], bwd_order[0])
                return costs, epilogue, events
            except torch.cuda.OutOfMemoryError:
                _clear_grads(self.params)
                torch.cuda.empty_cache()
                if stride >= n:
                    raise
                stride *= 2

    def _reference(self, step: Callable[[], Any], reseed: Callable[[], None] | None, tries: int) -> list[Event]:
        """A first, low-memory run: pays one-off costs off the clock and tells the order of the blocks.

        Where blocks are skipped at random (LayerDrop, stochastic depth), ``reseed`` moves the step to
        another random state until a run uses every block.
        """
        n = len(self.runtime.blocks)
        # the lowest-memory decision among those asked for: a block that cannot be recomputed is
        # refused only where recomputing it was asked for
        low = next(d for d in (Decision.RECOMPUTE, Decision.SELECTIVE, Decision.KEEP) if d in self.decisions)
        for _ in range(tries if reseed is not None else 1):
            events = _record_run(step, self.runtime, self.probe, dict.fromkeys(range(n), low))
            ran = {call[0] for kind, call, *_ in events if kind == "fwd_start"}
            missing = [self.runtime.blocks[i][0] for i in range(n) if i not in ran]
            # a block that returned its input (skipped from inside its forward) has no backward
            skipped = {call[0] for kind, call, *_ in events if kind == "fwd_start"} - {
                call[0] for kind, call, *_ in events if kind == "bwd_start"
            }
            if not missing and (not skipped or reseed is None):
                return events
            _clear_grads(self.params)
            frozen = [
                i for i in sorted(skipped) if not any(p.requires_grad for p in self.runtime.blocks[i][1].parameters())
            ]
            if not missing and len(frozen) == len(skipped):
                break  # no other random state gives a frozen block, run without gradients, a backward
            if reseed is not None:
                reseed()
        if not missing:  # every block ran, but some never took part in backward
            names = [self.runtime.blocks[i][0] for i in sorted(skipped)]
            raise BlocksWithoutBackward(
                names,
                f"block {names[0]!r} produced no gradient: it does not take part in backward (frozen before any "
                "layer that trains, run without gradients, or returning its input); leave it out of blocks=",
            )
        raise ValueError(
            f"blocks {missing} did not run in the training step"
            + (f" under any of {tries} random states (blocks skipped at random)" if reseed is not None else "")
            + "; pass blocks= naming modules that every step uses"
        )

    def run(
        self,
        step: Callable[[], Any],
        extra: int = 0,
        optimizer_temp: int = 0,
        optimizers: Sequence[torch.optim.Optimizer] = (),
        reseed: Callable[[], None] | None = None,
        tries: int = 32,
    ) -> Profile:
        """Profile ``step`` (a callable running forward and backward) and return the profile.

        ``extra`` is memory alive through the whole step that the runs do not show (gradients kept for
        accumulation). With ``optimizers``, their step is measured on the first run's gradients (and undone):
        the state it creates joins the fixed memory and its temporaries set the optimizer phase's peak;
        ``optimizer_temp`` is then ignored. Without, ``optimizer_temp`` (with ``extra``) sets that phase.
        ``reseed`` (with up to ``tries`` attempts) finds a random state under which every block runs.
        """
        n = len(self.runtime.blocks)
        started = time.perf_counter()
        reference = self._reference(step, reseed, tries)
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
        calls = [call for kind, call, *_ in reference if kind == "fwd_start"]
        fwd_order = list(dict.fromkeys(calls))
        bwd_order = sorted(fwd_order, key=lambda c: pos.get(("bwd_start", c), len(reference)))
        for call in fwd_order:
            _bwd_window(reference, pos, call)  # every block must take part in backward
        repeated = len(fwd_order) > n
        chain = (
            not repeated
            and all(self.runtime.chain_links.get(c[0], False) for c in fwd_order[1:])
            and bwd_order == fwd_order[::-1]
        )
        per_decision: dict[Decision, dict[Call, DecisionCost]] = {}
        epilogues: dict[str, tuple[int, int]] = {}
        for decision in self.decisions:
            per_decision[decision], epilogues[decision.value], events = self._measure(
                step, decision, fwd_order, bwd_order
            )
            if decision is Decision.RECOMPUTE:
                reference = events
        pos = _positions(reference)
        fs0 = pos[("fwd_start", fwd_order[0])]
        slot = {call: k for k, call in enumerate(fwd_order)}
        blocks = []
        for call in fwd_order:
            costs = {d.value: per_decision[d][call] for d in self.decisions}
            grad_delta = round(sum(c.fwd_delta + c.bwd_delta for c in costs.values()) / len(costs))
            name = self.runtime.blocks[call[0]][0] + (f" (call {call[1] + 1})" if call[1] else "")
            blocks.append(
                BlockProfile(name=name, costs=costs, grad_delta=grad_delta, module=call[0] if repeated else -1)
            )
        profile = Profile(
            blocks=blocks,
            base=reference[fs0][2],
            prologue_peak=_window_peak(reference, 0, fs0),
            epilogue_peak={d: e[0] for d, e in epilogues.items()},
            epilogue_delta={d: e[1] for d, e in epilogues.items()},
            end_live=reference[-1][2],
            fwd_order=[slot[c] for c in fwd_order],
            bwd_order=[slot[c] for c in bwd_order],
            chain=chain,
            step_time=0.0,
            extra=extra + (optimizer_state or 0),
            device=str(self.probe.device),
            decisions=[d.value for d in self.decisions],
            modules=[name for name, _ in self.runtime.blocks] if repeated else [],
        )
        if not repeated:
            # Plans index modules; without repeated calls blocks are modules, in the runtime's order.
            order = {c[0]: k for k, c in enumerate(fwd_order)}
            profile.blocks = [blocks[order[i]] for i in range(n)]
            profile.fwd_order = [c[0] for c in fwd_order]
            profile.bwd_order = [c[0] for c in bwd_order]
        try:
            keep_events = _record_run(step, self.runtime, self.probe, {i: Decision.KEEP for i in range(n)})
            profile.step_time = keep_events[-1][4] - keep_events[0][4]
        except torch.cuda.OutOfMemoryError:
            # The unplanned step does not fit: derive its time from the all-recompute run instead.
            torch.cuda.empty_cache()
            overhead = profile.predict_time([Decision.RECOMPUTE] * len(profile.units))
            profile.step_time = reference[-1][4] - reference[0][4] - overhead
        _clear_grads(self.params)
        if optimizer_state is not None:
            profile.optimizer_peak = profile.end_live + optimizer_state + optimizer_temp
        elif extra or optimizer_temp:
            profile.optimizer_peak = profile.end_live + extra + optimizer_temp
        profile.profiling_seconds = time.perf_counter() - started
        return profile
