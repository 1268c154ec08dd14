"""A workflow's services (trainer, simulators) on an infrastructure's hosts, placed by the
placement engine: what the launcher's ``placement: optimize`` and ``engage place
INFRASTRUCTURE`` solve.

The infrastructure becomes a :class:`~engage.deploy.placement.PlacementProblem` of services
only (:func:`workflow_problem`):

* **Nodes.** The hosts, each with its layer's ``cpu`` as compute (in cores: services need no
  speed here) and ``memory``; a layer without limits gives unlimited hosts.
* **Links.** Every host links to the first host of the first layer (the tree's root). Every other
  pair of hosts gets a cross link. Both carry the constraint between the two hosts' layers, and
  nothing within a layer or between unconstrained layers: the ``netns`` provider shapes layer
  pairs, not paths, each direction at the constraint's rate. A one-way constraint counts for
  both directions.
* **Interchangeable hosts.** The hosts of a layer are alike: solvers may renumber them, and
  CP-SAT uses that to search less.
* **Services.** Each layer's services: ``quantity`` copies of ``cpu`` cores and ``memory``, kept
  on their layer's hosts when ``pinned``, sending ``traffic`` (Mbit/s in total) to the others.

The objective is the services' traffic cost: each Mbit/s sent over a constrained link costs its
seconds per Mbit plus its one-way delay in seconds. Plans keep the copies' names
(``simulator#2``), which the deploy executor and the launcher read.

Example::

    >>> from engage.deploy.infrastructure import Infrastructure
    >>> infra = Infrastructure.from_dict({
    ...     "layers": [
    ...         {"name": "cloud", "hosts": 1, "cpu": 4, "services": [{"name": "trainer", "cpu": 2, "pinned": True}]},
    ...         {"name": "edge", "hosts": 2, "cpu": 1, "services": [
    ...             {"name": "simulator", "quantity": 2, "cpu": 1, "traffic": {"trainer": 40}}]}],
    ...     "network": [{"src": "edge", "dst": "cloud", "rate": "10mbit", "delay": "20ms"}]})
    >>> plan = place_services(infra)
    >>> sorted(set(plan.assignment.values()))  # everything fits on the cloud host: no slow traffic
    ['cloud-1']
    >>> plan.slow_traffic_mbit
    0.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from engage.deploy.infrastructure import Infrastructure, InfrastructureError, parse_size
from engage.deploy.placement.plan import PlacementInfeasible, PlacementPlan
from engage.deploy.placement.problem import Link, Node, PlacementProblem, PlacementProblemError, Weights
from engage.deploy.placement.services import Service
from engage.deploy.placement.solver import PlacementSolver


class ServicePlacementError(ValueError):
    """No placement of the services fits, or the infrastructure cannot be placed; one line."""


def _link(infra: Infrastructure, a: tuple[Any, str], b: tuple[Any, str]) -> Link:
    """The link between hosts ``a`` and ``b`` ((layer, host name)) with their layers' constraint."""
    constraint = None
    if a[0].name != b[0].name:
        constraint = infra.constraint_between(a[0].name, b[0].name) or infra.constraint_between(b[0].name, a[0].name)
    if constraint is None:
        return Link(a[1], b[1])
    return Link(a[1], b[1], delay=constraint.delay_s, rate=constraint.rate_bps or None)


