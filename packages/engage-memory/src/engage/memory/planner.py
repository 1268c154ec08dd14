"""Profile, plan and apply in one object, usable with or without Lightning."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from engage.memory.budget import parse_budget
from engage.memory.decisions import ALL_DECISIONS, Decision
from engage.memory.errors import InfeasibleBudgetError
from engage.memory.meter import MemoryMeter
from engage.memory.plan import Plan
from engage.memory.probes import Probe
from engage.memory.profile import (
    Event,
    Profile,
    Profiler,
    _bwd_window,
    _fwd_window,
    _positions,
    _record_run,
    _window_peak,
)
from engage.memory.runtime import PlanRuntime
from engage.memory.solver_cpsat import CpSatSolver
from engage.memory.solver_dp import DynamicProgrammingSolver

SOLVERS = ("auto", "dp", "cpsat")


def find_blocks(model: nn.Module, names: Sequence[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The blocks to plan: ``names`` if given, else the children of the heaviest ``ModuleList``/``Sequential``.

    Examples:
        >>> import torch
        >>> net = torch.nn.ModuleDict({"emb": torch.nn.Linear(2, 2),
        ...                            "h": torch.nn.ModuleList([torch.nn.Linear(9, 9), torch.nn.Linear(9, 9)])})
        >>> [n for n, _ in find_blocks(net)]
        ['h.0', 'h.1']
    """
    if names:
        return [(name, model.get_submodule(name)) for name in names]
    best: tuple[int, str, nn.Module] | None = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) >= 2:
            size = sum(p.numel() for p in module.parameters()) + len(module)
            if best is None or size > best[0]:
                best = (size, name, module)
    if best is None:
        raise ValueError(
            f"{type(model).__name__} has no nn.ModuleList or nn.Sequential of 2 or more blocks; "
            "pass blocks=['name.of.block', ...] to choose the modules to plan"
        )
    _, prefix, container = best
    return [(f"{prefix}.{k}" if prefix else str(k), child) for k, child in enumerate(container)]


def measured_timeline(events: Sequence[Event], profile: Profile) -> list[tuple[str, int]]:
    """Measured peak of each phase of one recorded step, with the labels of :meth:`Profile.timeline`."""
    pos = _positions(events)
    order = profile.fwd_order
    points = [("prologue", _window_peak(events, 0, pos[("fwd_start", order[0])]))]
    for i, following in zip(order, [*order[1:], None]):
        points.append((f"{profile.blocks[i].name} fwd", _window_peak(events, *_fwd_window(pos, i, following))))
    fe_last, bs_first = pos[("fwd_end", order[-1])], pos[("bwd_start", profile.bwd_order[0])]
    points.append(("loss", _window_peak(events, fe_last, bs_first)))
    for i in profile.bwd_order:
        points.append((f"{profile.blocks[i].name} bwd", _window_peak(events, *_bwd_window(events, pos, i))))
    return points


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
        decisions: Sequence[Decision] = ALL_DECISIONS,
        offload_min_bytes: int = 1 << 16,
    ) -> None:
        self.model = model
        if device is None:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.device = torch.device(device)
        self.decisions = list(decisions)
        self.runtime = PlanRuntime(find_blocks(model, blocks), self.device, offload_min_bytes)
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
    ) -> Profile:
        """Run ``step`` (forward and backward, no optimizer step) once per decision and keep the profile.

        ``optimizers`` are stepped once on the first run's gradients, measured and put back: the state
        they create joins the fixed memory and their temporaries the step's peak, so that a plan holds
        its budget over forward, backward and optimizer step. ``roots`` are other tensors alive through
        the step (the batch) that the CPU meter should count; ``grads_persist`` (gradient accumulation)
        counts parameter gradients as alive from the step's start; ``grads_in_forward`` counts them as alive
        through the forward and the loss, as in Lightning, which zeroes gradients after ``training_step``
        and before backward.
        """
        grad_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad)
        extra = grad_bytes if grads_persist else 0
        with self._probe([*optimizers, *roots]) as probe:
            profile = Profiler(self.runtime, probe, self.model.parameters(), self.decisions).run(
                step, extra=extra, optimizers=list(optimizers)
            )
        if grads_in_forward and not grads_persist:
            profile.forward_extra = grad_bytes
        shapes = [list(t.shape) for t in roots if isinstance(t, torch.Tensor)]
        profile.input_shapes = shapes
        self.profile_ = profile
        return profile

    def plan(
        self,
        budget: str | int | float,
        solver: str = "auto",
        profile: Profile | None = None,
        margin: float | None = None,
    ) -> Plan:
        """Fastest plan under ``budget``; applied to the model right away.

        ``margin`` is the share of the budget held back for prediction error: by default none for chains
        (where measured costs compose exactly) and 5% when blocks branch, since a tensor shared by two
        branches is freed by whichever of them releases it last, which per-block costs only approximate.
        """
        profile = profile or self.profile_
        if profile is None:
            raise ValueError("no profile yet: call profile(step) first or pass profile=Profile.load(path)")
        if solver not in SOLVERS:
            raise ValueError(f"solver={solver!r} is unknown; choose one of {', '.join(SOLVERS)}")
        nbytes = parse_budget(budget, self.device)
        if solver == "auto":
            solver = "dp" if profile.chain else "cpsat"
        engine = DynamicProgrammingSolver() if solver == "dp" else CpSatSolver()
        if margin is None:
            margin = 0.0 if profile.chain else 0.05
        try:
            plan = engine.solve(profile, int(nbytes * (1.0 - margin)))
        except InfeasibleBudgetError as exc:
            raise InfeasibleBudgetError(nbytes, math.ceil(exc.minimum / (1.0 - margin))) from None
        plan.budget = nbytes
        self.apply(plan)
        return plan

    def minimum_budget(self, profile: Profile | None = None) -> int:
        """Smallest peak any plan reaches for the profiled step."""
        profile = profile or self.profile_
        assert profile is not None, "profile first"
        floor = (DynamicProgrammingSolver() if profile.chain else CpSatSolver()).minimum_budget(profile)
        # Non-chains plan with a 5% margin (see plan()): the smallest budget they accept is that much higher.
        return floor if profile.chain else math.ceil(floor / 0.95)

    def apply(self, plan: Plan) -> None:
        """Run the blocks under ``plan``'s decisions from now on."""
        self.plan_ = plan
        self.runtime.decisions = dict(enumerate(plan.decisions))

    def measure(self, step: Callable[[], Any], roots: Sequence[Any] = ()) -> tuple[int, list[tuple[str, int]]]:
        """Run ``step`` under the current plan and return its measured peak and per-phase timeline."""
        decisions = dict(self.runtime.decisions)
        with self._probe(roots) as probe:
            if self.device.type == "cuda":
                probe.reset_peak()
            events = _record_run(step, self.runtime, probe, decisions)
        peak = max(e[3] for e in events)
        timeline = measured_timeline(events, self.profile_) if self.profile_ is not None else []
        return peak, timeline

    def remove(self) -> None:
        """Give the model back its own ``forward`` methods."""
        self.runtime.remove()
