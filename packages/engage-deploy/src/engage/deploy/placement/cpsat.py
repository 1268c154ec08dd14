"""The exact placement model, solved with OR-Tools CP-SAT.

Variables: ``y[c, o]`` (request class ``c`` is served by option ``o``: a node of its path and a
variant, possibly split with the next node), ``x[n, i]`` (node ``n`` holds item ``i``: a
variant, or the head or tail of one) and ``k[s, n]`` (copies of service ``s`` on node ``n``),
with ``k[a, u] x k[b, v]`` for the pairs of nodes a service's traffic crosses a costly or limited
link between. Constraints: one option per class; an option needs its items; an item is held
only if some class uses it; every service copy on one node; memory, compute (requests under
``max_utilization`` of what services leave) and link rate per node and link. Objective: the
request-weighted mean cost of the chosen options plus the services' weighted traffic cost.
Memory is counted in exact bytes; compute and link loads are rounded up (MFLOP/s, kbit/s) and
their capacities down, so a plan that fits the integer model fits the real one. Costs are counted
above each class's cheapest option, at a resolution of 1e-9 of the largest such difference; the
reported bound is lowered by that rounding.

Re-placement warm-starts from the plan in force (CP-SAT solution hints) and can cap the number of
items loaded onto nodes (``max_moves``). When nothing fits, a second solve over assumptions finds
a set of capacities that cannot all hold, and the error names them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from engage.core.cpsat import cp_solver
from engage.deploy.placement.plan import (
    PlacementInfeasible,
    PlacementPlan,
    build_plan,
    previous_choice,
)
from engage.deploy.placement.problem import Item, PlacementProblem, PlacementProblemError, Weights, item_label
from engage.deploy.placement.services import counts_of, link_cost
from engage.deploy.placement.solver import PlacementSolver

#: objective coefficients are integers: each option's cost above its class's cheapest one, with
#: the largest such difference worth this many units
_OBJECTIVE_SCALE = 1_000_000_000
#: the objective's largest value in integer units: well inside int64, whatever the sums
_INT_RANGE = 2**60
#: metric limits (epsilon constraints) are rounded at this resolution of their largest value
_LIMIT_SCALE = 1_000_000_000
_METRICS = ("latency", "inaccuracy", "energy")


class CpSatSolver(PlacementSolver):
    """Optimal placement by CP-SAT within ``time_limit_s``; see the module docstring.

    ``weights`` replaces the problem's objective weights; ``limits`` bounds request-weighted means
    (``{"latency": 0.05, "inaccuracy": 0.2, "energy": 1.0}``; ``"accuracy"`` is a lower bound), the
    epsilon constraints of the Pareto mode; ``max_moves`` caps items newly loaded relative to the
    ``previous`` plan; ``workers`` CP-SAT search workers (default: at least 8, CP-SAT's portfolio
    needs several even on a small machine); ``seed`` makes single-worker runs repeatable;
    ``explain=False`` skips the search for a reason when nothing fits. Limits are met up to about
    1e-9 of the metric's largest value (their coefficients are rounded).

    Example::

        >>> from engage.deploy.placement import random_tree_problem
        >>> plan = CpSatSolver(time_limit_s=10).solve(random_tree_problem(nodes=5, models=3, seed=0))
        >>> plan.status, plan.gap
        ('OPTIMAL', 0.0)
    """

    name = "cp-sat"

    def __init__(
        self,
        time_limit_s: float = 10.0,
        *,
        weights: Weights | None = None,
        limits: Mapping[str, float] | None = None,
        max_moves: int | None = None,
        workers: int | None = None,
        seed: int = 0,
        hint: PlacementPlan | None = None,
        explain: bool = True,
        log: bool = False,
    ) -> None:
        if not time_limit_s > 0 or time_limit_s == float("inf"):
            raise ValueError(f"time_limit_s is {time_limit_s}; give a positive, finite number of seconds")
        if max_moves is not None and max_moves < 0:
            raise ValueError(f"max_moves is {max_moves}; use 0 or more (None: no limit)")
        for key in limits or {}:
            if key not in (*_METRICS, "accuracy"):
                raise ValueError(f"limits: unknown metric {key!r}; use latency, inaccuracy, energy or accuracy")
        self.time_limit_s = time_limit_s
        self.weights = weights
        self.limits = dict(limits or {})
        self.max_moves = max_moves
        self.workers = workers or max(8, os.cpu_count() or 1)
        self.seed = seed
        self.hint = hint
        self.explain = explain
        self.log = log

    def solve(self, problem: PlacementProblem, previous: PlacementPlan | None = None) -> PlacementPlan:
        from ortools.sat.python import cp_model

        started = time.perf_counter()
        if self.max_moves is not None and previous is None:
            raise ValueError("max_moves limits moves from a plan in force: pass it as previous=")
        problem.check_servable()
        built = _build(problem, self.weights, self.limits, previous, self.max_moves, cp_model)
        model = built["model"]
        start = self.hint or previous
        if start is not None:
            _add_hints(model, built, problem, start)
        solver = cp_solver()
        solver.parameters.max_time_in_seconds = self.time_limit_s
        solver.parameters.num_workers = self.workers
        solver.parameters.random_seed = self.seed
        solver.parameters.log_search_progress = self.log
        status = solver.solve(model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            if status == cp_model.INFEASIBLE:
                if not self.explain:
                    raise PlacementInfeasible("no plan fits the capacities and limits", proved=True)
                raise PlacementInfeasible(
                    _explain(problem, self.weights, self.limits, previous, self.max_moves), proved=True
                )
            if status == cp_model.MODEL_INVALID:
                raise PlacementProblemError(
                    f"CP-SAT refused the model ({model.validate() or 'MODEL_INVALID'}); the problem's figures are "
                    "out of its integer range: lower the largest rates, sizes or costs"
                )
            raise PlacementInfeasible(
                f"CP-SAT found no plan within {self.time_limit_s:g} s ({solver.status_name(status)}); "
                "raise time_limit_s"
            )
        chosen = {}
        for cls in problem.classes:
            for option, var in zip(cls.options, built["y"][cls.index], strict=True):
                if solver.boolean_value(var):
                    chosen[cls.index] = option
        counts = {key: solver.value(var) for key, var in built["k"].items()}
        plan = build_plan(
            problem,
            chosen,
            status="OPTIMAL" if status == cp_model.OPTIMAL else "FEASIBLE",
            solver=self.name,
            solve_time_s=time.perf_counter() - started,
            previous=previous,
            weights=self.weights,
            counts=counts,
        )
        floor, per_unit = built["floor"], built["per_unit"]
        # the integer model's bound in the objective's units; each coefficient is off by at most
        # half a unit (counted once per class, and once per pair of copies of a service flow), so
        # the bound is lowered by that much to stay a bound
        rounding = 0.5 / per_unit * (len(problem.classes) + built["pair_copies"])
        bound = sum(floor.values()) + solver.best_objective_bound / per_unit - rounding
        plan.bound = min(plan.objective, bound)
        if status == cp_model.OPTIMAL and plan.objective - bound <= 2 * rounding:
            plan.bound = plan.objective  # proved optimal up to the rounding of the costs
        return plan


def _build(
    problem: PlacementProblem,
    weights: Weights | None,
    limits: Mapping[str, float],
    previous: PlacementPlan | None,
    max_moves: int | None,
    cp_model: Any,
    enforce: bool = False,
) -> dict[str, Any]:
    """The CP-SAT model; with ``enforce``, each capacity constraint behind its own literal."""
    model = cp_model.CpModel()
    floor, unit = _objective_scale(problem, weights)
    traffic_weight = (weights or problem.weights).traffic
    y: dict[int, list[Any]] = {}
    x: dict[tuple[str, Item], Any] = {}
    users: dict[tuple[str, Item], list[Any]] = defaultdict(list)
    compute: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    # per link and direction: (bits/s in total, shared by this many pairs of copies, variable)
    traffic: dict[tuple[str, bool], list[tuple[float, int, Any]]] = defaultdict(list)
    serving: set[str] = set()  # nodes where requests may use compute
    costs: list[tuple[float, Any]] = []  # (cost above the floor, variable): the objective
    total = problem.total_rate
    for cls in problem.classes:
        y[cls.index] = []
        for k, option in enumerate(cls.options):
            var = model.new_bool_var(f"y{cls.index}_{k}")
            y[cls.index].append(var)
            costs.append((problem.option_cost(cls, option, weights) - floor[cls.index], var))
            for need in option.needs:
                if need not in x:
                    x[need] = model.new_bool_var(f"x_{need[0]}_{item_label(need[1])}")
                model.add_implication(var, x[need])
                users[need].append(var)
            for node, gflop in option.compute:
                if math.isfinite(problem.compute_capacity(node)):
                    # MFLOP/s, rounded up
                    compute[node].append((_up(cls.rate * gflop * 1000), var))
                    serving.add(node)
            for src, bits in option.traffic:
                if math.isfinite(problem.link_capacity(src)):
                    traffic[src, True].append((cls.rate * bits, 1, var))  # up the tree
        model.add_exactly_one(y[cls.index])
    for need, var in x.items():
        model.add_bool_or([*users[need], var.Not()])
    # services: copies per node, their memory and compute reserved, their traffic on the links
    k: dict[tuple[str, str], Any] = {}
    service_memory: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for service in problem.services.values():
        where = problem.service_nodes(service.name)
        for node in where:
            k[service.name, node] = model.new_int_var(0, service.instances, f"k_{service.name}_{node}")
            if service.memory:
                service_memory[node].append((service.memory, k[service.name, node]))
            if service.compute and math.isfinite(problem.compute_capacity(node)):
                # reserved whole: counted at 1 / max_utilization against the requests' cap
                compute[node].append((_up(problem.max_utilization * service.compute * 1000), k[service.name, node]))
        model.add(sum(k[service.name, node] for node in where) == service.instances)
    _break_symmetries(problem, model, k)
    pair_copies = 0  # pairs of copies whose cost is rounded (each by at most half a unit)
    # the objective's largest value, in its units: every class at its dearest option, every flow
    # between its dearest pair of nodes
    dearest = len(problem.classes) * unit
    for flow in problem.flows:
        pairs = problem.services[flow.source].instances * problem.services[flow.target].instances
        counted, flow_dearest = False, 0.0
        for u in problem.service_nodes(flow.source):
            for v in problem.service_nodes(flow.target):
                crossed = problem.crossings(u, v)
                cost = sum(link_cost(problem.link(key)) for key, _ in crossed)
                limited = [c for c in crossed if math.isfinite(problem.link_capacity(c[0]))]
                if cost <= 0 and not limited:
                    continue
                flow_dearest = max(flow_dearest, cost)
                both = model.new_int_var(0, pairs, f"p_{flow.source}_{u}_{flow.target}_{v}")
                model.add_multiplication_equality(both, [k[flow.source, u], k[flow.target, v]])
                if cost > 0 and traffic_weight > 0:
                    costs.append((traffic_weight * flow.bits / 1e6 * cost, both))
                    counted = True
                for direction in limited:
                    traffic[direction].append((flow.bits * pairs, pairs, both))
        pair_copies += pairs if counted else 0
        dearest += traffic_weight * flow.bits / 1e6 * flow_dearest * pairs
    # one scale for every cost: 1e-9 of the largest request cost difference, unless the whole
    # objective would then leave int64's range (services' traffic far dearer than requests)
    per_unit = min(_OBJECTIVE_SCALE / unit, _INT_RANGE / max(dearest, 1e-300))
    objective = [round(cost * per_unit) * var for cost, var in costs]
    guards: dict[Any, str] = {}

    def capped(expr: Any, capacity: int, name: str) -> None:
        constraint = model.add(expr <= capacity)
        if enforce:
            literal = model.new_bool_var(name)
            constraint.only_enforce_if(literal)
            guards[literal] = name

    by_node: dict[str, list[tuple[Item, Any]]] = defaultdict(list)
    for (node, item), var in x.items():
        by_node[node].append((item, var))
    for node in problem.nodes:
        # on the cloud only the services' sum: it bounds variants one by one (options do that)
        held = [] if node == problem.root else by_node.get(node, [])
        capacity = problem.service_memory_capacity(node)
        # exact bytes: int64 holds them
        terms = [(problem.item_size(item), var) for item, var in held] + service_memory.get(node, [])
        if not terms or not math.isfinite(capacity):
            continue
        most = sum(b * _most(var) for b, var in terms)
        if most > capacity:
            capped(sum(b * var for b, var in terms), int(capacity), f"memory of {node} ({capacity / 2**20:.0f} MiB)")
    for node, terms in compute.items():
        capacity = _down(problem.compute_capacity(node) * 1000)
        if sum(c * _most(var) for c, var in terms) > capacity:
            name = (
                f"compute of {node} ({problem.compute_capacity(node):.4g} GFLOP/s at "
                f"max_utilization {problem.max_utilization:g})"
                if node in serving
                else f"compute of {node} ({problem.nodes[node].compute:.4g} GFLOP/s)"
            )
            capped(sum(c * v for c, v in terms), capacity, name)
    for (key, forward), entries in traffic.items():
        terms, capacity = _link_terms(entries, problem.link_capacity(key))
        if sum(c * _most(var) for c, var in terms) > capacity:
            link = problem.link(key)
            ends = (link.src, link.dst) if forward else (link.dst, link.src)
            capped(
                sum(c * v for c, v in terms),
                capacity,
                f"rate of {ends[0]} -> {ends[1]} ({link.rate / 1e6:.4g} mbit/s)",
            )
    for metric, limit in limits.items():
        name = "inaccuracy" if metric == "accuracy" else metric
        bound = 1.0 - limit if metric == "accuracy" else limit
        values = {
            (cls.index, k): cls.rate / total * _metric(option, name)
            for cls in problem.classes
            for k, option in enumerate(cls.options)
        }
        top = max(values.values(), default=0.0) or 1.0
        terms = [round(v / top * _LIMIT_SCALE) * y[c][k] for (c, k), v in values.items()]
        slack = len(problem.classes) // 2 + 1  # the coefficients' rounding, at most half a unit each
        capped(sum(terms), math.floor(bound / top * _LIMIT_SCALE) + slack, f"limit on mean {name} ({bound:.6g})")
    if max_moves is not None and previous is not None:
        held_before = previous.items
        new = [var for (node, item), var in x.items() if (node, item_label(item)) not in held_before]
        if len(new) > max_moves:
            capped(sum(new), max_moves, f"max_moves ({max_moves})")
    model.minimize(sum(objective))
    return {
        "model": model,
        "x": x,
        "y": y,
        "k": k,
        "guards": guards,
        "floor": floor,
        "per_unit": per_unit,
        "pair_copies": pair_copies,
    }


def _link_terms(entries: list[tuple[float, int, Any]], rate: float) -> tuple[list[tuple[int, Any]], int]:
    """Integer terms and capacity of one link's direction. Exact where int64 allows it: bits/s
    times the common multiple of the pairs of copies sharing each flow (a service's traffic
    counts exactly, a request's rounded up); else in bits/s, kbit/s, ... rounded up. A term
    that alone overruns the capacity is worth just more than it (the same constraint)."""
    exact = math.lcm(*(pairs for _, pairs, _ in entries))
    for scale in (exact, 1, 1e-3, 1e-6, 1e-9):
        capacity = _down(rate * scale)
        terms = [(min(_up(bits * scale / pairs), capacity + 1), var) for bits, pairs, var in entries]
        if capacity < _INT_RANGE and sum(c * _most(var) for c, var in terms) < _INT_RANGE:
            break
    return terms, capacity


def _most(var: Any) -> int:
    """The largest value a CP-SAT variable may take."""
    domain = var.proto.domain  # [low, high, ...]; a negative index does not work on it
    return domain[len(domain) - 1]


def _up(value: float) -> int:
    """Round up, but not for float noise (300.00000000000006 stays 300)."""
    return math.ceil(value - 1e-6)


def _down(value: float) -> int:
    """Round a capacity down, but not for float noise (2099.9999999999995 stays 2100)."""
    return math.floor(value + 1e-6)


def _break_symmetries(problem: PlacementProblem, model: Any, k: Mapping[tuple[str, str], Any]) -> None:
    """Within each group of interchangeable nodes, the nodes' copies (a vector, one entry per
    service) come in decreasing lexicographic order: any plan can be renumbered so, at the same
    cost. The vector is read as one number in base (most copies + 1), which int64 must hold."""
    for group in problem.interchangeable:
        allowed = [s for s in problem.services.values() if all((s.name, n) in k for n in group)]
        if not allowed:
            continue
        base = max(s.instances for s in allowed) + 1
        while len(allowed) > 1 and base ** len(allowed) > 2**60:
            allowed = allowed[:-1]  # order by the first services only: still a valid order
        weights = [base ** (len(allowed) - 1 - i) for i in range(len(allowed))]
        for first, second in itertools.pairwise(group):
            model.add(
                sum(w * k[s.name, first] for w, s in zip(weights, allowed, strict=True))
                >= sum(w * k[s.name, second] for w, s in zip(weights, allowed, strict=True))
            )


def _objective_scale(problem: PlacementProblem, weights: Weights | None) -> tuple[dict[int, float], float]:
    """Each class's cheapest option cost, and the largest cost above it (the rounding unit)."""
    floor = {}
    unit = 0.0
    for cls in problem.classes:
        costs = [problem.option_cost(cls, o, weights) for o in cls.options]
        floor[cls.index] = min(costs)
        unit = max(unit, max(costs) - floor[cls.index])
    return floor, unit or 1.0


