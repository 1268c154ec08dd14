"""Workflow services (simulators, trainer) onto an infrastructure's hosts with OR-Tools CP-SAT,
within each host's CPU and memory, minimising the traffic that crosses slow links; what the
launcher's ``placement: optimize`` and ``engage place INFRASTRUCTURE`` use.

Services are those listed in the layers of an infrastructure (``quantity`` instances, each
needing ``cpu`` cores and ``memory``; ``traffic: {other service: mbit/s}`` is what one service
sends to another in total). A byte between two layers costs ``1 / rate`` of the constraint
linking them (plus a delay term), nothing within a layer or over an unconstrained link.

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

from dataclasses import dataclass, field
from typing import Any

from engage.deploy.infrastructure import Infrastructure, parse_size

#: CP-SAT works on integers: costs and capacities are scaled by these
_CPU_SCALE = 1000
_COST_SCALE = 1000


class ServicePlacementError(RuntimeError):
    """No placement satisfies the capacities; the message says what does not fit."""


@dataclass
class ServicePlacement:
    """``assignment``: instance (``simulator#2``) -> host; ``slow_traffic_mbit``: traffic that
    crosses constrained links; ``cost``: the objective (traffic weighted by link slowness)."""

    assignment: dict[str, str]
    slow_traffic_mbit: float
    cost: float
    status: str
    per_host: dict[str, list[str]] = field(default_factory=dict)


def _link_cost(infra: Infrastructure, a: str, b: str) -> float:
    """Cost of one mbit/s from layer ``a`` to ``b``: seconds per megabit plus the delay in seconds."""
    if a == b:
        return 0.0
    constraint = infra.constraint_between(a, b)
    if constraint is None:
        return 0.0
    rate = constraint.rate_bps
    return (1e6 / rate if rate else 0.0) + constraint.delay_s


def place_services(infra: Infrastructure, time_limit_s: float = 10.0) -> ServicePlacement:
    """The optimal (or best found within ``time_limit_s``) placement; see the module docstring."""
    from ortools.sat.python import cp_model

    infra.validate(known_providers=[infra.provider])
    hosts = [(layer, name) for layer, name in infra.iter_hosts()]
    instances: list[tuple[str, Any]] = []
    home: list[str] = []
    for layer in infra.layers:
        for service in layer.services:
            for k in range(1, service.quantity + 1):
                instances.append((f"{service.name}#{k}", service))
                home.append(layer.name)
    if not instances:
        raise ServicePlacementError("no services to place: list them under infrastructure.layers[*].services")
    model = cp_model.CpModel()
    x = {(i, h): model.new_bool_var(f"x_{i}_{h}") for i in range(len(instances)) for h in range(len(hosts))}
    for i, (_, service) in enumerate(instances):
        model.add_exactly_one(x[i, h] for h in range(len(hosts)))
        if service.pinned:
            for h, (layer, _) in enumerate(hosts):
                if layer.name != home[i]:
                    model.add(x[i, h] == 0)
    for h, (layer, _name) in enumerate(hosts):
        if layer.cpu is not None:
            model.add(
                sum(round(svc.cpu * _CPU_SCALE) * x[i, h] for i, (_, svc) in enumerate(instances))
                <= round(layer.cpu * _CPU_SCALE)
            )
        if layer.memory is not None:
            need = [parse_size(svc.memory) if svc.memory else 0 for _, svc in instances]  # exact bytes
            model.add(sum(need[i] * x[i, h] for i in range(len(instances))) <= layer.memory_bytes)
    layer_names = [layer.name for layer in infra.layers]
    in_layer = {}
    for i in range(len(instances)):
        for name in layer_names:
            var = model.new_bool_var(f"in_{i}_{name}")
            model.add(var == sum(x[i, h] for h, (layer, _) in enumerate(hosts) if layer.name == name))
            in_layer[i, name] = var
    terms = []
    flows: list[tuple[int, int, float]] = []
    for i, (_, src) in enumerate(instances):
        for target, total in src.traffic.items():
            receivers = [j for j, (_, svc) in enumerate(instances) if svc.name == target]
            if not receivers:
                raise ServicePlacementError(f"service {src.name!r} sends traffic to {target!r}, which is not declared")
            per_pair = float(total) / (src.quantity * len(receivers))
            for j in receivers:
                flows.append((i, j, per_pair))
                for a in layer_names:
                    for b in layer_names:
                        cost = _link_cost(infra, a, b)
                        if cost <= 0:
                            continue
                        both = model.new_bool_var(f"f_{i}_{j}_{a}_{b}")
                        model.add_bool_or([in_layer[i, a].Not(), in_layer[j, b].Not(), both])
                        terms.append(round(per_pair * cost * _COST_SCALE) * both)
    model.minimize(sum(terms) if terms else 0)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = 2
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise ServicePlacementError(
            _why_not(infra, instances, hosts, home, status == cp_model.INFEASIBLE, time_limit_s)
        )
    assignment = {}
    per_host: dict[str, list[str]] = {name: [] for _, name in hosts}
    where = {}
    for i, (label, _) in enumerate(instances):
        for h, (layer, name) in enumerate(hosts):
            if solver.value(x[i, h]):
                assignment[label] = name
                per_host[name].append(label)
                where[i] = layer.name
    slow = sum(t for i, j, t in flows if _link_cost(infra, where[i], where[j]) > 0)
    return ServicePlacement(
        assignment=assignment,
        slow_traffic_mbit=float(slow),
        cost=solver.objective_value / _COST_SCALE,
        status=solver.status_name(status),
        per_host=per_host,
    )


def _why_not(infra: Infrastructure, instances: list, hosts: list, home: list[str], proved: bool, limit: float) -> str:
    """One line on why no placement was found: totals, then pinned layers, then packing."""
    fix = "add hosts, raise layers' cpu/memory or lower services' needs"
    if not proved:
        return f"no placement found within {limit:g} s; raise the time limit or simplify the infrastructure"
    if all(layer.cpu is not None for layer, _ in hosts):
        cpu = sum(svc.cpu for _, svc in instances)
        capacity = sum(layer.cpu for layer, _ in hosts)
        if cpu > capacity + 1e-9:
            return f"no placement fits: services need {cpu:g} CPU in total, hosts offer {capacity:g}; {fix}"
    if all(layer.memory is not None for layer, _ in hosts):
        memory = sum(parse_size(svc.memory) if svc.memory else 0 for _, svc in instances)
        capacity = sum(layer.memory_bytes for layer, _ in hosts)
        if memory > capacity:
            return (
                f"no placement fits: services need {memory / 2**20:.0f} MiB in total, hosts offer "
                f"{capacity / 2**20:.0f} MiB; {fix}"
            )
    for layer in infra.layers:
        pinned = [svc for (_, svc), at in zip(instances, home, strict=True) if svc.pinned and at == layer.name]
        if pinned and layer.cpu is not None:
            cpu = sum(svc.cpu for svc in pinned)
            if cpu > layer.cpu * layer.hosts + 1e-9:
                return (
                    f"no placement fits: services pinned to layer {layer.name!r} need {cpu:g} CPU, its "
                    f"{layer.hosts} host(s) offer {layer.cpu * layer.hosts:g}; {fix}"
                )
    largest = max((svc.cpu for _, svc in instances), default=0.0)
    return (
        f"no placement fits: the instances cannot be packed onto the hosts (largest needs {largest:g} CPU; "
        f"pinned services stay on their layer); {fix}"
    )
