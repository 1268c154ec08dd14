"""Services in a placement problem: workloads placed whole (a trainer, simulators) beside the
model variants that serve requests, on the same nodes, links and capacities.

A :class:`Service` has ``instances`` copies. Each copy takes ``memory`` bytes and ``compute``
GFLOP/s of the node it runs on, and may run on one of ``nodes`` (empty: any available node with
room for one copy). ``traffic`` is what all of a service's copies send to all of another
service's copies in total, in bits per second, shared evenly between the pairs of copies.

Traffic between two nodes crosses the problem's cross link between them when it declares one (a
direct link off the tree, such as a pair of an infrastructure's layers), else the tree path
between them, up to their nearest common node and down.

Capacities and cost:

* **Reserved.** Services reserve their memory and compute whole on every node. Requests may use
  ``max_utilization`` of the compute they leave. On the cloud, whose ``memory`` otherwise bounds
  each model variant, the services' memory counts as a sum.
* **Shared links.** Each direction of a link has its ``rate``, shared by the services' traffic
  going that way and the requests (which go up the tree).
* **Cost.** Per pair of copies, the Mbit/s sent times the sum over the links crossed of seconds
  per Mbit plus one-way delay in seconds; weighted by ``objective.traffic`` in the objective.

Example::

    >>> from engage.deploy.placement import CpSatSolver, PlacementProblem
    >>> problem = PlacementProblem.from_dict({
    ...     "nodes": [{"name": "cloud", "compute": 40, "memory": "8GiB"},
    ...               {"name": "edge", "compute": 20, "memory": "1GiB"}],
    ...     "links": [{"src": "edge", "dst": "cloud", "delay": "20ms", "rate": "10mbit"}],
    ...     "services": [{"name": "trainer", "compute": 40, "nodes": ["cloud"]},
    ...                  {"name": "simulator", "instances": 2, "compute": 10, "traffic": {"trainer": "4mbit"}}]})
    >>> plan = CpSatSolver().solve(problem)
    >>> plan.assignment  # the cloud's compute is the trainer's: the simulators send over the link
    {'trainer#1': 'cloud', 'simulator#1': 'edge', 'simulator#2': 'edge'}
    >>> round(plan.slow_traffic_mbit, 6), round(plan.traffic_cost, 6)
    (4.0, 0.48)
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engage.deploy.infrastructure import InfrastructureError, parse_rate, parse_size

if TYPE_CHECKING:
    from engage.deploy.placement.problem import Link, PlacementProblem

#: (service name, node) -> copies of the service on the node
Counts = Mapping[tuple[str, str], int]


@dataclass(frozen=True)
class Service:
    """A workload placed whole; see the module docstring. ``traffic``: ``((service, bits/s), ...)``."""

    name: str
    instances: int = 1
    memory: int = 0
    compute: float = 0.0
    nodes: tuple[str, ...] = ()
    traffic: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Flow:
    """``bits`` per second from each copy of ``source`` to each copy of ``target``."""

    source: str
    target: str
    bits: float


@dataclass
class ServiceUsage:
    """What the services of a plan take: bytes and GFLOP/s per node, bits/s per link and direction
    (``(key, from src to dst)``), their traffic cost (unweighted) and the Mbit/s that cross links
    with a cost."""

    memory: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    compute: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    traffic: dict[tuple[str, bool], float] = field(default_factory=lambda: defaultdict(float))
    cost: float = 0.0
    slow_mbit: float = 0.0


def link_cost(link: Link) -> float:
    """The cost of one Mbit/s over ``link``: seconds per Mbit plus the one-way delay in seconds."""
    return (1e6 / link.rate if link.rate else 0.0) + link.delay


def flows(services: Iterable[Service]) -> list[Flow]:
    """Every service's traffic, split evenly between pairs of copies."""
    by_name = {s.name: s for s in services}
    return [
        Flow(s.name, target, bits / (s.instances * by_name[target].instances))
        for s in by_name.values()
        for target, bits in s.traffic
    ]