def workflow_problem(infra: Infrastructure) -> PlacementProblem:
    """The placement problem of ``infra``'s services on its hosts; see the module docstring.
    ``infra`` is one :meth:`~engage.deploy.infrastructure.Infrastructure.validate` accepted (the
    launcher's ``setup`` and ``engage place`` check it first); what only placement can find (a
    service named twice, copies that fit no host, traffic to a service that is not there) is a
    :class:`ServicePlacementError`."""
    hosts = list(infra.iter_hosts())
    services = [_service(layer, i, j) for i, layer in enumerate(infra.layers) for j in range(len(layer.services))]
    named: dict[str, str] = {}
    for i, layer in enumerate(infra.layers):
        for j, service in enumerate(layer.services):
            where = f"infrastructure.layers[{i}].services[{j}]"
            if service.name in named:
                raise ServicePlacementError(
                    f"{where}.name: {service.name!r} again (as in {named[service.name]}); "
                    "give every service its own name"
                )
            named[service.name] = where
    if not services:
        raise ServicePlacementError("no services to place: list them under infrastructure.layers[*].services")
    _check_copies_fit(infra)
    declared = {s.name for s in services}
    for service in services:
        for target, _ in service.traffic:
            if target not in declared:
                raise ServicePlacementError(
                    f"service {service.name!r} sends traffic to {target!r}, which is not declared; "
                    f"services are {', '.join(sorted(declared))}"
                )
    nodes = [
        Node(name, compute=None if layer.cpu is None else float(layer.cpu), memory=layer.memory_bytes)
        for layer, name in hosts
    ]
    root = hosts[0]
    links = [_link(infra, host, root) for host in hosts[1:]]
    cross = [_link(infra, a, b) for i, a in enumerate(hosts[1:], start=1) for b in hosts[i + 1 :]]
    alike = [layer.host_names() for layer in infra.layers if layer.hosts > 1]
    try:
        return PlacementProblem(
            nodes, links, (), (), Weights(latency=0.0, inaccuracy=0.0), 1.0, (), services, cross, alike
        )
    except PlacementProblemError as exc:
        raise ServicePlacementError(str(exc)) from None


