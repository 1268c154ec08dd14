"""The placement problem of an inference delivery network: nodes on a tree towards the cloud,
models with variants and split points, and inference requests arriving at the nodes.

Routing follows Si Salem et al., "Toward Inference Delivery Networks" (IEEE/ACM ToN 2024): a
request travels the fixed path from the node where it arrives towards the cloud (the root of the
tree, which holds every model) and is served by one node of that path hosting a variant of its
model, or split computing (Matsubara et al.'s survey) runs the head of a variant up to a split
point on one node and the tail on the next node of the path, sending the intermediate tensor
instead of the input.

Per request, served by variant ``v`` at path position ``i``:

* latency: the round trip (2 x one-way ``delay``) of every link crossed, plus the input's
  transfer time on each, plus ``gflop / compute`` of the serving node(s); a split adds the
  tensor's transfer on the link between head and tail;
* inaccuracy: ``1 - accuracy``;
* energy: ``gflop x joules_per_gflop`` of the node(s) that compute.

Measured figures win over nominal ones where they exist: a ``measured`` entry gives the seconds
one request's whole variant, head or tail takes on a node (profiled there, for example by
:func:`engage.deploy.serve.split.profile`), and replaces ``gflop / compute`` in that option's
latency; give links their measured one-way delay and goodput as ``delay`` and ``rate``
(:func:`engage.deploy.serve.split.link_figures` turns a link measurement into them). Compute capacity stays in GFLOP/s.

Capacities: a node's placed items fit its ``memory``; the compute it serves stays under
``max_utilization x compute`` (no queueing model: the cap keeps queues short); the traffic on a
link fits its ``rate``. The root holds every variant (its ``memory``, if given, is the largest
variant it can load, not a sum); without ``compute`` it serves in no time and without limit. The
objective is the request-weighted mean of
``latency x w_latency + inaccuracy x w_inaccuracy + energy x w_energy``.

Services (a trainer, simulators: workloads placed whole, with traffic between them) share the
nodes, links and capacities with the models; see :mod:`engage.deploy.placement.services`.

Units follow the infrastructure descriptions: ``delay`` is one-way (``"10ms"``), ``rate`` in
``tc`` units (``"100mbit"``), sizes binary or decimal (``"2GiB"``, ``"150KB"``); ``compute`` is in
GFLOP/s and ``gflop`` per request.

Example::

    >>> problem = PlacementProblem.from_dict({
    ...     "nodes": [{"name": "cloud"}, {"name": "edge", "compute": 100, "memory": "1GiB"}],
    ...     "links": [{"src": "edge", "dst": "cloud", "delay": "20ms", "rate": "100mbit"}],
    ...     "models": [{"name": "detector", "input": "100KB", "variants": [
    ...         {"name": "small", "size": "50MB", "accuracy": 0.7, "gflop": 2}]}],
    ...     "requests": [{"node": "edge", "model": "detector", "rate": 10}]})
    >>> problem.root, [c.path for c in problem.classes]
    ('cloud', [('edge', 'cloud')])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from engage.deploy.placement.services import Flow, Service, flows, validate_interchangeable, validate_services


class PlacementProblemError(ValueError):
    """A placement problem is invalid; the message is one line naming the field and the fix."""


def _unique(names: list[str], where: str, key: str, fix: str) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise PlacementProblemError(f"{where}[{i}].{key}: {name!r} again (as in {where}[{seen[name]}]); {fix}")
        seen[name] = i


@dataclass(frozen=True)
class Node:
    """A machine: ``compute`` GFLOP/s (``None``: the root only, serving in no time and without
    limit), ``memory`` bytes for models (``None``: unlimited; on the root, the largest variant),
    ``joules_per_gflop`` of its accelerator, and whether it is ``available`` (an unavailable node
    serves nothing but still forwards requests)."""

    name: str
    compute: float | None = None
    memory: int | None = None
    joules_per_gflop: float = 0.0
    available: bool = True


@dataclass(frozen=True)
class Link:
    """The link from ``src`` to its parent ``dst`` (one step towards the cloud): one-way ``delay``
    in seconds and ``rate`` in bits per second (``None``: not limited)."""

    src: str
    dst: str
    delay: float = 0.0
    rate: float | None = None


@dataclass(frozen=True)
class SplitPoint:
    """A cut after a layer: the head holds ``compute`` (a fraction) of the variant's GFLOP and
    ``size`` (a fraction, default the same) of its bytes; ``tensor`` bytes cross to the tail."""

    name: str
    compute: float
    tensor: int
    size: float | None = None

    @property
    def size_fraction(self) -> float:
        return self.compute if self.size is None else self.size


@dataclass(frozen=True)
class Variant:
    """One trained version of a model: ``size`` bytes, ``accuracy`` in (0, 1], ``gflop`` per request."""

    name: str
    size: int
    accuracy: float
    gflop: float
    splits: tuple[SplitPoint, ...] = ()


@dataclass(frozen=True)
class Model:
    """A task (``detector``) with its variants; ``input`` bytes travel with each request."""

    name: str
    variants: tuple[Variant, ...]
    input: int = 0


@dataclass(frozen=True)
class Requests:
    """``rate`` requests per second for ``model`` arriving at ``node``."""

    node: str
    model: str
    rate: float


@dataclass(frozen=True)
class Measured:
    """``seconds`` one request of ``model/variant`` takes on ``node``, measured there: the whole
    variant (``part="full"``), or its ``head`` or ``tail`` at split point ``split``."""

    node: str
    model: str
    variant: str
    seconds: float
    part: str = "full"
    split: str = ""

    @property
    def item(self) -> Item:
        return (self.model, self.variant, self.part, self.split)


@dataclass(frozen=True)
class Weights:
    """Objective weights: per second of latency, per unit of inaccuracy (1 - accuracy), per joule,
    and per unit of the services' traffic cost (Mbit/s x (seconds per Mbit + delay) of each link)."""

    latency: float = 1.0
    inaccuracy: float = 1.0
    energy: float = 0.0
    traffic: float = 1.0

    def cost(self, latency: float, inaccuracy: float, energy: float) -> float:
        return self.latency * latency + self.inaccuracy * inaccuracy + self.energy * energy