def parse_services(entries: Any) -> list[Service]:
    """``services`` of a placement problem's mapping; :class:`PlacementProblemError` names the field."""
    from engage.deploy.placement.loading import _keys, _number
    from engage.deploy.placement.problem import PlacementProblemError

    if entries is None:
        return []
    if not isinstance(entries, (list, tuple)):
        raise PlacementProblemError("services: give a list of services (name, instances, memory, compute, ...)")
    services = []
    for i, raw in enumerate(entries):
        where = f"services[{i}]"
        _keys(raw, Service, where)
        instances = raw.get("instances", 1)
        if isinstance(instances, bool) or not isinstance(instances, int) or instances < 1:
            raise PlacementProblemError(f"{where}.instances: {instances!r}; give a whole number >= 1")
        nodes = raw.get("nodes") or []
        if isinstance(nodes, str) or not isinstance(nodes, (list, tuple)):
            raise PlacementProblemError(f"{where}.nodes: give a list of node names (empty: any node)")
        traffic = raw.get("traffic") or {}
        if not isinstance(traffic, Mapping):
            raise PlacementProblemError(
                f"{where}.traffic: give a mapping {{service: rate}}, such as {{trainer: 8mbit}}"
            )
        try:
            memory = parse_size(raw.get("memory", 0), f"{where}.memory")
            sent = tuple((str(k), parse_rate(v, f"{where}.traffic.{k}")) for k, v in traffic.items())
        except InfrastructureError as exc:
            raise PlacementProblemError(str(exc)) from None
        services.append(
            Service(
                name=str(raw["name"]),
                instances=instances,
                memory=memory,
                compute=_number(raw.get("compute", 0.0), f"{where}.compute"),
                nodes=tuple(str(n) for n in nodes),
                traffic=sent,
            )
        )
    return services


def validate_services(problem: PlacementProblem) -> None:
    """Names, nodes and traffic targets of the services, and that each fits some node alone."""
    from engage.deploy.placement.problem import PlacementProblemError, _unique

    services = list(problem.services.values())
    for i, service in enumerate(services):
        where = f"services[{i}]"
        _check_types(service, where)
        if service.instances < 1:
            raise PlacementProblemError(f"{where}.instances: {service.instances}; give a whole number >= 1")
        for node in service.nodes:
            if node not in problem.nodes:
                raise PlacementProblemError(
                    f"{where}.nodes: {node!r} is not a node; nodes are {', '.join(problem.nodes)}"
                )
        _unique([t for t, _ in service.traffic], f"{where}.traffic", "service", "give one rate per service")
        for target, bits in service.traffic:
            if target == service.name:
                raise PlacementProblemError(
                    f"{where}.traffic: {service.name!r} sends to itself; traffic goes between different services "
                    "(the copies of one service are not modelled as talking to each other): remove it"
                )
            if target not in problem.services:
                raise PlacementProblemError(
                    f"{where}.traffic: {service.name!r} sends to {target!r}, which is not a service; "
                    f"services are {', '.join(problem.services)}"
                )
            if not (math.isfinite(bits) and bits >= 0):
                raise PlacementProblemError(f"{where}.traffic.{target}: {bits!r}; give a finite rate >= 0")
        if not (math.isfinite(service.compute) and service.compute >= 0 and service.memory >= 0):
            raise PlacementProblemError(
                f"{where}: {service.name!r} needs compute {service.compute!r} and memory {service.memory!r}; "
                "give finite numbers >= 0"
            )
        if not problem.service_nodes(service.name):
            raise PlacementProblemError(
                f"{where}: {service.name!r} fits on no node ({service.memory / 2**20:.0f} MiB, "
                f"{service.compute:g} GFLOP/s a copy, on {', '.join(service.nodes) or 'any available node'}); "
                "lower its needs or give it larger nodes"
            )


def _check_types(service: Service, where: str) -> None:
    """A :class:`Service` made in Python with the types its fields need (``from_dict`` converts)."""
    from engage.deploy.placement.problem import PlacementProblemError

    def number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    if not isinstance(service.instances, int) or isinstance(service.instances, bool):
        raise PlacementProblemError(f"{where}.instances: {service.instances!r}; give a whole number >= 1")
    for key in ("memory", "compute"):
        if not number(getattr(service, key)):
            raise PlacementProblemError(f"{where}.{key}: {getattr(service, key)!r}; give a number >= 0")
    if isinstance(service.nodes, str) or not all(isinstance(n, str) for n in service.nodes):
        raise PlacementProblemError(f"{where}.nodes: {service.nodes!r}; give a tuple of node names, such as ('edge',)")
    if isinstance(service.traffic, Mapping) or not all(
        isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) and number(pair[1])
        for pair in service.traffic
    ):
        raise PlacementProblemError(
            f"{where}.traffic: {service.traffic!r}; give ((service, bits/s), ...), such as (('trainer', 8e6),)"
        )


