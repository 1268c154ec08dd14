"""Dynamic programming over a chain of blocks (the Rotor approach, with several decisions per block)."""

from __future__ import annotations

import time

from engage.memory.decisions import SIMPLICITY, Decision
from engage.memory.errors import InfeasibleBudgetError
from engage.memory.plan import Plan
from engage.memory.profile import Profile


class DynamicProgrammingSolver:
    """Fastest plan under a budget for a chain: block ``i`` feeds block ``i+1``, backward runs in reverse.

    The state after block ``i`` is the memory its predecessors leave alive in forward; that one number
    fixes every later peak, forward and backward, so a table over (block, memory) indexed in buckets of
    ``budget / resolution`` bytes finds the plan. Each state keeps its exact memory, so the returned
    plan's peak is exact, not rounded.

    Examples:
        >>> from engage.memory.profile import BlockProfile, DecisionCost
        >>> c = lambda m, t: DecisionCost(m, m, m, -m, t, t)
        >>> blocks = [BlockProfile(str(i), {"keep": c(100, 1.0), "recompute": c(10, 2.0)}) for i in range(4)]
        >>> zero = {"keep": 0, "recompute": 0}
        >>> prof = Profile(blocks, 0, 0, zero, zero, 0, [0, 1, 2, 3], [3, 2, 1, 0], True, 8.0,
        ...                decisions=["keep", "recompute"])
        >>> DynamicProgrammingSolver().solve(prof, 250).counts()
        {'keep': 1, 'recompute': 3}
    """

    name = "dp"

    def __init__(self, resolution: int = 2000) -> None:
        self.resolution = resolution

    def _run(self, profile: Profile, budget: float, minimise_peak: bool) -> list[Decision] | None:
        # The loss phase depends on the last block's decision: solve once for each, keep the best.
        best: tuple[tuple[float, float], list[Decision]] | None = None
        for last in profile.available:
            decisions = self._run_fixed_last(profile, budget, minimise_peak, last)
            if decisions is None:
                continue
            peak, spent = profile.predict_peak(decisions), profile.predict_time(decisions)
            # Where times tie (timing noise measured no cost for recomputing), the simpler decisions win.
            simpler = sum(SIMPLICITY[d] for d in decisions)
            key = (peak, spent, simpler) if minimise_peak else (spent, simpler, peak)
            if best is None or key < best[0]:
                best = (key, decisions)
        return best[1] if best is not None else None

    def _run_fixed_last(
        self, profile: Profile, budget: float, minimise_peak: bool, last: Decision
    ) -> list[Decision] | None:
        order = profile.fwd_order
        epilogue_peak, epilogue_delta = profile.epilogue_peak[last.value], profile.epilogue_delta[last.value]
        fixed = profile.base + profile.extra
        ahead = profile.forward_extra  # alive through the forward and the loss only
        grads_after = {}  # sum of grad_delta of blocks whose backward runs before block i's
        acc = 0
        for i in profile.bwd_order:
            grads_after[i] = acc
            acc += profile.blocks[i].grad_delta
        spread = sum(max(abs(c.fwd_delta) for c in b.costs.values()) for b in profile.blocks) or 1
        quantum = max(1.0, (budget if not minimise_peak else spread) / self.resolution)
        start_peak = max(profile.prologue_peak + profile.extra + ahead, profile.optimizer_peak)
        # bucket -> (key, prefix bytes, running peak, total overhead, decisions)
        states: dict[int, tuple[tuple[float, float], int, int, float, tuple[Decision, ...]]] = {
            0: ((0.0, 0.0), 0, start_peak, 0.0, ())
        }
        overheads = profile.overheads()
        for i in order:
            block = profile.blocks[i]
            nxt: dict[int, tuple[tuple[float, float], int, int, float, tuple[Decision, ...]]] = {}
            for _, prefix, peak, spent, chosen in states.values():
                for decision in [last] if i == order[-1] else profile.available:
                    cost = block.costs[decision.value]
                    after = prefix + cost.fwd_delta
                    bwd_base = fixed + epilogue_delta + after + grads_after[i]
                    new_peak = max(peak, fixed + ahead + prefix + cost.fwd_peak, bwd_base + cost.bwd_peak)
                    if not minimise_peak and new_peak > budget:
                        continue
                    total = spent + overheads[i, decision] + 1e-9 * SIMPLICITY[decision]
                    key = (new_peak, total) if minimise_peak else (total, after)
                    bucket = int(after // quantum)
                    if bucket not in nxt or key < nxt[bucket][0]:
                        nxt[bucket] = (key, after, new_peak, total, (*chosen, decision))
            states = nxt
            if not states:
                return None
        best = None
        for _, prefix, peak, spent, chosen in states.values():
            final_peak = max(peak, fixed + ahead + prefix + epilogue_peak)
            if not minimise_peak and final_peak > budget:
                continue
            key = (final_peak, spent) if minimise_peak else (spent, final_peak)
            if best is None or key < best[0]:
                best = (key, chosen)
        if best is None:
            return None
        by_block = dict(zip(order, best[1]))
        return [by_block[i] for i in range(len(profile.blocks))]

    def lowest_decisions(self, profile: Profile) -> list[Decision]:
        """Decisions of the plan with the smallest peak."""
        decisions = self._run(profile, float("inf"), minimise_peak=True)
        assert decisions is not None  # an unbounded budget always has a plan
        return decisions

    def minimum_budget(self, profile: Profile) -> int:
        """Smallest peak any plan reaches."""
        return profile.predict_peak(self.lowest_decisions(profile))

    def solve(self, profile: Profile, budget: int) -> Plan:
        """Fastest plan whose predicted peak fits ``budget``; :class:`InfeasibleBudgetError` otherwise."""
        if not profile.chain:
            raise ValueError("solver='dp' needs a chain of blocks (each feeding the next); use solver='cpsat'")
        started = time.perf_counter()
        decisions = self._run(profile, budget, minimise_peak=False)
        if decisions is None:
            raise InfeasibleBudgetError(budget, self.minimum_budget(profile))
        return Plan.from_decisions(profile, decisions, budget, self.name, time.perf_counter() - started)