def _number(value: Any, where: str, unit: str) -> float:
    """``value`` as a finite number >= 0 of ``unit``; one line naming ``where`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ServicePlacementError(f"{where}: {value!r}; give {unit} as a finite number >= 0")
    return float(value)


def _service(layer: Any, i: int, j: int) -> Service:
    """Service ``j`` of ``layer`` (layer ``i``), its figures checked (one line naming the field)."""
    service = layer.services[j]
    where = f"infrastructure.layers[{i}].services[{j}]"
    traffic = service.traffic
    if not isinstance(traffic, Mapping):
        raise ServicePlacementError(f"{where}.traffic: give a mapping {{service: mbit/s}}, such as {{trainer: 8}}")
    if service.name in traffic:
        raise ServicePlacementError(
            f"{where}.traffic.{service.name}: a service sends traffic to other services, not to itself; remove it"
        )
    try:
        memory = parse_size(service.memory, f"{where}.memory") if service.memory else 0
    except InfrastructureError as exc:
        raise ServicePlacementError(str(exc)) from None
    return Service(
        name=str(service.name),
        instances=service.quantity,  # checked by the infrastructure
        memory=memory,
        compute=_number(service.cpu, f"{where}.cpu", "cores"),
        nodes=tuple(layer.host_names()) if service.pinned else (),
        traffic=tuple(
            (str(target), _number(mbit, f"{where}.traffic.{target}", "Mbit/s") * 1e6)
            for target, mbit in traffic.items()
        ),
    )


def _check_copies_fit(infra: Infrastructure) -> None:
    """One line when a single copy of a service is larger than every host it may run on."""
    for layer in infra.layers:
        for service in layer.services:
            memory = parse_size(service.memory, f"service {service.name!r} memory") if service.memory else 0
            hosts = [layer] if service.pinned else infra.layers
            if any(
                (h.cpu is None or service.cpu <= h.cpu) and (h.memory is None or memory <= h.memory_bytes)
                for h in hosts
            ):
                continue
            where = f"the hosts of layer {layer.name!r} (pinned) offer" if service.pinned else "any host offers"
            needs = f"{service.cpu:g} CPU" + (f" and {memory / 2**20:.0f} MiB" if memory else "")
            raise ServicePlacementError(
                f"no placement fits: one copy of service {service.name!r} needs {needs}, more than {where}; "
                "raise the layers' cpu/memory or lower the service's needs"
            )


def place_services(
    infra: Infrastructure, solver: PlacementSolver | None = None, time_limit_s: float = 10.0
) -> PlacementPlan:
    """The services' plan by ``solver`` (default: CP-SAT within ``time_limit_s``), for an
    infrastructure not checked yet: :class:`~engage.deploy.infrastructure.InfrastructureError`
    on what :meth:`~engage.deploy.infrastructure.Infrastructure.validate` refuses, one line on
    what does not fit as :class:`ServicePlacementError`. The launcher, which checked its
    infrastructure in ``setup``, calls :func:`solve_workflow` on :func:`workflow_problem`."""
    infra.validate(known_providers=[infra.provider])
    return solve_workflow(infra, workflow_problem(infra), solver, time_limit_s)


def solve_workflow(
    infra: Infrastructure,
    problem: PlacementProblem,
    solver: PlacementSolver | None = None,
    time_limit_s: float = 10.0,
) -> PlacementPlan:
    """:func:`place_services` for the ``problem`` :func:`workflow_problem` made of ``infra``;
    ``solver`` defaults to the ``cpsat`` solver of the ``engage_placement_solvers`` hook (which
    ``engage place --solver`` chooses from), without its search for a reason when nothing fits:
    :func:`why_not` gives one."""
    from engage.core.plugins import placement_solvers

    solver = solver or placement_solvers()["cpsat"](time_limit_s=time_limit_s, explain=False)
    try:
        return solver.solve(problem)
    except PlacementInfeasible as exc:
        raise ServicePlacementError(why_not(infra, problem) if exc.proved else str(exc)) from None


def why_not(infra: Infrastructure, problem: PlacementProblem) -> str:
    """One line on why no placement fits: totals, then pinned layers, then packing."""
    fix = "add hosts, raise layers' cpu/memory or lower services' needs"
    copies = [(s, s.instances) for s in problem.services.values()]
    nodes = list(problem.nodes.values())
    if all(n.compute is not None for n in nodes):
        need = sum(s.compute * q for s, q in copies)
        have = sum(n.compute for n in nodes)
        if need > have + 1e-9:
            return f"no placement fits: services need {need:g} CPU in total, hosts offer {have:g}; {fix}"
    if all(n.memory is not None for n in nodes):
        need = sum(s.memory * q for s, q in copies)
        have = sum(n.memory for n in nodes)
        if need > have:
            return (
                f"no placement fits: services need {need / 2**20:.0f} MiB in total, hosts offer "
                f"{have / 2**20:.0f} MiB; {fix}"
            )
    for layer in infra.layers:
        pinned = [s for s in layer.services if s.pinned]
        if pinned and layer.cpu is not None:
            need = sum(s.cpu * s.quantity for s in pinned)
            if need > layer.cpu * layer.hosts + 1e-9:
                return (
                    f"no placement fits: services pinned to layer {layer.name!r} need {need:g} CPU, its "
                    f"{layer.hosts} host(s) offer {layer.cpu * layer.hosts:g}; {fix}"
                )
    if _fits_without_rates(problem):
        return (
            "no placement fits: the services' traffic exceeds the rate of constrained links wherever the copies "
            f"fit; raise those rates or lower services' traffic, or {fix}"
        )
    largest = max((s.compute for s, _ in copies), default=0.0)
    return (
        f"no placement fits: the instances cannot be packed onto the hosts (largest needs {largest:g} CPU; "
        f"pinned services stay on their layer); {fix}"
    )


def _fits_without_rates(problem: PlacementProblem) -> bool:
    """Whether the services fit once no link limits their traffic."""
    from engage.deploy.placement.cpsat import CpSatSolver

    links = [lk for lk in problem.links.values()]
    if not any(lk.rate for lk in [*links, *problem.cross_links.values()]):
        return False
    free = PlacementProblem(
        problem.nodes.values(),
        [Link(lk.src, lk.dst, lk.delay) for lk in links],
        (),
        (),
        problem.weights,
        problem.max_utilization,
        (),
        problem.services.values(),
        [Link(lk.src, lk.dst, lk.delay) for lk in problem.cross_links.values()],
    )
    try:
        CpSatSolver(5.0, explain=False).solve(free)
    except PlacementInfeasible:
        return False
    return True
