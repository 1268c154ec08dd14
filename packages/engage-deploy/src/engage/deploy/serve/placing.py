"""Where a sweep's inference replicas run: the launcher's serving options and its infrastructure
as an inference-delivery-network placement problem, solved by the placement engine.

* nodes: the infrastructure's hosts; each with its layer's memory and ``cpu x gflops_per_cpu``
  GFLOP/s (``cpu``: the machine's cores when the layer sets no limit); the root is the first
  host of the layer every path of ``tree`` ends at (the trainer's);
* links: each host to the first host of its layer's next layer in ``tree``, with the delay and
  rate of the infrastructure's constraint between the two layers. A path of several links
  crosses one emulated constraint (the ``netns`` provider shapes layer pairs, not paths), so the
  infrastructure must give every layer pair of a path the sum of its links' delays: anything
  else is refused, naming the pair and the delay to declare;
* one model (``model``, one variant ``served``: ``model_size`` bytes, ``gflop`` per request,
  ``input`` bytes);
* requests: ``sources[layer]`` per second from each host of that layer.

The solver's plan gives the replicas (every host holding the model, and the root's when a
route ends there or ``compare_root`` asks for it) and one route per source; with
``compare_root`` each source also gets a route to the root's replica, the placement to compare
with. Every route keeps its predicted latency.

Example::

    >>> from engage.deploy.infrastructure import Infrastructure
    >>> from engage.deploy.options import SERVING, ServingOptions
    >>> infra = Infrastructure.from_dict({"provider": "local", "layers": [
    ...     {"name": "cloud", "cpu": 1}, {"name": "fog", "cpu": 1, "memory": "2GiB"},
    ...     {"name": "edge", "cpu": 1, "memory": "512MiB"}],
    ...     "network": [{"src": "edge", "dst": "fog", "delay": "10ms"},
    ...                 {"src": "fog", "dst": "cloud", "delay": "15ms"},
    ...                 {"src": "edge", "dst": "cloud", "delay": "25ms"}]})
    >>> options = ServingOptions(sources={"edge": 5.0}, tree={"edge": "fog", "fog": "cloud"})
    >>> plan = plan_serving(options, infra, {"cloud-1": "10.0.1.2", "fog-1": "10.0.2.2", "edge-1": "10.0.3.2"},
    ...                     api_key_file="serve.key")
    >>> [(r.label, r.chosen, round(r.predicted_s * 1000, 2)) for r in plan.routes]
    [('edge-1>fog-1', True, 20.05), ('edge-1>cloud-1', False, 50.05)]
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from itertools import pairwise
from typing import Any

from engage.deploy.infrastructure import Infrastructure
from engage.deploy.options import SERVING, ServingOptions
from engage.deploy.serving import RouteRecord, ServingPlan, requests_at

#: each served model's one variant in the placement problem
VARIANT = "served"
#: how far (seconds) a layer pair's declared delay may be from its path's sum
_DELAY_TOLERANCE_S = 1e-4


class ServingPlanError(ValueError):
    """The serving options do not fit the infrastructure; one line naming the key and the fix."""


def root_layer(options: ServingOptions, infra: Infrastructure) -> str:
    """The layer every path of ``options.tree`` ends at; :class:`ServingPlanError` otherwise."""
    where = SERVING
    layers = [layer.name for layer in infra.layers]
    for child, parent in options.tree.items():
        for key, name in ((f"tree.{child}", child), (f"tree.{child}", parent)):
            if name not in layers:
                raise ServingPlanError(f"{where}.{key}: no layer named {name!r}; layers are {', '.join(layers)}")
    roots = set()
    for layer in [*options.sources, *options.tree]:
        seen = [layer]
        while seen[-1] in options.tree:
            seen.append(options.tree[seen[-1]])
            if seen[-1] in seen[:-1]:
                raise ServingPlanError(f"{where}.tree loops ({' -> '.join(seen)}); each path must end at one layer")
        roots.add(seen[-1])
    for layer in options.sources:
        if layer not in layers:
            raise ServingPlanError(f"{where}.sources.{layer}: no layer named {layer!r}; layers are {', '.join(layers)}")
    if len(roots) != 1:
        raise ServingPlanError(f"{where}.tree ends at {', '.join(sorted(roots))}; every path must end at one layer")
    root = roots.pop()
    if root in options.sources:
        raise ServingPlanError(
            f"{where}.sources.{root}: is the trainer's layer, the root of every path; send requests from the others"
        )
    if infra.layer(root).hosts != 1:
        raise ServingPlanError(
            f"{where}.tree ends at {root}, which has {infra.layer(root).hosts} hosts; serving needs one trainer's host "
            "at the root of the paths"
        )
    return root


def _path(options: ServingOptions, layer: str) -> list[str]:
    path = [layer]
    while path[-1] in options.tree:
        path.append(options.tree[path[-1]])
    return path


def _two_way(constraint: Any, where: str) -> None:
    if constraint is not None and not constraint.symmetric:
        raise ServingPlanError(
            f"{where}.tree: the constraint between {constraint.src} and {constraint.dst} is one-way "
            "(symmetric: false); requests and answers cross it both ways: make it symmetric"
        )


def serving_problem(
    options: ServingOptions, infra: Infrastructure, rates: Mapping[tuple[str, str], float] | None = None
) -> dict[str, Any]:
    """The placement problem of ``options`` on ``infra`` (``PlacementProblem.from_dict`` form)
    with ``rates`` (``(source host, model) -> requests per second``; default
    :func:`initial_rates`); :class:`ServingPlanError` when they do not fit together."""
    from engage.deploy.infrastructure import parse_size

    where = SERVING
    root = root_layer(options, infra)
    on_paths = {layer for source in options.sources for layer in _path(options, source)} | set(options.tree)
    first = {layer.name: layer.host_names()[0] for layer in infra.layers if layer.hosts}
    nodes, links = [], []
    for layer, host in infra.iter_hosts():
        if layer.name not in on_paths:
            continue
        node: dict[str, Any] = {"name": host}
        # a host without a CPU limit may use every core of the machine
        node["compute"] = (layer.cpu if layer.cpu is not None else os.cpu_count() or 1) * options.gflops_per_cpu
        if layer.memory is not None and layer.name != root:
            node["memory"] = layer.memory_bytes
        nodes.append(node)
        if layer.name == root:
            continue
        parent = options.tree[layer.name]
        constraint = infra.constraint_between(layer.name, parent)
        link: dict[str, Any] = {"src": host, "dst": first[parent]}
        if constraint is not None:
            link["delay"] = f"{constraint.delay_s!r}s"
            if constraint.rate_bps:
                link["rate"] = f"{constraint.rate_bps!r}bit"
        links.append(link)
    # one emulated constraint per layer pair: each pair of a path must carry the path's delay
    for layer in on_paths:
        path, total = _path(options, layer), 0.0
        for child, parent in pairwise(path):
            constraint = infra.constraint_between(child, parent)
            _two_way(constraint, where)
            total += constraint.delay_s if constraint is not None else 0.0
            if parent == path[1]:
                continue
            declared = infra.constraint_between(layer, parent)
            _two_way(declared, where)
            have = declared.delay_s if declared is not None else 0.0
            if abs(have - total) > _DELAY_TOLERANCE_S:
                crossed = " -> ".join(path[: path.index(parent) + 1])
                raise ServingPlanError(
                    f"{where}.tree: requests from {layer} to {parent} cross {crossed}, "
                    f"{total * 1000:g} ms one way, but infrastructure.network gives {layer} -> {parent} "
                    f"{have * 1000:g} ms; declare {{src: {layer}, dst: {parent}, delay: {total * 1000:g}ms}}"
                )
    models = []
    try:
        input_bytes = parse_size(options.input)
    except Exception as exc:
        raise ServingPlanError(f"{where}.input: {exc}") from None
    for name, entry in options.served_models().items():
        try:
            size = parse_size(entry["model_size"])
        except Exception as exc:
            key = "model_size" if entry["checkpoint"] is None else f"models.{name}.model_size"
            raise ServingPlanError(f"{where}.{key}: {exc}") from None
        variant = {"name": VARIANT, "size": size, "accuracy": 1.0, "gflop": entry["gflop"]}
        models.append({"name": name, "input": input_bytes, "variants": [variant]})
    if rates is None:
        rates = initial_rates(options, infra)
    return {
        "nodes": nodes,
        "links": links,
        "models": models,
        "requests": requests_at(rates),
        "objective": {"latency": 1.0, "inaccuracy": 0.0},
    }


def initial_rates(options: ServingOptions, infra: Infrastructure) -> dict[tuple[str, str], float]:
    """``(source host, model) -> requests per second`` the first plan is made for: the rate at
    the start when the placement is solved again every slot (``slot_s > 0``), else the
    schedule's peak (a placement kept all along must hold its busiest time)."""
    return {
        (host, model): schedule.rate_at(0.0) if options.slot_s > 0 else schedule.peak
        for (layer, model), schedule in options.demand().items()
        for host in infra.layer(layer).host_names()
    }


