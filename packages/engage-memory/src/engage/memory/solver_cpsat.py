"""An OR-Tools CP-SAT model of the step's memory, for any execution order of blocks (branches, skips)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from ortools.sat.python import cp_model

from engage.core.cpsat import cp_solver
from engage.memory.decisions import SIMPLICITY, Decision
from engage.memory.errors import InfeasibleBudgetError
from engage.memory.plan import Plan
from engage.memory.profile import Profile

_KIB = 1024


def _up(nbytes: float) -> int:
    # Rounding every added term up keeps the model conservative: a plan it accepts fits the exact budget.
    return math.ceil(nbytes / _KIB)


def _down(nbytes: float) -> int:
    # Terms that are subtracted round down, for the same reason.
    return math.floor(nbytes / _KIB)


class CpSatSolver:
    """Chooses keep or recompute (whole or cheap ops) for every block's saved tensors.

    Memory at each forward and backward window is linear in the choices: what the blocks before it in
    execution order left alive, plus the window's own peak.

    Examples:
        >>> from engage.memory.profile import BlockProfile, DecisionCost
        >>> c = lambda m, t: DecisionCost(m, m, m, -m, t, t)
        >>> blocks = [BlockProfile(str(i), {"keep": c(100 * 1024, 1.0), "recompute": c(10 * 1024, 2.0)})
        ...           for i in range(4)]
        >>> zero = {"keep": 0, "recompute": 0}
        >>> prof = Profile(blocks, 0, 0, zero, zero, 0, [0, 1, 2, 3], [3, 2, 1, 0], True, 8.0,
        ...                decisions=["keep", "recompute"])
        >>> CpSatSolver().solve(prof, 250 * 1024).counts()
        {'keep': 1, 'recompute': 3}
    """

    name = "cpsat"

    def __init__(self, time_limit: float = 8.0, workers: int = 2) -> None:
        self.time_limit = time_limit
        self.workers = workers

    def _model(self, profile: Profile, budget: int | None) -> tuple[cp_model.CpModel, dict, cp_model.IntVar | None]:
        model = cp_model.CpModel()
        options = profile.available
        # One choice per planned module; a module called twice per step has one block per call.
        x = {(m, d): model.new_bool_var(f"x_{m}_{d.value}") for m in range(len(profile.units)) for d in options}
        for m in range(len(profile.units)):
            model.add_exactly_one(x[m, d] for d in options)

        def chosen(i: int, field: str, rounding: Callable[[float], int] = _up) -> cp_model.LinearExpr:
            return sum(rounding(getattr(profile.cost(i, d), field)) * x[profile.module_of(i), d] for d in options)

        fixed = _up(profile.base + profile.extra)
        ahead = _up(profile.forward_extra)  # alive through the forward and the loss only
        peak = model.new_int_var(0, 1 << 50, "peak") if budget is None else None
        # Terms round up and the budget rounds down, so every plan the model accepts fits the exact budget.
        limit = peak if peak is not None else (budget // _KIB if budget is not None else 0)
        exprs = []
        prefix: cp_model.LinearExpr = 0
        for i in profile.fwd_order:
            exprs.append(fixed + ahead + prefix + chosen(i, "fwd_peak"))
            prefix = prefix + chosen(i, "fwd_delta")
        last = profile.module_of(profile.fwd_order[-1])
        exprs.append(fixed + ahead + prefix + sum(_up(profile.epilogue_peak[d.value]) * x[last, d] for d in options))
        mem = fixed + prefix + sum(_up(profile.epilogue_delta[d.value]) * x[last, d] for d in options)
        for i in profile.bwd_order:
            exprs.append(mem + chosen(i, "bwd_peak"))
            mem = mem + _up(profile.blocks[i].grad_delta) - chosen(i, "fwd_delta", _down)
        constant = max(profile.prologue_peak + profile.extra + profile.forward_extra, profile.optimizer_peak)
        for expr in exprs:
            model.add(expr <= limit)
        if peak is not None:
            model.add(peak >= _up(constant))
        return model, x, peak

    def _solve(self, model: cp_model.CpModel) -> tuple[cp_model.CpSolver, int]:
        solver = cp_solver()
        solver.parameters.max_time_in_seconds = self.time_limit
        solver.parameters.num_workers = self.workers
        return solver, solver.solve(model)

    def lowest_decisions(self, profile: Profile) -> list[Decision]:
        """Decisions of the plan with the smallest peak."""
        model, x, peak = self._model(profile, None)
        model.minimize(peak)
        solver, status = self._solve(model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            raise RuntimeError(f"CP-SAT found no plan even without a budget (status {solver.status_name(status)})")
        return self._decisions(profile, solver, x)

    @staticmethod
    def _decisions(profile: Profile, solver: cp_model.CpSolver, x: dict) -> list[Decision]:
        return [next(d for d in profile.available if solver.value(x[m, d])) for m in range(len(profile.units))]

    def minimum_budget(self, profile: Profile) -> int:
        """Smallest peak any plan reaches (as predicted from the profile)."""
        return profile.predict_peak(self.lowest_decisions(profile))

    def solve(self, profile: Profile, budget: int) -> Plan:
        """Fastest plan whose predicted peak fits ``budget``; :class:`InfeasibleBudgetError` otherwise."""
        started = time.perf_counter()
        constant = max(profile.prologue_peak + profile.extra + profile.forward_extra, profile.optimizer_peak)
        model, x, _ = self._model(profile, budget)
        if constant > budget:
            raise InfeasibleBudgetError(budget, self.minimum_budget(profile))
        # Microseconds, with a tiny preference for simpler decisions when times tie.
        overheads = profile.overheads()
        model.minimize(
            sum(
                (round(1e6 * overheads[i, d]) * 8 + SIMPLICITY[d]) * x[profile.module_of(i), d]
                for i in range(len(profile.blocks))
                for d in profile.available
            )
        )
        solver, status = self._solve(model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            raise InfeasibleBudgetError(budget, self.minimum_budget(profile))
        decisions = self._decisions(profile, solver, x)
        return Plan.from_decisions(profile, decisions, budget, self.name, time.perf_counter() - started)
