"""Placement problems to and from mappings (a Hydra config node, YAML, JSON): every field checked,
one line naming it on the first error.

Example::

    >>> problem = problem_from_dict({"nodes": [{"name": "cloud"}], "services": [{"name": "trainer"}]})
    >>> problem_from_dict(problem_to_dict(problem)).services == problem.services
    True
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from engage.deploy.infrastructure import InfrastructureError, parse_duration, parse_rate, parse_size
from engage.deploy.placement.problem import (
    Link,
    Measured,
    Model,
    Node,
    PlacementProblem,
    PlacementProblemError,
    Requests,
    SplitPoint,
    Variant,
    Weights,
)
from engage.deploy.placement.services import parse_services


def problem_from_dict(data: Mapping[str, Any]) -> PlacementProblem:
    """The problem of ``data`` (see :meth:`PlacementProblem.from_dict`)."""
    if not isinstance(data, Mapping):
        raise PlacementProblemError(f"a placement problem is a mapping, got {type(data).__name__}")
    known = (
        "nodes",
        "links",
        "models",
        "requests",
        "objective",
        "max_utilization",
        "measured",
        "services",
        "cross_links",
        "interchangeable",
    )
    for key in data:
        if key not in known:
            raise PlacementProblemError(f"unknown key {key!r}; known keys are {', '.join(known)}")
    if not data.get("nodes"):
        raise PlacementProblemError("'nodes' is missing or empty")
    if not data.get("models") and not data.get("services"):
        raise PlacementProblemError("'models' and 'services' are both missing or empty; give what to place")
    nodes = []
    for i, raw in enumerate(data["nodes"]):
        where = f"nodes[{i}]"
        _keys(raw, Node, where)
        compute = raw.get("compute")
        memory = raw.get("memory")
        nodes.append(
            Node(
                name=str(raw["name"]),
                compute=None if compute is None else _number(compute, f"{where}.compute"),
                memory=None if memory is None else _quantity(parse_size, memory, f"{where}.memory"),
                joules_per_gflop=_number(raw.get("joules_per_gflop", 0.0), f"{where}.joules_per_gflop"),
                available=bool(raw.get("available", True)),
            )
        )
    links = [_link(raw, f"links[{i}]") for i, raw in enumerate(data.get("links") or [])]
    entries = data.get("cross_links") or []
    if not isinstance(entries, (list, tuple)):
        raise PlacementProblemError("cross_links: give a list of links ({src, dst, delay, rate})")
    cross_links = [_link(raw, f"cross_links[{i}]") for i, raw in enumerate(entries)]
    models = []
    for i, raw in enumerate(data.get("models") or []):
        where = f"models[{i}]"
        _keys(raw, Model, where, required=("name", "variants"))
        variants = []
        if not raw["variants"]:
            raise PlacementProblemError(f"{where}.variants is empty; give at least one variant")
        for j, var in enumerate(raw["variants"]):
            vwhere = f"{where}.variants[{j}]"
            _keys(var, Variant, vwhere, required=("name", "size", "accuracy", "gflop"))
            splits = []
            for k, sp in enumerate(var.get("splits") or []):
                swhere = f"{vwhere}.splits[{k}]"
                _keys(sp, SplitPoint, swhere, required=("name", "compute", "tensor"))
                size = sp.get("size")
                splits.append(
                    SplitPoint(
                        name=str(sp["name"]),
                        compute=_number(sp["compute"], f"{swhere}.compute", high=1.0),
                        tensor=_quantity(parse_size, sp["tensor"], f"{swhere}.tensor"),
                        size=None if size is None else _number(size, f"{swhere}.size", high=1.0),
                    )
                )
            variants.append(
                Variant(
                    name=str(var["name"]),
                    size=_quantity(parse_size, var["size"], f"{vwhere}.size"),
                    accuracy=_number(var["accuracy"], f"{vwhere}.accuracy", high=1.0, strict=True),
                    gflop=_number(var["gflop"], f"{vwhere}.gflop"),
                    splits=tuple(splits),
                )
            )
        models.append(
            Model(
                name=str(raw["name"]),
                variants=tuple(variants),
                input=_quantity(parse_size, raw.get("input", 0), f"{where}.input"),
            )
        )
    requests = []
    for i, raw in enumerate(data.get("requests") or []):
        where = f"requests[{i}]"
        _keys(raw, Requests, where, required=("node", "model", "rate"))
        requests.append(Requests(str(raw["node"]), str(raw["model"]), _number(raw["rate"], f"{where}.rate")))
    objective = data.get("objective") or {}
    _keys(objective, Weights, "objective", required=())
    weights = Weights(**{k: _number(v, f"objective.{k}") for k, v in objective.items()})
    max_utilization = _number(data.get("max_utilization", 0.8), "max_utilization", high=1.0, strict=True)
    measured = []
    entries = data.get("measured") or []
    if not isinstance(entries, (list, tuple)) or isinstance(entries, str):
        raise PlacementProblemError("measured: give a list of entries (node, model, variant, seconds, ...)")
    for i, raw in enumerate(entries):
        where = f"measured[{i}]"
        _keys(raw, Measured, where, required=("node", "model", "variant", "seconds"))
        measured.append(
            Measured(
                node=str(raw["node"]),
                model=str(raw["model"]),
                variant=str(raw["variant"]),
                seconds=_number(raw["seconds"], f"{where}.seconds"),
                part=str(raw.get("part", "full")),
                split=str(raw.get("split", "")),
            )
        )
    services = parse_services(data.get("services"))
    groups = data.get("interchangeable") or []
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, (list, tuple)) for g in groups):
        raise PlacementProblemError("interchangeable: give a list of groups of node names")
    return PlacementProblem(
        nodes, links, models, requests, weights, max_utilization, measured, services, cross_links, groups
    )


def problem_to_dict(problem: PlacementProblem) -> dict[str, Any]:
    """A mapping :func:`problem_from_dict` reads back."""
    return {
        "nodes": [dataclasses.asdict(n) for n in problem.nodes.values()],
        "links": [
            {"src": lk.src, "dst": lk.dst, "delay": f"{lk.delay!r}s", "rate": lk.rate} for lk in problem.links.values()
        ],
        "models": [
            {
                "name": m.name,
                "input": m.input,
                "variants": [
                    {**dataclasses.asdict(v), "splits": [dataclasses.asdict(s) for s in v.splits]} for v in m.variants
                ],
            }
            for m in problem.models.values()
        ],
        "requests": [dataclasses.asdict(r) for r in problem.requests],
        "objective": dataclasses.asdict(problem.weights),
        "max_utilization": problem.max_utilization,
        "measured": [dataclasses.asdict(m) for m in problem.measured],
        "services": [
            {**dataclasses.asdict(s), "nodes": list(s.nodes), "traffic": dict(s.traffic)}
            for s in problem.services.values()
        ],
        "cross_links": [
            {"src": lk.src, "dst": lk.dst, "delay": f"{lk.delay!r}s", "rate": lk.rate}
            for lk in problem.cross_links.values()
        ],
        "interchangeable": [list(group) for group in problem.interchangeable],
    }


def _quantity(parse: Any, value: Any, where: str) -> Any:
    try:
        return parse(value, where)
    except InfrastructureError as exc:
        raise PlacementProblemError(str(exc)) from None


def _number(value: Any, where: str, *, low: float = 0.0, high: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PlacementProblemError(f"{where}: {value!r} is not a number")
    if value < low or (strict and value == low):
        sign = ">" if strict else ">="
        raise PlacementProblemError(f"{where}: {value!r} is out of range; use a number {sign} {low:g}")
    if high is not None and value > high:
        raise PlacementProblemError(f"{where}: {value!r} is out of range; use a number <= {high:g}")
    return float(value)


def _keys(data: Any, cls: type, where: str, required: Iterable[str] = ("name",)) -> None:
    if not isinstance(data, Mapping):
        raise PlacementProblemError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            raise PlacementProblemError(f"{where}: unknown key {key!r}; known keys are {', '.join(known)}")
    for key in required:
        if key not in data:
            raise PlacementProblemError(f"{where}: {key!r} is missing")


def _link(raw: Any, where: str) -> Link:
    _keys(raw, Link, where, required=("src", "dst"))
    rate = raw.get("rate")
    return Link(
        src=str(raw["src"]),
        dst=str(raw["dst"]),
        delay=_quantity(parse_duration, raw.get("delay", 0), f"{where}.delay"),
        rate=None if rate is None else _quantity(parse_rate, rate, f"{where}.rate"),
    )