def predicted_latencies(problem: Any) -> dict[tuple[str, str, str], float]:
    """(source, model, serving node) -> seconds per request, for every option of every request class."""
    return {(c.source, c.model, o.node): o.latency for c in problem.classes for o in c.options if o.split is None}


def plan_serving(
    options: ServingOptions,
    infra: Infrastructure,
    addresses: Mapping[str, str],
    api_key_file: str,
    time_limit_s: float = 10.0,
) -> ServingPlan:
    """Solve the serving problem with ``options.solver``; the replicas at ``addresses`` (host ->
    address) and the routes. :class:`ServingPlanError` (one line) when it cannot be made."""
    from engage.core.plugins import placement_solvers
    from engage.deploy.placement import PlacementInfeasible, PlacementProblem, PlacementProblemError

    data = serving_problem(options, infra)
    solvers = placement_solvers()
    if options.solver not in solvers:
        raise ServingPlanError(f"{SERVING}.solver is {options.solver!r}; solvers are {', '.join(sorted(solvers))}")
    try:
        problem = PlacementProblem.from_dict(data)
        plan = solvers[options.solver](time_limit_s=time_limit_s).solve(problem)
    except (PlacementProblemError, PlacementInfeasible) as exc:
        raise ServingPlanError(f"{SERVING}: {exc}") from None
    hosts = {host: [layer.name, addresses[host]] for layer, host in infra.iter_hosts() if host in problem.nodes}
    base = ServingPlan(
        replicas=(),
        routes=(),
        api_key_file=str(api_key_file),
        every_n_steps=options.every_n_steps,
        problem=data,
        solver=options.solver,
        seed=options.seed,
        drain_s=options.drain_s,
        placement={},
        max_failed=options.max_failed,
        models={name: entry["checkpoint"] for name, entry in options.served_models().items()},
        schedules=_schedules(options),
        hosts=hosts,
        port=options.port,
        slot_s=options.slot_s,
        max_moves=options.max_moves,
        compare_root=options.compared,
    )
    if options.slot_s > 0:
        # re-placed slot by slot from measured rates: the busiest each schedule gets must be servable
        try:
            solvers[options.solver](time_limit_s=time_limit_s).solve(PlacementProblem.from_dict(base.peak_problem()))
        except PlacementInfeasible as exc:
            raise ServingPlanError(f"{SERVING}.sources: at the schedules' peak rates, {exc}") from None
    return placed(base, plan)