# An item stored on a node: the whole variant, or the head or tail of a variant cut at a split point.
Item = tuple[str, str, str, str]  # (model, variant, part: "full" | "head" | "tail", split name or "")


def item_label(item: Item) -> str:
    """``detector/large``, ``detector/large[:block3]`` (head), ``detector/large[block3:]`` (tail)."""
    model, variant, part, split = item
    if part == "full":
        return f"{model}/{variant}"
    return f"{model}/{variant}[:{split}]" if part == "head" else f"{model}/{variant}[{split}:]"


@dataclass(frozen=True)
class Option:
    """One way to serve a request class: variant ``variant`` at path position ``position``, or its
    head there and its tail at the next position when ``split`` is set. Figures are per request."""

    position: int
    node: str
    variant: str
    split: str | None
    tail_node: str | None
    latency: float
    accuracy: float
    energy: float
    #: items that must be on which (non-root) node: ((node, item), ...)
    needs: tuple[tuple[str, Item], ...]
    #: GFLOP/s per request/s on each node: ((node, gflop), ...)
    compute: tuple[tuple[str, float], ...]
    #: bits per request on each link, by its ``src``: ((src, bits), ...)
    traffic: tuple[tuple[str, float], ...]


@dataclass
class RequestClass:
    """Requests for one model arriving at one node, with every way to serve them."""

    index: int
    source: str
    model: str
    rate: float
    path: tuple[str, ...]
    options: list[Option] = field(default_factory=list)