def usage(problem: PlacementProblem, counts: Counts) -> ServiceUsage:
    """What ``counts`` copies of the services take and cost on ``problem``."""
    used = ServiceUsage()
    for (name, node), copies in counts.items():
        service = problem.services[name]
        used.memory[node] += copies * service.memory
        used.compute[node] += copies * service.compute
    for flow in problem.flows:
        for (source, u), m in counts.items():
            if source != flow.source or not m:
                continue
            for (target, v), n in counts.items():
                if target != flow.target or not n or u == v:
                    continue
                bits = flow.bits * m * n
                cost = 0.0
                for key, forward in problem.crossings(u, v):
                    used.traffic[key, forward] += bits
                    cost += link_cost(problem.link(key))
                used.cost += bits / 1e6 * cost
                if cost > 0:
                    used.slow_mbit += bits / 1e6
    return used


def label_copies(problem: PlacementProblem, counts: Counts) -> dict[str, str]:
    """``{"simulator#1": node, ...}``: copies numbered in the order of the problem's nodes."""
    assignment = {}
    for service in problem.services.values():
        k = 0
        for node in problem.nodes:
            for _ in range(counts.get((service.name, node), 0)):
                k += 1
                assignment[f"{service.name}#{k}"] = node
    return assignment


def counts_of(assignment: Mapping[str, str]) -> dict[tuple[str, str], int]:
    """The copies per (service, node) of an assignment ``{"simulator#1": node, ...}``."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for label, node in assignment.items():
        counts[(label.rsplit("#", 1)[0], node)] += 1
    return dict(counts)


def validate_interchangeable(problem: PlacementProblem, groups: list[tuple[str, ...]]) -> tuple[tuple[str, ...], ...]:
    """Groups of nodes any plan may renumber (the solvers break that symmetry): checked to have
    the same figures, the same services, and a link of their own to every other node, with
    the same figures (so no other pair's traffic crosses it)."""
    from engage.deploy.placement.problem import PlacementProblemError

    seen: set[str] = set()
    for i, group in enumerate(groups):
        where = f"interchangeable[{i}]"
        if len(group) < 2:
            raise PlacementProblemError(f"{where}: {list(group)}; give at least two nodes")
        for name in group:
            if name not in problem.nodes:
                raise PlacementProblemError(f"{where}: {name!r} is not a node; nodes are {', '.join(problem.nodes)}")
            if name in seen:
                raise PlacementProblemError(f"{where}: {name!r} is listed twice; give each node once, in one group")
            seen.add(name)
        if problem.models:
            raise PlacementProblemError(f"{where}: only a problem of services alone may have interchangeable nodes")
        first = group[0]
        for member in group:
            far = [n for n in problem.nodes if n != member and len(problem.route(member, n)) != 1]
            if far:
                raise PlacementProblemError(
                    f"{where}: {member!r} has no link of its own to {far[0]!r}; group only nodes linked "
                    "directly to every other node"
                )
        for other in group[1:]:
            figures = dataclasses.replace(problem.nodes[other], name=first)
            same = figures == problem.nodes[first] and all(
                (first in s.nodes) == (other in s.nodes) for s in problem.services.values() if s.nodes
            )
            for node in problem.nodes:
                if not same or node in (first, other):
                    continue
                same = _figures(problem, first, node) == _figures(problem, other, node) and _figures(
                    problem, node, first
                ) == _figures(problem, node, other)
            if not same:
                raise PlacementProblemError(
                    f"{where}: {first!r} and {other!r} differ (capacities, links or services); "
                    "group only nodes a plan may swap"
                )
    return tuple(groups)


def _figures(problem: PlacementProblem, u: str, v: str) -> tuple[tuple[float, float | None], ...]:
    """The delay and rate of each link from ``u`` to ``v``."""
    return tuple((problem.link(key).delay, problem.link(key).rate) for key in problem.route(u, v))