def _schedules(options: ServingOptions) -> dict[str, dict[str, list[list[float]]]]:
    schedules: dict[str, dict[str, list[list[float]]]] = {}
    for (layer, model), schedule in options.demand().items():
        schedules.setdefault(layer, {})[model] = schedule.to_list()
    return schedules


def placed(base: ServingPlan, solved: Any, following: Mapping[tuple[str, str], str] | None = None) -> ServingPlan:
    """``base`` with the replicas and routes of ``solved`` (a
    :class:`~engage.deploy.placement.PlacementPlan` of ``base``'s problem, at any rates): one
    replica for each copy the plan holds, and the root's replica of a model where a route ends
    there; each source's route for each model it sends (a model it sends at no rate now keeps
    the node it is ``following``, ``(source, model) -> node``, where that node still holds the
    model, else goes to the root, which holds every model), and with ``compare_root`` (a fixed
    placement) one to the root's replica as well."""
    from engage.deploy.placement import PlacementProblem

    peak = PlacementProblem.from_dict(base.peak_problem())
    latency = predicted_latencies(peak)
    root = peak.root
    chosen = {(route.source, route.model): (route.node, route.rate) for route in solved.routes}
    held = {(node, label.split("/", 1)[0]) for node, labels in solved.placement.items() for label in labels}
    routes: list[RouteRecord] = []
    following = following or {}
    for source, models in base.source_schedules().items():
        for model in models:
            kept = following.get((source, model))
            idle = (kept, 0.0) if kept is not None and (kept == root or (kept, model) in held) else (root, 0.0)
            node, rate = chosen.get((source, model), idle)
            held.add((node, model))
            replica = base.replica_at(node, model).name
            routes.append(RouteRecord(source, replica, rate, True, latency[source, model, node], model))
            if base.compare_root and node != root:
                held.add((root, model))
                compared = base.replica_at(root, model).name
                routes.append(RouteRecord(source, compared, rate, False, latency[source, model, root], model))
    order = list(peak.nodes)
    replicas = tuple(
        base.replica_at(node, model)
        for node, model in sorted(held, key=lambda nm: (order.index(nm[0]), list(base.models).index(nm[1])))
    )
    return replace(
        base,
        replicas=replicas,
        routes=tuple(routes),
        placement={node: list(items) for node, items in solved.placement.items()},
    )