class PlacementProblem:
    """Nodes, the links of their tree, models, request rates and services; see the module docstring.

    Build it from a mapping (a Hydra config or YAML) with :meth:`from_dict`, or from the
    dataclasses directly. It is validated on construction.
    """

    def __init__(
        self,
        nodes: Iterable[Node],
        links: Iterable[Link],
        models: Iterable[Model],
        requests: Iterable[Requests],
        weights: Weights | None = None,
        max_utilization: float = 0.8,
        measured: Iterable[Measured] = (),
        services: Iterable[Service] = (),
        cross_links: Iterable[Link] = (),
        interchangeable: Iterable[Iterable[str]] = (),
    ) -> None:
        nodes, links, models, requests = list(nodes), list(links), list(models), list(requests)
        measured, services, cross_links = list(measured), list(services), list(cross_links)
        _unique([n.name for n in nodes], "nodes", "name", "give every node its own name")
        _unique([lk.src for lk in links], "links", "src", "a node has one link towards the cloud")
        _unique([m.name for m in models], "models", "name", "give every model its own name")
        _unique([f"{r.node}/{r.model}" for r in requests], "requests", "node/model", "give one rate per pair")
        _unique([s.name for s in services], "services", "name", "give every service its own name")
        _unique([cross_key(lk.src, lk.dst) for lk in cross_links], "cross_links", "src/dst", "give one link per pair")
        self.nodes = {node.name: node for node in nodes}
        self.links = {link.src: link for link in links}
        self.models = {model.name: model for model in models}
        self.services = {service.name: service for service in services}
        self.cross_links = {cross_key(lk.src, lk.dst): lk for lk in cross_links}
        self.weights = weights or Weights()
        self.max_utilization = max_utilization
        self.requests = requests
        self._sizes: dict[Item, int] = {}
        self.root = self._validate()
        self.requests = [r for r in requests if r.rate > 0]
        self.measured = tuple(measured)
        self._measured = self._validate_measured(self.measured)
        self._validate_cross_links()
        validate_services(self)
        self.interchangeable = validate_interchangeable(self, [tuple(group) for group in interchangeable])

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlacementProblem:
        """From ``nodes``, ``links``, ``models``, ``requests``, ``objective``, ``max_utilization``,
        ``measured``, ``services``, ``cross_links`` and ``interchangeable``
        (:func:`~engage.deploy.placement.loading.problem_from_dict`)."""
        from engage.deploy.placement.loading import problem_from_dict

        return problem_from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """A mapping :meth:`from_dict` reads back (sizes in bytes, delays in seconds as ``"…s"``)."""
        from engage.deploy.placement.loading import problem_to_dict

        return problem_to_dict(self)

    def with_changes(
        self, *, rates: Mapping[tuple[str, str], float] | None = None, unavailable: Iterable[str] = ()
    ) -> PlacementProblem:
        """A copy with new request rates (``{(node, model): rate}``; 0 removes) and nodes taken out
        of service (they forward requests but serve none), for re-placement."""
        down = set(unavailable)
        for name in down:
            if name not in self.nodes:
                raise PlacementProblemError(f"unavailable: {name!r} is not a node; nodes are {', '.join(self.nodes)}")
        requests = {(r.node, r.model): r.rate for r in self.requests}
        requests.update(rates or {})
        return PlacementProblem(
            [dataclasses.replace(n, available=n.available and n.name not in down) for n in self.nodes.values()],
            self.links.values(),
            self.models.values(),
            [Requests(node, model, rate) for (node, model), rate in requests.items()],
            self.weights,
            self.max_utilization,
            self.measured,
            self.services.values(),
            self.cross_links.values(),
            # a node taken out of service is no longer like the others of its group
            [kept for group in self.interchangeable if len(kept := [n for n in group if n not in down]) > 1],
        )

    # ------------------------------------------------------------------ validation

    def _validate(self) -> str:
        names = ", ".join(self.nodes)
        if len(self.nodes) == 0:
            raise PlacementProblemError("nodes is empty; give at least the cloud node")
        for link in self.links.values():
            for end in ("src", "dst"):
                if getattr(link, end) not in self.nodes:
                    raise PlacementProblemError(
                        f"links: {end} {getattr(link, end)!r} of {link.src} -> {link.dst} is not a node; "
                        f"nodes are {names}"
                    )
            if link.rate is not None and link.rate <= 0:
                raise PlacementProblemError(f"links: {link.src} -> {link.dst} has rate 0; give a positive rate")
        roots = [n for n in self.nodes if n not in self.links]
        if len(roots) != 1:
            raise PlacementProblemError(
                f"the nodes form {len(roots)} trees (roots: {', '.join(roots) or 'none, a cycle'}); "
                "give every node but the cloud one link towards the cloud"
            )
        root = roots[0]
        for name in self.nodes:
            seen = {name}
            at = name
            while at != root:
                at = self.links[at].dst
                if at in seen:
                    raise PlacementProblemError(f"links: the path from {name!r} towards the cloud loops at {at!r}")
                seen.add(at)
        for i, node in enumerate(self.nodes.values()):
            if node.name != root and node.compute is None and self.models:
                raise PlacementProblemError(
                    f"nodes[{i}].compute is missing for {node.name!r}; give its GFLOP/s (only the cloud may omit "
                    "it, or every node of a problem without models)"
                )
        if not self.nodes[root].available:
            raise PlacementProblemError(f"nodes: the cloud {root!r} holds every model and cannot be unavailable")
        for model in self.models.values():
            variant_names = [v.name for v in model.variants]
            if len(set(variant_names)) != len(variant_names):
                raise PlacementProblemError(f"models: {model.name!r} lists a variant name twice ({variant_names})")
            for variant in model.variants:
                for split in variant.splits:
                    if not 0 < split.compute < 1:
                        raise PlacementProblemError(
                            f"models: {model.name}/{variant.name} split {split.name!r} has compute "
                            f"{split.compute}; a split point cuts inside the model (0 < compute < 1)"
                        )
                    if not 0 <= split.size_fraction <= 1:
                        raise PlacementProblemError(
                            f"models: {model.name}/{variant.name} split {split.name!r} has size "
                            f"{split.size_fraction}; give the head's share of the bytes in [0, 1]"
                        )
        cloud = self.nodes[root]
        if cloud.memory is not None:
            for model in self.models.values():
                if all(v.size > cloud.memory for v in model.variants):
                    smallest = min(v.size for v in model.variants)
                    raise PlacementProblemError(
                        f"models: {model.name!r} fits nowhere: its smallest variant ({smallest / 2**20:.0f} MiB) "
                        f"exceeds the cloud's memory ({cloud.memory / 2**20:.0f} MiB), the largest variant it can "
                        "load; raise the cloud's memory or leave it unset"
                    )
        for i, req in enumerate(self.requests):
            if req.node not in self.nodes:
                raise PlacementProblemError(f"requests[{i}].node: {req.node!r} is not a node; nodes are {names}")
            if req.model not in self.models:
                known = ", ".join(self.models)
                raise PlacementProblemError(f"requests[{i}].model: {req.model!r} is not a model; models are {known}")
        return root

    def _validate_measured(self, measured: tuple[Measured, ...]) -> dict[tuple[str, Item], float]:
        """``{(node, item): seconds}``, each entry checked against the nodes and models."""
        figures: dict[tuple[str, Item], float] = {}
        for i, m in enumerate(measured):
            where = f"measured[{i}]"
            if m.node not in self.nodes:
                raise PlacementProblemError(
                    f"{where}.node: {m.node!r} is not a node; nodes are {', '.join(self.nodes)}"
                )
            model = self.models.get(m.model)
            if model is None:
                raise PlacementProblemError(
                    f"{where}.model: {m.model!r} is not a model; models are {', '.join(self.models)}"
                )
            variant = next((v for v in model.variants if v.name == m.variant), None)
            if variant is None:
                names = ", ".join(v.name for v in model.variants)
                raise PlacementProblemError(
                    f"{where}.variant: {m.variant!r} is not a variant of {m.model!r}; it has {names}"
                )
            if m.part not in ("full", "head", "tail"):
                raise PlacementProblemError(f"{where}.part: {m.part!r}; use full, head or tail")
            if m.part == "full" and m.split:
                raise PlacementProblemError(
                    f"{where}.split: a whole variant has no split point; drop split or set part"
                )
            if m.part != "full" and m.split not in {sp.name for sp in variant.splits}:
                names = ", ".join(sp.name for sp in variant.splits) or "none"
                raise PlacementProblemError(
                    f"{where}.split: {m.split!r} is not a split point of {m.model}/{m.variant}; it has {names}"
                )
            if not math.isfinite(m.seconds) or m.seconds < 0:
                raise PlacementProblemError(f"{where}.seconds: {m.seconds!r}; use the measured seconds (>= 0)")
            key = (m.node, m.item)
            if key in figures:
                raise PlacementProblemError(f"{where}: {m.node} {item_label(m.item)} measured twice; give one figure")
            figures[key] = m.seconds
        return figures

    def _validate_cross_links(self) -> None:
        for i, link in enumerate(self.cross_links.values()):
            for end in ("src", "dst"):
                if getattr(link, end) not in self.nodes:
                    raise PlacementProblemError(
                        f"cross_links[{i}].{end}: {getattr(link, end)!r} is not a node; "
                        f"nodes are {', '.join(self.nodes)}"
                    )
            if link.src == link.dst:
                raise PlacementProblemError(f"cross_links[{i}]: links {link.src!r} to itself; give two nodes")
            tree = self.links.get(link.src)
            back = self.links.get(link.dst)
            if (tree is not None and tree.dst == link.dst) or (back is not None and back.dst == link.src):
                raise PlacementProblemError(
                    f"cross_links[{i}]: {link.src} and {link.dst} are linked by the tree already; drop this link"
                )
            if link.rate is not None and link.rate <= 0:
                raise PlacementProblemError(
                    f"cross_links[{i}]: {link.src} - {link.dst} has rate 0; give a positive rate"
                )

    # ------------------------------------------------------------------ structure

    def path(self, node: str) -> tuple[str, ...]:
        """The nodes from ``node`` to the cloud, both included."""
        path = [node]
        while path[-1] != self.root:
            path.append(self.links[path[-1]].dst)
        return tuple(path)

    def depth(self, node: str) -> int:
        return len(self.path(node)) - 1

    @cached_property
    def classes(self) -> list[RequestClass]:
        """One class per (node, model) with a positive rate, with its serving options."""
        classes = []
        for index, req in enumerate(self.requests):
            cls = RequestClass(index, req.node, req.model, req.rate, self.path(req.node))
            cls.options = self._options(cls)
            classes.append(cls)
        return classes

    @cached_property
    def flows(self) -> list[Flow]:
        """The services' traffic per pair of copies."""
        return flows(self.services.values())

    def service_nodes(self, name: str) -> tuple[str, ...]:
        """The available nodes where one copy of service ``name`` fits, in the problem's order."""
        service = self.services[name]
        allowed = service.nodes or tuple(self.nodes)
        return tuple(
            n
            for n in allowed
            if self.nodes[n].available
            and (self.nodes[n].memory is None or service.memory <= self.nodes[n].memory)
            and (self.nodes[n].compute is None or service.compute <= self.nodes[n].compute)
        )

    def crossings(self, u: str, v: str) -> tuple[tuple[str, bool], ...]:
        """The links traffic from node ``u`` to node ``v`` crosses, as (key, whether it goes from
        the link's ``src`` to its ``dst``): their cross link, else the tree path up to their
        nearest common node and down (tree links by ``src``). Each direction of a link has its
        ``rate``."""
        if u == v:
            return ()
        key = cross_key(u, v)
        if key in self.cross_links:
            return ((key, self.cross_links[key].src == u),)
        up, down = self.path(u), self.path(v)
        common = next(n for n in up if n in down)
        return tuple((n, True) for n in up[: up.index(common)]) + tuple((n, False) for n in down[: down.index(common)])

    def route(self, u: str, v: str) -> tuple[str, ...]:
        """The keys of the links :meth:`crossings` names."""
        return tuple(key for key, _ in self.crossings(u, v))

    def link(self, key: str) -> Link:
        """The tree link from ``key`` towards the cloud, or the cross link of that key."""
        return self.links[key] if key in self.links else self.cross_links[key]

    @property
    def total_rate(self) -> float:
        return sum(r.rate for r in self.requests)

    def _compute_time(self, node: str, gflop: float, item: Item | None = None) -> float:
        """Seconds of ``item`` on ``node``: measured there if it was, else ``gflop / compute``."""
        if item is not None and (node, item) in self._measured:
            return self._measured[(node, item)]
        speed = self.nodes[node].compute
        if speed is None:
            return 0.0
        return gflop / speed if speed > 0 else math.inf

    def _options(self, cls: RequestClass) -> list[Option]:
        model = self.models[cls.model]
        path = cls.path
        options: list[Option] = []
        reach_latency = 0.0  # latency to get the input to path[i]
        input_bits = model.input * 8.0
        for i, node in enumerate(path):
            if i > 0:
                link = self.links[path[i - 1]]
                reach_latency += 2 * link.delay + (input_bits / link.rate if link.rate else 0.0)
            upstream = tuple((path[j], input_bits) for j in range(i))
            if not self.nodes[node].available:
                continue
            here = self.nodes[node]
            is_root = node == self.root
            if here.compute is None and not is_root:
                continue  # a node without compute holds services only
            for variant in model.variants:
                fits = here.memory is None or variant.size <= here.memory
                if fits and (here.compute is None or here.compute > 0):
                    options.append(
                        Option(
                            position=i,
                            node=node,
                            variant=variant.name,
                            split=None,
                            tail_node=None,
                            latency=reach_latency
                            + self._compute_time(node, variant.gflop, (model.name, variant.name, "full", "")),
                            accuracy=variant.accuracy,
                            energy=variant.gflop * here.joules_per_gflop,
                            needs=() if is_root else ((node, (model.name, variant.name, "full", "")),),
                            compute=((node, variant.gflop),),
                            traffic=upstream,
                        )
                    )
                if is_root:
                    continue
                tail = path[i + 1]
                there = self.nodes[tail]
                if not there.available or (there.compute is None and tail != self.root):
                    continue
                link = self.links[node]
                for split in variant.splits:
                    head_size = round(variant.size * split.size_fraction)
                    tail_size = variant.size - head_size
                    if here.memory is not None and head_size > here.memory:
                        continue
                    if tail != self.root and there.memory is not None and tail_size > there.memory:
                        continue
                    head_gflop = variant.gflop * split.compute
                    tail_gflop = variant.gflop - head_gflop
                    tensor_bits = split.tensor * 8.0
                    needs = [(node, (model.name, variant.name, "head", split.name))]
                    if tail != self.root:
                        needs.append((tail, (model.name, variant.name, "tail", split.name)))
                    options.append(
                        Option(
                            position=i,
                            node=node,
                            variant=variant.name,
                            split=split.name,
                            tail_node=tail,
                            latency=reach_latency
                            + self._compute_time(node, head_gflop, (model.name, variant.name, "head", split.name))
                            + 2 * link.delay
                            + (tensor_bits / link.rate if link.rate else 0.0)
                            + self._compute_time(tail, tail_gflop, (model.name, variant.name, "tail", split.name)),
                            accuracy=variant.accuracy,
                            energy=head_gflop * here.joules_per_gflop + tail_gflop * there.joules_per_gflop,
                            needs=tuple(needs),
                            compute=((node, head_gflop), (tail, tail_gflop)),
                            traffic=(*upstream, (node, tensor_bits)),
                        )
                    )
        return [o for o in options if math.isfinite(o.latency)]

    def item_size(self, item: Item) -> int:
        """Bytes of a whole variant, or of its head or tail (remembered: solvers ask often)."""
        size = self._sizes.get(item)
        if size is None:
            size = self._sizes[item] = self._item_size(item)
        return size

    def _item_size(self, item: Item) -> int:
        model, variant_name, part, split_name = item
        variant = next(v for v in self.models[model].variants if v.name == variant_name)
        if part == "full":
            return variant.size
        split = next(s for s in variant.splits if s.name == split_name)
        head = round(variant.size * split.size_fraction)
        return head if part == "head" else variant.size - head

    def compute_capacity(self, node: str) -> float:
        """GFLOP/s a node may serve (``max_utilization`` of its compute); ``inf`` when unlimited."""
        compute = self.nodes[node].compute
        return math.inf if compute is None else compute * self.max_utilization

    def memory_capacity(self, node: str) -> float:
        memory = self.nodes[node].memory
        return math.inf if memory is None or node == self.root else float(memory)

    def link_capacity(self, key: str) -> float:
        """Bits per second over the link of ``key`` (a tree link's ``src`` or a cross link's key)."""
        rate = self.link(key).rate
        return math.inf if rate is None else rate

    def option_cost(self, cls: RequestClass, option: Option, weights: Weights | None = None) -> float:
        """The option's share of the objective: rate x weighted cost, over the total rate."""
        w = weights or self.weights
        return cls.rate * w.cost(option.latency, 1.0 - option.accuracy, option.energy) / self.total_rate

    def service_memory_capacity(self, node: str) -> float:
        """Bytes for services and items on ``node`` (on the cloud, for services: its ``memory`` as a sum)."""
        memory = self.nodes[node].memory
        return math.inf if memory is None else float(memory)

    def check_servable(self) -> None:
        """Raise when a class of requests has no way to be served at all (before any solving)."""
        for cls in self.classes:
            if not cls.options:
                raise PlacementProblemError(
                    f"requests for {cls.model!r} at {cls.source!r} can be served nowhere on the path "
                    f"{' -> '.join(cls.path)}: no node there is available with the memory and compute for a variant"
                )


def cross_key(a: str, b: str) -> str:
    """The key of the cross link between nodes ``a`` and ``b``, whichever way it was given."""
    first, second = sorted((a, b))
    return f"{first}<->{second}"
