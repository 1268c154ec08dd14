"""The greedy baseline: start with every request served by the cloud, then repeatedly place the
model variant (or split pair) and node with the largest gain per unit of memory, until nothing
placeable gains.

The gain of a candidate is the drop in objective when the request classes that can use it move to
it, in decreasing order of rate, as far as the compute and link capacities allow; candidates
whose items are already held cost no memory and come first. Gains are re-evaluated lazily (a
candidate is re-scored when it reaches the top of the queue), and the queue is rebuilt until a
pass places nothing, since moves free capacity; it is a baseline, not a bound.

Services go first: copy by copy, the services with the fewest nodes to choose from and then the
most traffic first, each copy onto the node where it adds the least traffic cost towards the
copies already placed, within the capacities. The requests then use what they leave.
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict

from engage.deploy.placement.plan import PlacementInfeasible, PlacementPlan, build_plan
from engage.deploy.placement.problem import Item, Option, PlacementProblem, RequestClass, Weights
from engage.deploy.placement.services import link_cost, usage
from engage.deploy.placement.solver import PlacementSolver

_EPS = 1e-12
#: the cost of leaving a class unserved: larger than any option's (costs are means, below 1e3)
_UNSERVED = 1e6


class _State:
    """Items held, the option serving each class and the loads they put on nodes and links."""

    def __init__(self, problem: PlacementProblem, weights: Weights | None) -> None:
        self.problem = problem
        self.weights = weights
        self.held: dict[str, set[Item]] = defaultdict(set)
        self.memory: dict[str, float] = defaultdict(float)
        self.compute: dict[str, float] = defaultdict(float)
        self.traffic: dict[str, float] = defaultdict(float)
        self.serving: dict[int, Option] = {}

    def cost(self, cls: RequestClass, option: Option) -> float:
        return self.problem.option_cost(cls, option, self.weights)

    def fits(self, cls: RequestClass, option: Option, leaving: Option | None, compute=None, traffic=None) -> bool:
        compute = self.compute if compute is None else compute
        traffic = self.traffic if traffic is None else traffic
        freed_c = dict(leaving.compute) if leaving else {}
        freed_t = dict(leaving.traffic) if leaving else {}
        for node, gflop in option.compute:
            load = compute[node] + cls.rate * (gflop - freed_c.get(node, 0.0))
            if load > self.problem.compute_capacity(node) * (1 - 1e-9):
                return False
        for src, bits in option.traffic:
            load = traffic[src] + cls.rate * (bits - freed_t.get(src, 0.0))
            if load > self.problem.link_capacity(src) * (1 - 1e-9):
                return False
        return True

    def move(self, cls: RequestClass, option: Option, compute=None, traffic=None) -> None:
        compute = self.compute if compute is None else compute
        traffic = self.traffic if traffic is None else traffic
        leaving = self.serving.get(cls.index)
        if leaving is not None:
            for node, gflop in leaving.compute:
                compute[node] -= cls.rate * gflop
            for src, bits in leaving.traffic:
                traffic[src] -= cls.rate * bits
        for node, gflop in option.compute:
            compute[node] += cls.rate * gflop
        for src, bits in option.traffic:
            traffic[src] += cls.rate * bits


class GreedySolver(PlacementSolver):
    """The greedy baseline; see the module docstring. ``weights`` replaces the problem's."""

    name = "greedy"

    def __init__(self, weights: Weights | None = None) -> None:
        self.weights = weights

    def solve(self, problem: PlacementProblem, previous: PlacementPlan | None = None) -> PlacementPlan:
        started = time.perf_counter()
        problem.check_servable()
        state = _State(problem, self.weights)
        counts = place_services_greedily(problem)
        reserved = usage(problem, counts)
        for node, memory in reserved.memory.items():
            state.memory[node] += memory
        for node, gflops in reserved.compute.items():
            state.compute[node] += problem.max_utilization * gflops  # requests get max_utilization of the rest
        for (key, forward), bits in reserved.traffic.items():
            if forward and key in problem.links:  # requests go up the tree links only
                state.traffic[key] += bits
        classes = sorted(problem.classes, key=lambda c: -c.rate)
        pending = []
        for cls in classes:
            at_root = sorted((o for o in cls.options if not o.needs), key=lambda o: state.cost(cls, o))
            start = next((o for o in at_root if state.fits(cls, o, None)), None)
            if start is None:
                pending.append(cls)  # served by nothing yet: any candidate that can take it gains first
                continue
            state.move(cls, start)
            state.serving[cls.index] = start
        # candidates: a set of items to load, and the (class, option) pairs it opens
        candidates: dict[tuple[tuple[str, Item], ...], list[tuple[RequestClass, Option]]] = defaultdict(list)
        for cls in classes:
            for option in cls.options:
                if option.needs:
                    candidates[option.needs].append((cls, option))
        keys = list(candidates)
        # lazy greedy; a candidate that gains nothing now may gain once moves free capacity, so the
        # queue is rebuilt from every candidate until a full pass places nothing
        placed = True
        while placed:
            placed = False
            heap = [(-self._ratio(state, keys[i], candidates[keys[i]]), i) for i in range(len(keys))]
            heap = [entry for entry in heap if entry[0] < -_EPS]
            heapq.heapify(heap)
            while heap:
                _, i = heapq.heappop(heap)
                ratio = self._ratio(state, keys[i], candidates[keys[i]])
                if ratio <= _EPS:
                    continue
                if heap and ratio < -heap[0][0] - _EPS:
                    heapq.heappush(heap, (-ratio, i))
                    continue
                self._apply(state, keys[i], candidates[keys[i]])
                placed = True
        unserved = [cls for cls in pending if cls.index not in state.serving]
        if unserved:
            cls = unserved[0]
            raise PlacementInfeasible(
                f"greedy: {len(unserved)} request class(es) fit nowhere once the others were placed, e.g. "
                f"{cls.model!r} from {cls.source!r} ({cls.rate:g}/s); the exact solver may still find a plan"
            )
        chosen = dict(state.serving)
        return build_plan(
            problem,
            chosen,
            status="HEURISTIC",
            solver=self.name,
            solve_time_s=time.perf_counter() - started,
            previous=previous,
            weights=self.weights,
            counts=counts,
        )

    def _new_items(self, state: _State, needs: tuple[tuple[str, Item], ...]) -> list[tuple[str, Item]]:
        return [(node, item) for node, item in needs if item not in state.held[node]]

    def _ratio(self, state: _State, needs, opens) -> float:
        """Gain per MiB of the memory the candidate adds (0 when it does not fit or gains nothing)."""
        new = self._new_items(state, needs)
        extra: dict[str, float] = defaultdict(float)
        for node, item in new:
            extra[node] += state.problem.item_size(item)
        for node, size in extra.items():
            if state.memory[node] + size > state.problem.memory_capacity(node):
                return 0.0
        gain = self._moves(state, opens, apply=False)
        # reusing items already held costs no memory: such gains come first
        return gain / max(sum(extra.values()) / 2**20, 1e-3)

    def _moves(self, state: _State, opens, apply: bool) -> float:
        compute = state.compute if apply else defaultdict(float, state.compute)
        traffic = state.traffic if apply else defaultdict(float, state.traffic)
        gain = 0.0
        for cls, option in opens:
            current = state.serving.get(cls.index)
            before = _UNSERVED if current is None else state.cost(cls, current)
            delta = before - state.cost(cls, option)
            if delta <= _EPS or not state.fits(cls, option, current, compute, traffic):
                continue
            state.move(cls, option, compute, traffic)
            if apply:
                state.serving[cls.index] = option
            gain += delta
        return gain

    def _apply(self, state: _State, needs, opens) -> None:
        for node, item in self._new_items(state, needs):
            state.held[node].add(item)
            state.memory[node] += state.problem.item_size(item)
        self._moves(state, opens, apply=True)


