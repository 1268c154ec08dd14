"""A placement plan: what each node holds, how each request class is served, and its figures.

Every solver returns a :class:`PlacementPlan` built by :func:`build_plan` from its choice of one
option per request class and of the nodes of the services' copies, so figures are computed the
same way whatever the solver and every plan is checked against the capacities.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from engage.deploy.placement.problem import Item, Option, PlacementProblem, Weights, item_label
from engage.deploy.placement.services import Counts, label_copies, usage

_SLACK = 1e-9


class PlacementInfeasible(RuntimeError):
    """No plan serves every request within the capacities; the message says which ones conflict.
    ``proved``: the solver showed that no plan exists (not only that it found none)."""

    def __init__(self, message: str, *, proved: bool = False) -> None:
        super().__init__(message)
        self.proved = proved


@dataclass(frozen=True)
class Route:
    """How one request class is served."""

    source: str
    model: str
    rate: float
    node: str
    variant: str
    split: str | None
    tail_node: str | None
    latency_s: float
    accuracy: float
    energy_j: float


@dataclass
class PlacementPlan:
    """The items on each node, one route per request class and the request-weighted means, and the
    node of each service copy (``assignment``: ``{"simulator#1": node}``) with the services'
    traffic cost and the Mbit/s they send over links with a cost (``slow_traffic_mbit``).

    ``status`` is ``OPTIMAL`` (proved), ``FEASIBLE`` (the best found in the time limit, with
    ``bound`` and ``gap`` its distance to the best lower bound), or ``HEURISTIC`` (greedy);
    ``moves`` counts items loaded onto a node relative to a previous plan, ``removed`` those unloaded.
    """

    placement: dict[str, list[str]]
    routes: list[Route]
    objective: float
    latency_s: float
    accuracy: float
    energy_j: float
    status: str
    solver: str
    solve_time_s: float = 0.0
    bound: float | None = None
    moves: int = 0
    removed: int = 0
    #: request class index -> (position, variant, split): what re-placement warm-starts from
    choice: dict[int, tuple[int, str, str | None]] = field(default_factory=dict, repr=False)
    assignment: dict[str, str] = field(default_factory=dict)
    traffic_cost: float = 0.0
    slow_traffic_mbit: float = 0.0

    @property
    def per_node(self) -> dict[str, list[str]]:
        """``{node: [service copies on it]}`` for nodes with copies."""
        hosts: dict[str, list[str]] = defaultdict(list)
        for label, node in self.assignment.items():
            hosts[node].append(label)
        return dict(hosts)

    @property
    def gap(self) -> float | None:
        """Relative distance between the objective and the solver's lower bound (0: proved optimal)."""
        if self.bound is None:
            return None
        if self.objective <= 0:
            return 0.0
        return max(0.0, (self.objective - self.bound) / self.objective)

    @property
    def items(self) -> set[tuple[str, str]]:
        """``{(node, item label)}`` placed."""
        return {(node, label) for node, labels in self.placement.items() for label in labels}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gap"] = self.gap
        data["choice"] = {str(k): list(v) for k, v in self.choice.items()}
        return data

    def summary(self) -> dict[str, float | str | None]:
        """The headline figures (what benchmarks and MLflow record): the requests' where the plan
        routes requests (a plan of services alone has no latency or accuracy to report), the
        services' where it places services."""
        requests = {
            "latency_ms": self.latency_s * 1e3,
            "accuracy": self.accuracy,
            "energy_j": self.energy_j,
            "items": sum(len(v) for v in self.placement.values()),
        }
        services = {
            "service_copies": len(self.assignment),
            "traffic_cost": self.traffic_cost,
            "slow_traffic_mbit": self.slow_traffic_mbit,
        }
        return {
            "objective": self.objective,
            **(requests if self.routes or not self.assignment else {}),
            "status": self.status,
            "gap": self.gap,
            "solve_time_s": self.solve_time_s,
            "moves": self.moves,
            **(services if self.assignment else {}),
        }


def option_key(option: Option) -> tuple[int, str, str | None]:
    return (option.position, option.variant, option.split)


