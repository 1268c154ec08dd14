"""Exhaustive search for small instances: every combination of one option per request class is
considered, and a branch is cut only when its cost so far plus the cheapest option of every class
left cannot beat the best complete plan found (a bound no plan can go under), so the result is
the exact optimum. It checks the CP-SAT model on instances small enough to enumerate.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

from engage.deploy.placement.plan import PlacementInfeasible, PlacementPlan, build_plan
from engage.deploy.placement.problem import Item, Option, PlacementProblem, Weights
from engage.deploy.placement.solver import PlacementSolver, refuse_services


class ExhaustiveSolver(PlacementSolver):
    """Exact by enumeration; refuses instances with more than ``max_combinations`` combinations."""

    name = "exhaustive"

    def __init__(self, weights: Weights | None = None, max_combinations: float = 1e12) -> None:
        self.weights = weights
        self.max_combinations = max_combinations

    def solve(self, problem: PlacementProblem, previous: PlacementPlan | None = None) -> PlacementPlan:
        started = time.perf_counter()
        problem.check_servable()
        refuse_services(self.name, problem)
        combinations = 1  # an integer: a float product of many classes' options overflows to inf
        for cls in problem.classes:
            combinations *= len(cls.options)
        if combinations > self.max_combinations:
            digits = len(str(combinations))
            count = f"{combinations:,}" if digits <= 15 else f"about 1e{digits - 1}"
            raise ValueError(
                f"exhaustive search over {count} combinations exceeds max_combinations "
                f"({self.max_combinations:.3g}); use CpSatSolver for an instance this size"
            )
        classes = sorted(problem.classes, key=lambda c: -c.rate)
        ranked = [
            sorted(((problem.option_cost(c, o, self.weights), o) for o in c.options), key=lambda t: t[0])
            for c in classes
        ]
        rest = [0.0] * (len(classes) + 1)
        for i in range(len(classes) - 1, -1, -1):
            rest[i] = rest[i + 1] + ranked[i][0][0]
        held: dict[str, Counter[Item]] = defaultdict(Counter)
        memory: dict[str, float] = defaultdict(float)
        compute: dict[str, float] = defaultdict(float)
        traffic: dict[str, float] = defaultdict(float)
        best: list = [float("inf"), None]
        picked: list[Option] = []

        def place(option: Option, rate: float, sign: int) -> bool:
            fits = True
            for node, item in option.needs:
                if sign > 0:
                    if held[node][item] == 0:
                        memory[node] += problem.item_size(item)
                    held[node][item] += 1
                else:
                    held[node][item] -= 1
                    if held[node][item] == 0:
                        memory[node] -= problem.item_size(item)
                fits &= memory[node] <= problem.memory_capacity(node)
            for node, gflop in option.compute:
                compute[node] += sign * rate * gflop
                fits &= compute[node] <= problem.compute_capacity(node) * (1 + 1e-9)
            for src, bits in option.traffic:
                traffic[src] += sign * rate * bits
                fits &= traffic[src] <= problem.link_capacity(src) * (1 + 1e-9)
            return fits

        def search(i: int, cost: float) -> None:
            if cost + rest[i] >= best[0] - 1e-15:
                return
            if i == len(classes):
                best[0], best[1] = cost, list(picked)
                return
            for option_cost, option in ranked[i]:
                if cost + option_cost + rest[i + 1] >= best[0] - 1e-15:
                    break  # options are in increasing cost: none after this one can do better
                if place(option, classes[i].rate, +1):
                    picked.append(option)
                    search(i + 1, cost + option_cost)
                    picked.pop()
                place(option, classes[i].rate, -1)

        search(0, 0.0)
        if best[1] is None:
            raise PlacementInfeasible("exhaustive search: no combination of options fits the capacities")
        chosen = {cls.index: option for cls, option in zip(classes, best[1], strict=True)}
        plan = build_plan(
            problem,
            chosen,
            status="OPTIMAL",
            solver=self.name,
            solve_time_s=time.perf_counter() - started,
            previous=previous,
            weights=self.weights,
        )
        plan.bound = plan.objective
        return plan
