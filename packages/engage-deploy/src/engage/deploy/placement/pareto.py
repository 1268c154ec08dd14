"""The Pareto mode: the non-dominated plans for two of latency, inaccuracy and energy, by the
epsilon-constraint method: minimise the first metric with the second bounded, then minimise the
second with the first held at that optimum (so no returned plan is weakly dominated). Each plan's
``objective`` is recomputed with the problem's own weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engage.deploy.placement.cpsat import CpSatSolver
from engage.deploy.placement.plan import PlacementInfeasible, PlacementPlan, build_plan, options_by_key
from engage.deploy.placement.problem import PlacementProblem, Weights
from engage.deploy.placement.services import counts_of

_METRICS = ("latency", "inaccuracy", "energy")


def metric_value(plan: PlacementPlan, metric: str) -> float:
    """A plan's request-weighted mean of ``latency`` (s), ``inaccuracy`` or ``energy`` (J)."""
    if metric == "latency":
        return plan.latency_s
    if metric == "inaccuracy":
        return 1.0 - plan.accuracy
    if metric == "energy":
        return plan.energy_j
    raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(_METRICS)}")


def _only(metric: str, problem: PlacementProblem) -> Weights:
    """One request metric, and the services' traffic as the problem weighs it."""
    return Weights(**{m: (1.0 if m == metric else 0.0) for m in _METRICS}, traffic=problem.weights.traffic)


def _reweighed(problem: PlacementProblem, plan: PlacementPlan) -> PlacementPlan:
    """The plan's objective under the problem's own weights (the front is found with one metric at a time)."""
    by_key = options_by_key(problem)
    chosen = {c.index: by_key[c.index][plan.choice[c.index]] for c in problem.classes}
    return build_plan(
        problem,
        chosen,
        status=plan.status,
        solver=plan.solver,
        solve_time_s=plan.solve_time_s,
        counts=counts_of(plan.assignment),
    )


def pareto_front(
    problem: PlacementProblem,
    objectives: Sequence[str] = ("latency", "inaccuracy"),
    points: int = 8,
    time_limit_s: float = 10.0,
) -> list[PlacementPlan]:
    """Up to ``points`` non-dominated plans, sorted by the first objective.

    Example::

        >>> from engage.deploy.placement import random_tree_problem
        >>> front = pareto_front(random_tree_problem(nodes=5, models=3, seed=0), points=4)
        >>> all(a.latency_s < b.latency_s and a.accuracy < b.accuracy for a, b in zip(front, front[1:]))
        True
    """
    if len(objectives) != 2 or len(set(objectives)) != 2 or not set(objectives) <= set(_METRICS):
        raise ValueError(f"objectives is {list(objectives)}; give two different ones of {', '.join(_METRICS)}")
    if points < 2:
        raise ValueError(f"points is {points}; use 2 or more")
    first, second = objectives

    def lexicographic(bound: float | None) -> PlacementPlan:
        limits = {} if bound is None else {second: bound}
        explain = bound is None  # only the unconstrained problem's infeasibility needs a reason
        plan = CpSatSolver(time_limit_s, weights=_only(first, problem), limits=limits, explain=explain).solve(problem)
        value = metric_value(plan, first)
        tight = CpSatSolver(time_limit_s, weights=_only(second, problem), limits={**limits, first: value}, hint=plan)
        return _reweighed(problem, tight.solve(problem))

    best_first = lexicographic(None)  # raises PlacementInfeasible when nothing fits at all
    best_second = CpSatSolver(time_limit_s, weights=_only(second, problem)).solve(problem)
    high, low = metric_value(best_first, second), metric_value(best_second, second)
    plans = [best_first]
    for bound in np.linspace(high, low, points)[1:]:
        try:
            plans.append(lexicographic(float(bound)))
        except PlacementInfeasible:
            continue  # a bound below what the time limit could reach
    front: list[PlacementPlan] = []
    for plan in sorted(plans, key=lambda p: (metric_value(p, first), metric_value(p, second))):
        if front and metric_value(plan, second) >= metric_value(front[-1], second) - 1e-12:
            continue  # dominated by (or equal to) a plan with a smaller first metric
        front.append(plan)
    return front