def check_capacities(
    problem: PlacementProblem, chosen: Mapping[int, Option], counts: Counts | None = None
) -> list[str]:
    """What the chosen options and service copies (``counts``: (service, node) -> copies) overrun,
    one line each (empty when they fit)."""
    memory: dict[str, set[Item]] = defaultdict(set)
    services = usage(problem, counts or {})
    compute: dict[str, float] = defaultdict(float)
    traffic: dict[tuple[str, bool], float] = defaultdict(float, services.traffic)
    for cls in problem.classes:
        option = chosen[cls.index]
        for node, item in option.needs:
            memory[node].add(item)
        for node, gflop in option.compute:
            compute[node] += cls.rate * gflop
        for src, bits in option.traffic:
            traffic[src, True] += cls.rate * bits  # up the tree
    problems = []
    for node in problem.nodes:
        items = sum(problem.item_size(i) for i in memory.get(node, ()))
        reserved = services.memory.get(node, 0.0)
        if items > problem.memory_capacity(node) - reserved + _SLACK:
            problems.append(
                f"memory of {node}: {items / 2**20:.0f} MiB of models > "
                f"{(problem.memory_capacity(node) - reserved) / 2**20:.0f} MiB"
            )
        if reserved > problem.service_memory_capacity(node) + _SLACK:
            problems.append(
                f"memory of {node}: {reserved / 2**20:.0f} MiB of services > "
                f"{problem.service_memory_capacity(node) / 2**20:.0f} MiB"
            )
        # services reserve their compute whole; requests may use max_utilization of the rest
        reserved_compute = services.compute.get(node, 0.0)
        whole = problem.nodes[node].compute
        if whole is not None and reserved_compute > whole * (1 + 1e-9) + _SLACK:
            problems.append(f"compute of {node}: {reserved_compute:.4g} GFLOP/s of services > {whole:.4g}")
        spare = problem.compute_capacity(node) - problem.max_utilization * reserved_compute
        load = compute.get(node, 0.0)
        if load and load > spare * (1 + 1e-9) + _SLACK:
            left = " left by services" if reserved_compute else ""
            problems.append(f"compute of {node}: {load:.4g} GFLOP/s of requests > {spare:.4g}{left}")
    for (key, forward), bits in traffic.items():
        if bits > problem.link_capacity(key) * (1 + 1e-9) + _SLACK:
            link = problem.link(key)
            ends = (link.src, link.dst) if forward else (link.dst, link.src)
            problems.append(
                f"link {ends[0]} -> {ends[1]}: {bits / 1e6:.4g} mbit/s > {problem.link_capacity(key) / 1e6:.4g}"
            )
    return problems


def build_plan(
    problem: PlacementProblem,
    chosen: Mapping[int, Option],
    *,
    status: str,
    solver: str,
    solve_time_s: float = 0.0,
    bound: float | None = None,
    previous: PlacementPlan | None = None,
    weights: Weights | None = None,
    counts: Counts | None = None,
) -> PlacementPlan:
    """The plan of one option per class (``chosen``: class index -> option) and of ``counts``
    service copies per (service, node), checked against the capacities; ``previous`` counts the
    moves."""
    counts = counts or {}
    if sorted(problem.services) != sorted({name for (name, _), n in counts.items() if n}) or any(
        sum(n for (name, _), n in counts.items() if name == s.name) != s.instances for s in problem.services.values()
    ):
        raise PlacementInfeasible(f"{solver} placed the services' copies wrongly: {dict(counts)}")
    overruns = check_capacities(problem, chosen, counts)
    if overruns:
        raise PlacementInfeasible(f"{solver} chose a plan over capacity: {'; '.join(overruns)}")
    placement: dict[str, set[str]] = {name: set() for name in problem.nodes if name != problem.root}
    routes = []
    total = problem.total_rate or 1.0
    latency = accuracy = energy = objective = 0.0
    for cls in problem.classes:
        option = chosen[cls.index]
        for node, item in option.needs:
            placement[node].add(item_label(item))
        routes.append(
            Route(
                cls.source,
                cls.model,
                cls.rate,
                option.node,
                option.variant,
                option.split,
                option.tail_node,
                option.latency,
                option.accuracy,
                option.energy,
            )
        )
        latency += cls.rate * option.latency / total
        accuracy += cls.rate * option.accuracy / total
        energy += cls.rate * option.energy / total
        objective += problem.option_cost(cls, option, weights)
    services = usage(problem, counts)
    objective += (weights or problem.weights).traffic * services.cost
    plan = PlacementPlan(
        placement={node: sorted(labels) for node, labels in placement.items()},
        routes=routes,
        objective=objective,
        latency_s=latency,
        accuracy=accuracy,
        energy_j=energy,
        status=status,
        solver=solver,
        solve_time_s=solve_time_s,
        bound=None if bound is None else min(bound, objective),
        choice={cls.index: option_key(chosen[cls.index]) for cls in problem.classes},
        assignment=label_copies(problem, counts),
        traffic_cost=services.cost,
        slow_traffic_mbit=services.slow_mbit,
    )
    if previous is not None:
        before, after = previous.items, plan.items
        plan.moves = len(after - before)
        plan.removed = len(before - after)
    return plan


def options_by_key(problem: PlacementProblem) -> dict[int, dict[tuple[int, str, str | None], Option]]:
    return {cls.index: {option_key(o): o for o in cls.options} for cls in problem.classes}


def previous_choice(problem: PlacementProblem, previous: PlacementPlan) -> dict[int, Option]:
    """The previous plan's options that still exist in ``problem`` (same classes by source and model)."""
    by_key = options_by_key(problem)
    prior = {(r.source, r.model): key for r, key in zip(previous.routes, previous.choice.values(), strict=False)}
    chosen = {}
    for cls in problem.classes:
        key = prior.get((cls.source, cls.model))
        if key is not None and key in by_key[cls.index]:
            chosen[cls.index] = by_key[cls.index][key]
    return chosen