def _metric(option: Any, name: str) -> float:
    if name == "latency":
        return option.latency
    if name == "inaccuracy":
        return 1.0 - option.accuracy
    return option.energy


def _add_hints(model: Any, built: dict[str, Any], problem: PlacementProblem, start: PlacementPlan) -> None:
    chosen = previous_choice(problem, start)
    needed = set()
    for cls in problem.classes:
        option = chosen.get(cls.index)
        for option_k, var in zip(cls.options, built["y"][cls.index], strict=True):
            model.add_hint(var, option_k is option)
        if option is not None:
            needed.update(option.needs)
    for need, var in built["x"].items():
        model.add_hint(var, need in needed)
    if start.assignment:
        counts = counts_of(start.assignment)
        for key, var in built["k"].items():
            model.add_hint(var, counts.get(key, 0))


def _explain(
    problem: PlacementProblem,
    weights: Weights | None,
    limits: Mapping[str, float],
    previous: PlacementPlan | None,
    max_moves: int | None,
) -> str:
    """One line naming capacities that cannot all hold.

    First the requests arriving at one node alone, against that node's compute and memory and its
    uplink with everything beyond unlimited (the usual cause on a tree); then a core of CP-SAT's
    assumptions over the whole model, shrunk by dropping what it does not need.
    """
    from ortools.sat.python import cp_model

    demand = sum(
        cls.rate * min(problem.models[cls.model].variants, key=lambda v: v.gflop).gflop for cls in problem.classes
    )
    if not limits and max_moves is None and not problem.services:  # services load other nodes and links
        for source in sorted({cls.source for cls in problem.classes}, key=lambda n: (-problem.depth(n), n)):
            local = _local_problem(problem, source)
            if local is None:
                continue
            built = _build(local, weights, {}, None, None, cp_model)
            solver = cp_solver()
            solver.parameters.max_time_in_seconds = 5.0
            if solver.solve(built["model"]) == cp_model.INFEASIBLE:
                node, link = problem.nodes[source], problem.links.get(source)
                rate = sum(cls.rate for cls in local.classes)
                parts = []
                if node.compute is not None:
                    parts.append(f"compute {node.compute:.4g} GFLOP/s (at max_utilization {problem.max_utilization:g})")
                if node.memory is not None:
                    parts.append(f"memory {node.memory / 2**20:.0f} MiB")
                if link is not None and link.rate is not None:
                    parts.append(f"uplink {source} -> {link.dst} {link.rate / 1e6:.4g} mbit/s")
                binding = [p for p in parts if _feasible_without(local, source, p.split(" ", 1)[0], weights, cp_model)]
                if len(binding) == 1:
                    what = f"{binding[0]} (raising it would do)"
                elif binding:
                    what = f"{' and '.join(binding)} together (raising any one of them would do)"
                else:
                    what = f"{' and '.join(parts)} together (raising one alone would not do)"
                return (
                    f"no plan serves every request: the {rate:.4g} requests/s arriving at {source!r} do not fit "
                    f"its {what}; add capacity there or lower its rates"
                )
    built = _build(problem, weights, limits, previous, max_moves, cp_model, enforce=True)
    guards = built["guards"]
    what = "no plan serves every request" if problem.classes else "no plan places every service copy"
    lower = "rates" if problem.classes else "services' needs"
    if problem.classes and problem.services:
        what, lower = "no plan serves every request and places every service copy", "rates or the services' needs"

    def infeasible_with(literals: list[Any]) -> bool:
        model = built["model"]
        model.clear_assumptions()
        model.add_assumptions(literals)
        solver = cp_solver()
        solver.parameters.num_workers = 1
        solver.parameters.max_time_in_seconds = 2.0
        return solver.solve(model) == cp_model.INFEASIBLE

    model = built["model"]
    model.add_assumptions(list(guards))
    solver = cp_solver()
    solver.parameters.num_workers = 1
    solver.parameters.max_time_in_seconds = 30.0
    if solver.solve(model) == cp_model.INFEASIBLE:
        found = set(solver.sufficient_assumptions_for_infeasibility())
        core = [literal for literal in guards if literal.index in found]
        deadline = time.perf_counter() + 20.0
        for literal in list(core):
            if len(core) <= 1 or time.perf_counter() > deadline:
                break
            trial = [other for other in core if other is not literal]
            if infeasible_with(trial):
                core = trial
        if core:
            names = [guards[literal] for literal in core]
            shown = "; ".join(names[:8]) + (f"; and {len(names) - 8} more" if len(names) > 8 else "")
            need = (
                f" (requests need at least {demand:.4g} GFLOP/s in all)"
                if demand and any("compute" in n for n in names)
                else ""
            )
            return f"{what}: these cannot all hold: {shown}{need}; add capacity or lower the {lower}"
    if not demand:
        return f"{what} within the capacities; add capacity or lower the services' needs"
    return f"{what} within the capacities (requests need at least {demand:.4g} GFLOP/s)"


