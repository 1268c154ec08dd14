"""Profile, plan and apply in one object, usable with or without Lightning."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from engage.memory.blocks import find_blocks
from engage.memory.budget import parse_budget
from engage.memory.decisions import ALL_DECISIONS, Decision, check_decisions, runs_compiled
from engage.memory.errors import InfeasibleBudgetError
from engage.memory.meter import MemoryMeter
from engage.memory.options import SOLVERS
from engage.memory.plan import Plan
from engage.memory.probes import Probe
from engage.memory.profile import Profile, input_signature, model_signature
from engage.memory.profiler import Event, Profiler, _bwd_window, _fwd_window, _positions, _record_run, _window_peak
from engage.memory.runtime import PlanRuntime
from engage.memory.solver_dp import DynamicProgrammingSolver
from engage.memory.step_state import preserved_state

if TYPE_CHECKING:
    from engage.memory.solver_cpsat import CpSatSolver


def measured_timeline(events: Sequence[Event], profile: Profile) -> list[tuple[str, int]]:
    """Measured peak of each phase of one recorded step, with the labels of :meth:`Profile.timeline`."""
    pos = _positions(events)
    calls = list(dict.fromkeys(call for kind, call, *_ in events if kind == "fwd_start"))
    if len(calls) != len(profile.blocks) or any(("bwd_start", call) not in pos for call in calls):
        # the step ran other blocks than the profiled one, or one returned its input (skipped at
        # random from inside): its phases do not correspond
        return []
    names = {call: profile.blocks[profile.fwd_order[k]].name for k, call in enumerate(calls)}
    bwd = sorted(calls, key=lambda c: pos.get(("bwd_start", c), len(events)))
    points = [("prologue", _window_peak(events, 0, pos[("fwd_start", calls[0])]))]
    for call, following in zip(calls, [*calls[1:], None]):
        points.append((f"{names[call]} fwd", _window_peak(events, *_fwd_window(pos, call, following))))
    fe_last, bs_first = pos[("fwd_end", calls[-1])], pos[("bwd_start", bwd[0])]
    points.append(("loss", _window_peak(events, fe_last, bs_first)))
    for call in bwd:
        points.append((f"{names[call]} bwd", _window_peak(events, *_bwd_window(events, pos, call))))
    return points


def _eager() -> contextlib.AbstractContextManager:
    """Run compiled code eagerly inside: a frame first seen under the memory meter is then not marked for
    skipping, so ``torch.compile`` still compiles it on the next real step."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