def greedy_hint(problem: PlacementProblem, weights: Weights | None = None) -> PlacementPlan | None:
    """The greedy plan (a warm start for CP-SAT), or ``None`` when greedy finds none."""
    try:
        return GreedySolver(weights).solve(problem)
    except PlacementInfeasible:
        return None


def place_services_greedily(problem: PlacementProblem) -> dict[tuple[str, str], int]:
    """The services' copies per (service, node), placed as the module docstring says."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    memory: dict[str, float] = defaultdict(float)
    compute: dict[str, float] = defaultdict(float)
    traffic: dict[tuple[str, bool], float] = defaultdict(float)
    sent: dict[str, float] = defaultdict(float)
    for flow in problem.flows:
        sent[flow.source] += flow.bits
        sent[flow.target] += flow.bits
    order = sorted(problem.services.values(), key=lambda s: (len(problem.service_nodes(s.name)), -sent[s.name]))
    for service in order:
        for copy in range(1, service.instances + 1):
            best: tuple[float, str, dict[tuple[str, bool], float]] | None = None
            for node in problem.service_nodes(service.name):
                if memory[node] + service.memory > problem.service_memory_capacity(node):
                    continue
                capacity = problem.nodes[node].compute
                if capacity is not None and compute[node] + service.compute > capacity * (1 + 1e-9):
                    continue
                cost, extra = 0.0, defaultdict[tuple[str, bool], float](float)
                for flow in problem.flows:
                    for other, sends in ((flow.target, True), (flow.source, False)):
                        if (flow.source if sends else flow.target) != service.name:
                            continue
                        for (name, there), n in list(counts.items()):
                            if name != other or not n:
                                continue
                            ends = (node, there) if sends else (there, node)
                            for key, forward in problem.crossings(*ends):
                                extra[key, forward] += flow.bits * n
                                cost += flow.bits * n / 1e6 * link_cost(problem.link(key))
                if any(
                    traffic[direction] + bits > problem.link_capacity(direction[0]) * (1 + 1e-9)
                    for direction, bits in extra.items()
                ):
                    continue
                if best is None or cost < best[0] - _EPS:
                    best = (cost, node, extra)
            if best is None:
                raise PlacementInfeasible(
                    f"greedy: copy {copy} of service {service.name!r} fits nowhere once the others were placed; "
                    "the exact solver may still find a plan"
                )
            _, node, extra = best
            counts[(service.name, node)] += 1
            memory[node] += service.memory
            compute[node] += service.compute
            for key, bits in extra.items():
                traffic[key] += bits
    return dict(counts)