def _feasible_without(
    local: PlacementProblem, source: str, resource: str, weights: Weights | None, cp_model: Any
) -> bool:
    """Whether the local problem becomes feasible with ``source``'s compute, memory or uplink unlimited."""
    nodes = list(local.nodes.values())
    links = list(local.links.values())
    if resource == "compute":
        nodes = [dataclasses.replace(n, compute=_unlimited(n.compute)) if n.name == source else n for n in nodes]
    elif resource == "memory":
        nodes = [dataclasses.replace(n, memory=None) if n.name == source else n for n in nodes]
    else:
        links = [dataclasses.replace(lk, rate=None) if lk.src == source else lk for lk in links]
    relaxed = PlacementProblem(
        nodes,
        links,
        local.models.values(),
        local.requests,
        local.weights,
        local.max_utilization,
        local.measured,
        local.services.values(),
        local.cross_links.values(),
    )
    solver = cp_solver()
    solver.parameters.max_time_in_seconds = 5.0
    return solver.solve(_build(relaxed, weights, {}, None, None, cp_model)["model"]) in (
        cp_model.OPTIMAL,
        cp_model.FEASIBLE,
    )


def _unlimited(compute: float | None) -> float | None:
    """Compute no request class can exhaust (every non-root node needs a figure)."""
    return None if compute is None else max(compute, 1.0) * 1e9


def _local_problem(problem: PlacementProblem, source: str) -> PlacementProblem | None:
    """The requests arriving at ``source`` alone, with every node but ``source`` and every link but
    its uplink unlimited; ``None`` when no request arrives there."""
    from engage.deploy.placement.problem import Requests

    requests = [Requests(r.node, r.model, r.rate) for r in problem.requests if r.node == source]
    if not requests:
        return None
    nodes = [
        n if n.name == source else dataclasses.replace(n, compute=_unlimited(n.compute), memory=None)
        for n in problem.nodes.values()
    ]
    links = [lk if lk.src == source else dataclasses.replace(lk, rate=None) for lk in problem.links.values()]
    return PlacementProblem(
        nodes,
        links,
        problem.models.values(),
        requests,
        problem.weights,
        problem.max_utilization,
        problem.measured,
        problem.services.values(),
        problem.cross_links.values(),
    )