class MemoryPlanner:
    """Measures a model's training step, finds the fastest plan under a budget and applies it.

    Examples:
        >>> import torch
        >>> model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(),
        ...                                                    torch.nn.Linear(256, 64)) for _ in range(4)])
        >>> x = torch.randn(32, 64)
        >>> planner = MemoryPlanner(model)
        >>> profile = planner.profile(lambda: model(x).square().mean().backward(), roots=[x])
        >>> plan = planner.plan(profile.predict_peak([Decision.KEEP] * 4) - 1, profile=profile)
        >>> plan.predicted_peak < profile.predict_peak([Decision.KEEP] * 4)
        True
        >>> planner.remove()
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[str] | None = None,
        device: torch.device | str | None = None,
        decisions: Sequence[Decision | str] = ALL_DECISIONS,
    ) -> None:
        self.model = model
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.device = torch.device(device)
        self.decisions = [Decision(d) for d in decisions]
        check_decisions(self.decisions, self.device, runs_compiled(model))
        self.runtime = PlanRuntime(find_blocks(model, blocks), self.device)
        self.runtime.install()
        self.profile_: Profile | None = None
        self.plan_: Plan | None = None

    @contextlib.contextmanager
    def _probe(self, roots: Sequence[Any]) -> Iterator[Probe]:
        if self.device.type == "cuda":
            yield Probe(self.device)
            return
        with MemoryMeter(self.model, *roots, device_type=self.device.type) as meter:
            yield Probe(self.device, meter)

    def profile(
        self,
        step: Callable[[], Any],
        optimizers: Sequence[torch.optim.Optimizer] = (),
        roots: Sequence[Any] = (),
        grads_persist: bool = False,
        grads_in_forward: bool = False,
        timing_runs: int = 3,
    ) -> Profile:
        """Run ``step`` (forward and backward, no optimizer step) once per decision and keep the profile.

        ``optimizers`` are stepped once on the first run's gradients, measured and put back: the state
        they create joins the fixed memory and their temporaries the step's peak, so that a plan holds
        its budget over forward, backward and optimizer step. ``roots`` are other tensors alive through
        the step (the batch) that the CPU meter should count; ``grads_persist`` (gradient accumulation)
        counts parameter gradients as alive from the step's start; ``grads_in_forward`` counts them as alive
        through the forward and the loss, as in Lightning, which zeroes gradients after ``training_step``
        and before backward. ``timing_runs`` whole steps per decision are then timed outside the meter
        (medians; 0: time from the profiling runs only), which sets the step time and scales each block's extra
        time (see :meth:`Profile.overhead`).
        """
        grad_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad)
        extra = grad_bytes if grads_persist else 0
        with preserved_state(self.model, roots) as random_state, _eager(), self._probe([*optimizers, *roots]) as probe:

            def replayed() -> None:
                random_state.restore()  # every run draws the same dropout masks and skips the same blocks
                step()

            profiler = Profiler(self.runtime, probe, self.model.parameters(), self.decisions)
            profile = profiler.run(replayed, extra=extra, optimizers=list(optimizers), reseed=random_state.advance)
            profiled_state = random_state  # the random state under which every block ran
        if timing_runs:
            with preserved_state(self.model, roots), _eager():

                def replayed_again() -> None:
                    profiled_state.restore()
                    step()

                profiler.time_steps(replayed_again, profile, runs=timing_runs)
        if grads_in_forward and not grads_persist:
            profile.forward_extra = grad_bytes
        profile.input_shapes = [list(t.shape) for t in roots if isinstance(t, torch.Tensor)]
        profile.model_signature = model_signature(self.model, self.runtime.blocks)
        profile.input_signature = input_signature(roots)
        self.profile_ = profile
        return profile

    def plan(
        self,
        budget: str | int | float,
        solver: str = "auto",
        profile: Profile | None = None,
        margin: float = 0.0,
    ) -> Plan:
        """Fastest plan under ``budget``; applied to the model right away.

        ``margin`` is a share of the budget to hold back for allocations the profile does not see (none by
        default: the plan's predicted peak may reach the budget itself).
        """
        profile = profile or self.profile_
        if profile is None:
            raise ValueError("no profile yet: call profile(step) first or pass profile=Profile.load(path)")
        allowed = [d.value for d in self.decisions]
        if any(d not in allowed for d in profile.decisions):
            # a saved profile may have measured decisions this planner was not given: plan without them
            profile = dataclasses.replace(profile, decisions=[d for d in profile.decisions if d in allowed])
        if solver not in SOLVERS:
            raise ValueError(f"solver={solver!r} is unknown; choose one of {', '.join(SOLVERS)}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin={margin} must lie in [0, 1)")
        nbytes = parse_budget(budget, self.device)
        usable = nbytes - math.ceil(nbytes * margin)
        try:
            plan = self._engine(profile, solver).solve(profile, usable)
        except InfeasibleBudgetError:
            # Solvers bucket or round memory; the lowest-memory plan decides whether the budget is feasible.
            lowest = self._lowest(profile)
            if lowest.predicted_peak > usable:
                minimum = math.ceil(lowest.predicted_peak / (1.0 - margin)) if margin else lowest.predicted_peak
                raise InfeasibleBudgetError(nbytes, minimum) from None
            plan = lowest
        plan.budget = nbytes
        self.apply(plan)
        return plan

    def fit(
        self,
        budget: str | int | float,
        step: Callable[[], Any],
        roots: Sequence[Any] = (),
        solver: str = "auto",
        profile: Profile | None = None,
        tries: int = 4,
    ) -> tuple[Plan, int, list[tuple[str, int]]]:
        """:meth:`plan`, then run one planned step and check its measured peak against ``budget``.

        Per-block costs compose exactly on chains without shared tensors; where blocks share tensors (skip
        connections, an input another block keeps) a plan can measure above its
        prediction. Each time it does, the plan is solved again for the budget less the measured excess, and
        at last the lowest-memory plan is tried. Returns the plan, its measured peak and phase timeline;
        :class:`InfeasibleBudgetError` names the lowest plan's measured peak when even that one exceeds.
        """
        nbytes = parse_budget(budget, self.device)
        profile = profile or self.profile_
        usable = nbytes
        for _ in range(tries):
            try:
                plan = self.plan(usable, solver, profile)
            except InfeasibleBudgetError:
                break
            measured, timeline = self.measure(step, roots)
            if measured <= nbytes:
                plan.budget = nbytes
                return plan, measured, timeline
            usable -= measured - nbytes
        assert profile is not None  # plan() raised otherwise
        lowest = self._lowest(profile)
        self.apply(lowest)
        measured, timeline = self.measure(step, roots)
        # the prediction counts the whole step (optimizer state and step included), the check step
        # its forward and backward: a plan predicted above the budget is refused, as plan() does
        if measured > nbytes or lowest.predicted_peak > nbytes:
            raise InfeasibleBudgetError(nbytes, max(measured, lowest.predicted_peak))
        lowest.budget = nbytes
        return lowest, measured, timeline

    def _engine(self, profile: Profile, solver: str) -> DynamicProgrammingSolver | CpSatSolver:
        if solver == "auto":
            solver = "dp" if profile.chain else "cpsat"
        if solver == "dp":
            return DynamicProgrammingSolver()
        from engage.memory.solver_cpsat import CpSatSolver  # OR-Tools, imported when a plan needs it

        return CpSatSolver()

    def _lowest(self, profile: Profile) -> Plan:
        engine = self._engine(profile, "auto")
        decisions = engine.lowest_decisions(profile)
        return Plan.from_decisions(profile, decisions, profile.predict_peak(decisions), engine.name)

    def minimum_budget(self, profile: Profile | None = None) -> int:
        """Smallest budget :meth:`plan` accepts: the predicted peak of the lowest-memory plan."""
        profile = profile or self.profile_
        if profile is None:
            raise ValueError("no profile yet: call profile(step) first or pass profile=Profile.load(path)")
        return self._lowest(profile).predicted_peak

    def apply(self, plan: Plan) -> None:
        """Run the blocks under ``plan``'s decisions from now on."""
        self.plan_ = plan
        self.runtime.decisions = dict(enumerate(plan.decisions))

    def measure(self, step: Callable[[], Any], roots: Sequence[Any] = ()) -> tuple[int, list[tuple[str, int]]]:
        """Run ``step`` under the current plan and return its measured peak and per-phase timeline."""
        decisions = dict(self.runtime.decisions)
        with preserved_state(self.model, roots), _eager(), self._probe(roots) as probe:
            if self.device.type == "cuda":
                probe.reset_peak()
            events = _record_run(step, self.runtime, probe, decisions)
        peak = max(e[3] for e in events)
        timeline = measured_timeline(events, self.profile_) if self.profile_ is not None else []
        return peak, timeline

    def remove(self) -> None:
        """Give the model back its own ``forward`` methods."""
        self.runtime.remove()
