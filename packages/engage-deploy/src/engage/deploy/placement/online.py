"""Online placement, slot by slot: an INFIDA-style policy with adversarial regret guarantees.

After Si Salem, Castellano, Neglia, Pianese, Araldo, "Towards Inference Delivery Networks:
Distributing Machine Learning with Optimality Guarantees" (IEEE/ACM Transactions on Networking
32(1), 2024; arXiv:2105.02510). Each request class (a model asked for at a node) travels the fixed
path towards the cloud, which holds every model. Its candidates, the (node, variant) copies on that
path, are ranked by cost per request ``γ_1 <= γ_2 <= ... <= γ_K`` (the weighted latency,
inaccuracy and energy of :class:`~engage.deploy.placement.problem.Weights`), ``γ_K`` being the
cloud's cheapest variant; requests go to the cheapest allocated candidates up to their capacity
``l_k`` (requests per second: the node's compute under ``max_utilization`` over the variant's
GFLOP, shared evenly by the request classes whose path crosses the node). With ``x`` the
allocation (``x_k`` in {0, 1} for a copy, 1 for the cloud), the gain of a slot with request
rates ``r`` is the cost saved against serving everything in the cloud::

    G(r, x) = Σ_classes Σ_{k<K} (γ_{k+1} - γ_k) · min(r, Z_k(x)),   Z_k(x) = Σ_{j<=k} l_j x_j,

a weighted sum of threshold functions: monotone and submodular in ``x``, and concave in a
fractional ``y`` in [0, 1], its relaxation. A supergradient of the relaxation is
``∂G/∂y_j = l_j · Σ_{k>=j} (γ_{k+1} - γ_k) · 1[Z_k(y) < r]``.

Every node keeps a fractional allocation ``y`` in ``{0 <= y <= 1, Σ size·y <= memory}``. Each slot:

1. observe the slot's request rates and take the supergradient ``g`` at ``y``;
2. mirror ascent with the size-weighted negative entropy ``Φ(y) = Σ s_i y_i log y_i``
   (``s_i`` the item's share of its node's memory): ``y_i <- y_i · exp(η g_i / s_i)``;
3. project back onto the node's budget in the same Bregman divergence, which scales the node's
   entries by one factor and caps them at 1 (``y_i <- min(1, c·y_i)``, ``c`` by bisection); a
   floor ``epsilon`` keeps every entry positive, as the entropy needs;
4. raise ``y`` into the node's free memory: ``p = min(1, c·y)`` with the largest ``c >= 1`` that
   keeps the largest copy's share of the node free (every entry 1 where all fit), so that step
   5 keeps every marginal of ``p``. The relaxation leaves memory idle where a fraction of a copy
   already covers a class's rate (its supergradient is zero there), and rounding such a
   fraction loses most of that class's gain; ``p >= y`` and the gain is monotone, so what ``y``
   gains ``p`` gains at least, in the relaxation and, its marginals kept, in expectation once
   rounded (``fill=False`` rounds ``y`` itself; a node whose ``y`` already uses more is left
   as it is);
5. sample an integral allocation by dependent rounding (DepRound, Gandhi et al., JACM 2006, here
   with sizes): pairs of fractional entries exchange mass at a constant ``s_i p_i + s_j p_j``,
   which keeps every marginal ``E[x_i] = p_i`` and never exceeds the budget; the one entry left
   fractional is rounded up with probability ``p_i`` when it fits, else down. It fits whenever
   the node's ``Σ s·p`` leaves its largest share free; on a node filled closer than that by the
   projection, its marginal may be lost;
6. with ``max_moves``, keep the copies held and load at most that many of the rounded
   allocation's new copies per slot, those with ``p >= 1/2`` only, most likely first, each
   evicting only less likely copies (the marginals then lag behind ``p``; without a limit the
   rounding is used as drawn); and (``check_moves``) make the slot's moves, judged
   together with the evictions of the draw, only when the allocation they lead to gains more
   than the one held on the slot's requests, else keep the held copies and the slot's
   allowance. A move budget makes the integral allocation a slow walk, and a step of that walk
   drawn from ``p`` may land on copies worth less than those it replaces: on the benchmark's
   50-node tree under shifting popularity, the move-limited policy reached 0.895 of the best
   static integral allocation with 1,419 moves without this check, 0.968 with 40 moves with
   it. The policy without a move limit, which draws afresh each slot, is left as the paper has
   it.

Each node steps with its own ``η_{n,t} = eta / (G_{n,t} √t)`` (``G_{n,t}`` the largest
``|g_i / s_i|`` that node has seen so far), as a node of the distributed policy knows only its
own supergradients; with budgets per node and a mirror map that is a sum over nodes, a step
size per node is still mirror ascent (each node's block of the map scaled by its step). It
needs no horizon; without a move limit, the relaxation then has O(√T) regret against the best static fractional
allocation, and the rounded allocation's expected gain reaches (1 - 1/e) of the best static
allocation up to O(√T) (step 4 keeps both: it only adds allocation to what mirror ascent chose,
and the state the next step starts from is ``y``). Capacities are per request class, as in the paper's
threshold model (here a fixed even share of the node's compute), and the policy places whole
variants only (no split points).

Example::

    >>> from engage.deploy.placement import random_tree_problem
    >>> from engage.deploy.placement.online import OnlineSolver
    >>> problem = random_tree_problem(nodes=10, models=4, seed=0)
    >>> solver = OnlineSolver(seed=0, max_moves=3)
    >>> plans = [solver.solve(problem)]
    >>> for _ in range(4):  # one call per slot, with the plan in force
    ...     plans.append(solver.solve(problem, previous=plans[-1]))
    >>> plans[-1].solver, all(plan.moves <= 3 for plan in plans[1:])
    ('online', True)
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from engage.deploy.placement.plan import PlacementInfeasible, PlacementPlan, build_plan
from engage.deploy.placement.problem import Item, Option, PlacementProblem, RequestClass, Weights, item_label
from engage.deploy.placement.solver import PlacementSolver, refuse_services

#: (node, model, variant): a whole variant on a non-root node, the policy's decision variable
Copy = tuple[str, str, str]
#: (source node, model): a request class
Key = tuple[str, str]

_BIG = 1e9  # capacity of a copy that computes in no time (requests per second)
_INTEGRAL = 1e-9


@dataclass
class _Ranked:
    """A class's candidates, cheapest first: variable index, capacity (req/s), cost per request;
    ``diff[k] = γ_{k+1} - γ_k`` with the cloud's cost closing the list."""

    var: np.ndarray
    capacity: np.ndarray
    diff: np.ndarray


class ThresholdGain:
    """The gain ``G(r, x)`` of the module docstring on a fixed tree, its supergradient, and the
    decision variables (whole variants on non-root nodes that fit their memory).

    ``demand`` is ``{(node, model): rate}``; classes not on record are ranked from ``problem``
    on first sight.
    """

    def __init__(self, problem: PlacementProblem, weights: Weights | None = None) -> None:
        self.problem = problem
        self.weights = weights or problem.weights
        copies: list[Copy] = []
        sizes: list[float] = []
        nodes: list[int] = []
        self.node_names = [n for n, node in problem.nodes.items() if n != problem.root and node.available]
        for ni, name in enumerate(self.node_names):
            memory = problem.memory_capacity(name)
            for model in problem.models.values():
                for variant in model.variants:
                    if variant.size <= memory:
                        copies.append((name, model.name, variant.name))
                        sizes.append(0.0 if math.isinf(memory) else variant.size / memory)
                        nodes.append(ni)
        self.copies = copies
        self.index = {c: i for i, c in enumerate(copies)}
        self.share = np.asarray(sizes, dtype=float)  # size over the node's memory
        self.node_of = np.asarray(nodes, dtype=np.int64)
        self.keys: list[Key] = []
        self._ranked: dict[Key, _Ranked] = {}
        self._matrices: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._through: dict[str, int] = defaultdict(int)  # request classes whose path crosses a node
        for cls in problem.classes:
            for node in cls.path:
                self._through[node] += 1
        for cls in problem.classes:
            self._add(cls)

    def __len__(self) -> int:
        return len(self.copies)

    # ------------------------------------------------------------------ ranking

    def _add(self, cls: RequestClass) -> None:
        key = (cls.source, cls.model)
        if key in self._ranked:
            return
        w = self.weights
        root = [w.cost(o.latency, 1 - o.accuracy, o.energy) for o in cls.options if not o.needs]
        ranked = []
        for option in cls.options:
            if option.split is not None or not option.needs:
                continue
            var = self.index.get((option.node, cls.model, option.variant))
            if var is None:
                continue
            gflop = dict(option.compute)[option.node]
            share = max(1, self._through.get(option.node, 0))
            capacity = self.problem.compute_capacity(option.node) / share / gflop if gflop > 0 else _BIG
            ranked.append((w.cost(option.latency, 1 - option.accuracy, option.energy), var, min(capacity, _BIG)))
        ranked.sort()
        baseline = min(root) if root else (ranked[-1][0] if ranked else 0.0)
        ranked = [r for r in ranked if r[0] < baseline]
        gammas = [r[0] for r in ranked] + [baseline]
        self._ranked[key] = _Ranked(
            var=np.asarray([r[1] for r in ranked], dtype=np.int64),
            capacity=np.asarray([r[2] for r in ranked], dtype=float),
            diff=np.diff(np.asarray(gammas, dtype=float)),
        )
        self.keys.append(key)
        self._matrices = None

    def observe(self, problem: PlacementProblem) -> dict[Key, float]:
        """The demand of a slot's problem, ranking classes seen for the first time."""
        for cls in problem.classes:
            if (cls.source, cls.model) not in self._ranked:
                self._add(cls)
        return {(r.node, r.model): r.rate for r in problem.requests}

    def matrices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per class (rows) and rank (columns): variable index (padding: one past the last),
        capacity in requests per second, and ``γ_{k+1} - γ_k``."""
        if self._matrices is None:
            width = max([len(self._ranked[k].var) for k in self.keys] + [1])
            var = np.full((len(self.keys), width), len(self.copies), dtype=np.int64)  # pad: a constant 0
            capacity = np.zeros((len(self.keys), width))
            diff = np.zeros((len(self.keys), width))
            for row, key in enumerate(self.keys):
                ranked = self._ranked[key]
                n = len(ranked.var)
                var[row, :n], capacity[row, :n], diff[row, :n] = ranked.var, ranked.capacity, ranked.diff
            self._matrices = (var, capacity, diff)
        return self._matrices

    def rates(self, demand: Mapping[Key, float]) -> np.ndarray:
        """The demand as a vector over the classes on record (0 for those absent)."""
        return np.asarray([float(demand.get(key, 0.0)) for key in self.keys])

    def potentials(self, y: np.ndarray) -> np.ndarray:
        """``Z_k(y)`` per class (rows) and rank (columns)."""
        var, capacity, _ = self.matrices()
        padded = np.append(np.asarray(y, dtype=float), 0.0)
        return np.cumsum(capacity * padded[var], axis=1)

    def gain(self, y: np.ndarray, demand: Mapping[Key, float] | np.ndarray) -> float:
        """``G(r, y)`` for an integral or fractional allocation ``y`` over :attr:`copies`."""
        r = demand if isinstance(demand, np.ndarray) else self.rates(demand)
        _, _, diff = self.matrices()
        return float(np.sum(diff * np.minimum(r[:, None], self.potentials(y))))

    def supergradient(self, y: np.ndarray, demand: Mapping[Key, float] | np.ndarray) -> np.ndarray:
        """A supergradient of the relaxation at ``y`` (module docstring)."""
        r = demand if isinstance(demand, np.ndarray) else self.rates(demand)
        var, capacity, diff = self.matrices()
        active = diff * (self.potentials(y) < r[:, None])
        tail = np.cumsum(active[:, ::-1], axis=1)[:, ::-1]
        grad = np.bincount(var.ravel(), weights=(capacity * tail).ravel(), minlength=len(self.copies) + 1)
        return grad[: len(self.copies)]

    # ------------------------------------------------------------------ allocations

    def allocation(self, plan: PlacementPlan) -> np.ndarray:
        """The whole-variant copies a plan holds, as a 0/1 vector over :attr:`copies`."""
        x = np.zeros(len(self.copies))
        for node, labels in plan.placement.items():
            for label in labels:
                if "[" in label:
                    continue
                model, _, variant = label.partition("/")
                i = self.index.get((node, model, variant))
                if i is not None:
                    x[i] = 1.0
        return x

    def feasible(self, x: np.ndarray, slack: float = 1e-9) -> bool:
        """Whether ``x`` fits every node's memory (and ``0 <= x <= 1``)."""
        used = np.bincount(self.node_of, weights=self.share * x, minlength=len(self.node_names))
        return bool(np.all(used <= 1 + slack) and np.all(x >= -slack) and np.all(x <= 1 + slack))

    def fill(self, y: np.ndarray) -> np.ndarray:
        """``y`` raised into its nodes' free memory: per node ``min(1, c·y)`` with the largest
        ``c >= 1`` whose ``Σ share·min(1, c·y)`` leaves the node's largest share free (every
        entry 1 where all of the node's copies fit; ``y`` itself where it already uses more).
        Dependent rounding then keeps every marginal (:func:`dep_round`: its last fractional
        entry always fits), and as the gain is monotone, the filled allocation gains at least
        what ``y`` does, in the relaxation and in expectation once rounded. It turns memory the
        relaxation leaves idle (a class whose rate a fraction of a copy already covers has a zero
        supergradient there) into copies held."""
        y = np.asarray(y, dtype=float)
        n_nodes = len(self.node_names)
        log_y = np.log(np.maximum(y, 1e-300))
        every_one = np.zeros(n_nodes)  # the factor that puts all of a node's entries at 1
        np.maximum.at(every_one, self.node_of, -log_y)
        largest = np.zeros(n_nodes)
        np.maximum.at(largest, self.node_of, self.share)
        everything = np.bincount(self.node_of, weights=self.share, minlength=n_nodes)
        limit = np.where(everything <= 1.0, 1.0, 1.0 - largest)  # room for the last entry to round up
        log_c = self._largest_scale(log_y, np.zeros(n_nodes), every_one, limit=limit)
        filled = self._scaled(log_y, log_c)
        return np.where(self.share > 0, np.maximum(filled, y), 1.0)

    def project(self, z: np.ndarray, floor: float = 0.0) -> np.ndarray:
        """The Bregman projection (size-weighted relative entropy) of positive ``z`` onto the
        budgets: per node ``min(1, max(floor, c·z))`` with the largest ``c <= 1`` that fits."""
        log_z = np.log(np.maximum(np.asarray(z, dtype=float), 1e-300))
        n_nodes = len(self.node_names)
        log_c = self._largest_scale(log_z, np.full(n_nodes, -800.0), np.zeros(n_nodes), floor)
        return np.where(self.share > 0, self._scaled(log_z, log_c, floor), 1.0)

    def _scaled(self, log_v: np.ndarray, log_c: np.ndarray, floor: float = 0.0) -> np.ndarray:
        """Each entry ``min(1, max(floor, c·v))`` with its node's factor ``c = exp(log_c)``."""
        return np.clip(np.exp(np.minimum(log_c[self.node_of] + log_v, 0.0)), floor, 1.0)

    def _largest_scale(
        self, log_v: np.ndarray, lo: np.ndarray, hi: np.ndarray, floor: float = 0.0, limit: np.ndarray | float = 1.0
    ) -> np.ndarray:
        """Per node, the largest ``log c`` in ``[lo, hi]`` whose :meth:`_scaled` entries use at
        most ``limit`` of the node's memory: ``hi`` where that holds, ``lo`` where even ``lo``
        does not, else by bisection."""

        def fits(log_c: np.ndarray) -> np.ndarray:
            used = np.bincount(
                self.node_of, weights=self.share * self._scaled(log_v, log_c, floor), minlength=len(self.node_names)
            )
            return used <= limit

        top = fits(hi)
        if np.all(top):
            return hi
        lo, high = lo.copy(), hi.copy()
        for _ in range(60):
            mid = (lo + high) / 2
            ok = fits(mid)
            lo = np.where(ok, mid, lo)
            high = np.where(ok, high, mid)
        return np.where(top, hi, lo)


def dep_round(y: np.ndarray, share: np.ndarray, node_of: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dependent rounding per node with sizes (module docstring, step 5): ``E[x] = y`` and each
    node's ``Σ share·x <= 1`` when ``Σ share·y <= 1``."""
    x = np.asarray(y, dtype=float).copy()
    x[x <= _INTEGRAL] = 0.0
    x[x >= 1 - _INTEGRAL] = 1.0
    fractional = (x > 0.0) & (x < 1.0)
    zero_size = fractional & (share <= 0)  # unlimited memory: independent coins keep the marginals
    x[zero_size] = (rng.random(int(zero_size.sum())) < x[zero_size]).astype(float)
    sized = np.flatnonzero(fractional & (share > 0))
    if len(sized) == 0:
        return x
    sized = sized[rng.permutation(len(sized))]  # which entry is left over last is left to chance
    sized = sized[np.argsort(node_of[sized], kind="stable")]
    bounds = np.flatnonzero(np.diff(node_of[sized])) + 1
    full = np.bincount(node_of, weights=share * (x >= 1.0), minlength=int(node_of.max()) + 1)
    for group in np.split(sized, bounds):
        frac = group.tolist()
        while len(frac) >= 2:
            i, j = frac[-1], frac[-2]
            ratio = share[i] / share[j]
            up = min(1 - x[i], x[j] / ratio)  # raise x_i by up, lower x_j by up * ratio
            down = min(x[i], (1 - x[j]) / ratio)  # lower x_i by down, raise x_j by down * ratio
            if rng.random() * (up + down) < down:
                x[i] += up
                x[j] -= up * ratio
            else:
                x[i] -= down
                x[j] += down * ratio
            done_i, done_j = False, False
            for k in (i, j):
                if x[k] <= _INTEGRAL or x[k] >= 1 - _INTEGRAL:
                    x[k] = float(x[k] >= 0.5)
                    if k == i:
                        done_i = True
                    else:
                        done_j = True
            if done_i:
                frac.pop()
            if done_j:
                del frac[-1 if done_i else -2]
            if not (done_i or done_j):  # only a floating-point error leaves both inside: drop one
                x[i] = 0.0
                frac.pop()
        if frac:
            (i,) = frac
            node = int(node_of[i])
            used = full[node] + float(np.sum(share[group] * (x[group] >= 1.0)))
            x[i] = float(used + share[i] <= 1 + 1e-12 and rng.random() < x[i])
    return np.where(x >= 0.5, 1.0, 0.0)


class OnlineSolver(PlacementSolver):
    """The online policy of the module docstring, one :meth:`solve` (or :meth:`step`) per slot.

    ``eta`` scales the step, ``epsilon`` is the floor of the fractional allocation, ``start`` its
    first value everywhere (projected onto the budgets), ``fill``: round the allocation raised
    into each node's free memory (:meth:`ThresholdGain.fill`; the state ``y`` is unchanged),
    ``max_moves``
    caps the copies newly loaded per slot (a fraction such as 0.1 allows one move every ten
    slots: unused allowance carries over, up to one slot's worth or one move), ``check_moves``
    makes a slot's moves only when they gain on its requests (step 6), ``seed`` seeds
    the rounding. The topology is fixed by
    the first problem; later ones bring the slot's request rates. :meth:`solve` observes the
    slot's requests, updates, and returns the integral allocation for the next slot as a plan
    (``placement``: every copy held; routes: each class to its cheapest held copy that has room).
    """

    name = "online"

    def __init__(
        self,
        *,
        eta: float = 3.0,
        epsilon: float = 1e-3,
        start: float = 0.05,
        max_moves: float | None = None,
        seed: int = 0,
        weights: Weights | None = None,
        fill: bool = True,
        check_moves: bool = True,
    ) -> None:
        if eta <= 0:
            raise ValueError(f"eta is {eta}; use a positive step scale")
        if not 0 <= epsilon < 1:
            raise ValueError(f"epsilon is {epsilon}; use a floor in [0, 1)")
        if max_moves is not None and max_moves < 0:
            raise ValueError(f"max_moves is {max_moves}; use 0 or more (None: no limit)")
        if not epsilon <= start <= 1:
            raise ValueError(f"start is {start}; use a value in [epsilon, 1]")
        self.eta, self.epsilon, self.max_moves, self.weights = eta, epsilon, max_moves, weights
        self.initial = start
        self.fill = fill
        self.check_moves = check_moves
        self.rng = np.random.default_rng(seed)
        self.model: ThresholdGain | None = None
        self.y: np.ndarray | None = None
        #: the marginals the integral allocation is drawn with: ``y``, filled with ``fill``
        self.marginals: np.ndarray | None = None
        self.x: np.ndarray | None = None
        self.slot = 0
        self._scale: np.ndarray | float = 0.0
        self._credit = 0.0

    def start(self, problem: PlacementProblem, previous: PlacementPlan | None = None) -> ThresholdGain:
        """Fix the topology and start from the uniform fractional allocation ``start`` (projected),
        or from the copies of ``previous``, the plan in force (held at 1)."""
        self.model = ThresholdGain(problem, self.weights)
        n = len(self.model)
        if previous is None:
            self.y = self.model.project(np.full(n, self.initial), floor=self.epsilon)
            self.marginals = self._marginals()
            self.x = dep_round(self.marginals, self.model.share, self.model.node_of, self.rng)
        else:
            self.x = self.model.allocation(previous)
            self.y = self.model.project(np.maximum(self.x, self.initial), floor=self.epsilon)
            self.y = np.where(self.x > 0.5, np.maximum(self.y, self.x), self.y)
            self.marginals = self._marginals()
        self.slot, self._scale, self._credit = 0, 0.0, 0.0
        return self.model

    def step(self, demand: Mapping[Key, float] | np.ndarray) -> np.ndarray:
        """Observe one slot's demand, update ``y``, and return the next integral allocation."""
        if self.model is None or self.y is None or self.x is None:
            raise RuntimeError("call start(problem) or solve(problem) first")
        model = self.model
        grad = model.supergradient(self.y, demand)
        share = np.where(model.share > 0, model.share, 1.0)
        scaled = grad / share
        self.slot += 1
        # each node's own scale: the largest |g_i / s_i| it has seen (a node steps on what it saw)
        seen = np.zeros(len(model.node_names))
        np.maximum.at(seen, model.node_of, np.abs(scaled))
        self._scale = np.maximum(self._scale, seen)
        if np.any(self._scale > 0):
            steps = np.divide(
                self.eta, self._scale * math.sqrt(self.slot), out=np.zeros_like(seen), where=self._scale > 0
            )
            z = self.y * np.exp(np.minimum(steps[model.node_of] * scaled, 50.0))
            self.y = model.project(z, floor=self.epsilon)
        self.marginals = self._marginals()
        x = dep_round(self.marginals, model.share, model.node_of, self.rng)
        if self.max_moves is None:
            self.x = x
            return self.x
        self._credit = min(self._credit + self.max_moves, max(1.0, self.max_moves))
        credit, held = self._credit, self.x
        x = self._limit_moves(x, held)
        if self.check_moves and not np.array_equal(x, held) and model.gain(x, demand) <= model.gain(held, demand):
            # moves that gain nothing on the requests just seen are not made: the slot's
            # allowance is kept for a move that does
            x, self._credit = held, credit
        self.x = x
        return self.x

    def _marginals(self) -> np.ndarray:
        assert self.model is not None and self.y is not None
        return self.model.fill(self.y) if self.fill else self.y

    def _limit_moves(self, x: np.ndarray, held: np.ndarray) -> np.ndarray:
        """Under a move budget, start from the copies held and load, most likely first, the
        rounded allocation's new copies the budget allows, each evicting less likely held copies
        of its node (never more likely ones) to make room."""
        assert self.model is not None and self.marginals is not None and self.y is not None
        model, y, state = self.model, self.marginals, self.y
        new = np.flatnonzero((x > 0.5) & (held < 0.5) & (y >= 0.5))  # moves go to likely copies only
        x = np.where((held < 0.5) & (y < 0.5), 0.0, x)
        if len(new) <= math.floor(self._credit + 1e-9):
            self._credit -= len(new)
            return x
        out = held.copy()
        # most likely first; among equally likely ones (all 1 where a node holds everything),
        # those mirror ascent values most
        for i in new[np.lexsort((self.rng.random(len(new)), -state[new], -y[new]))]:
            if self._credit < 1 - 1e-9:
                break
            node = model.node_of[i]
            members = np.flatnonzero(model.node_of == node)
            room = 1.0 - float(np.sum(model.share[members] * out[members]))
            evict = []
            for j in members[np.lexsort((state[members], y[members]))]:
                if room + 1e-12 >= model.share[i]:
                    break
                if out[j] > 0.5 and x[j] < 0.5:
                    if y[j] > y[i]:
                        break
                    evict.append(j)
                    room += model.share[j]
            if room + 1e-12 >= model.share[i]:
                out[evict] = 0.0
                out[i] = 1.0
                self._credit -= 1
        return out

    def solve(self, problem: PlacementProblem, previous: PlacementPlan | None = None) -> PlacementPlan:
        started = time.perf_counter()
        problem.check_servable()
        refuse_services(self.name, problem)
        if self.model is None or set(problem.nodes) != set(self.model.problem.nodes):
            self.start(problem, previous)
        assert self.model is not None
        if previous is not None:
            self.x = self.model.allocation(previous)
        demand = self.model.observe(problem)
        x = self.step(demand)
        held = {(node, (model, variant, "full", "")) for (node, model, variant), v in zip(self.model.copies, x) if v}
        plan = route(problem, held, solver=self.name, weights=self.weights)
        placement: dict[str, set[str]] = {name: set() for name in problem.nodes if name != problem.root}
        for node, item in held:
            placement[node].add(item_label(item))
        plan.placement = {node: sorted(labels) for node, labels in placement.items()}
        if previous is not None:
            plan.moves = len(plan.items - previous.items)
            plan.removed = len(previous.items - plan.items)
        plan.solve_time_s = time.perf_counter() - started
        return plan


def route(
    problem: PlacementProblem,
    held: Iterable[tuple[str, Item]],
    *,
    solver: str = "online",
    weights: Weights | None = None,
) -> PlacementPlan:
    """The plan that serves each class by an option whose items are ``held`` (or on the cloud)
    within the compute and link capacities: first each class by its lightest such option (least
    GFLOP), then, largest rate first, each moved to its cheapest option that has room."""
    held = set(held)
    compute: dict[str, float] = defaultdict(float)
    traffic: dict[str, float] = defaultdict(float)
    chosen: dict[int, Option] = {}

    def load(cls: RequestClass, option: Option, sign: float) -> None:
        for n, g in option.compute:
            compute[n] += sign * cls.rate * g
        for s, b in option.traffic:
            traffic[s] += sign * cls.rate * b

    def fits(cls: RequestClass, option: Option) -> bool:
        return all(
            compute[n] + cls.rate * g <= problem.compute_capacity(n) * (1 - 1e-9) for n, g in option.compute
        ) and all(traffic[s] + cls.rate * b <= problem.link_capacity(s) * (1 - 1e-9) for s, b in option.traffic)

    classes = sorted(problem.classes, key=lambda c: -c.rate)
    usable = {c.index: [o for o in c.options if all(need in held for need in o.needs)] for c in classes}
    for cls in classes:
        lightest = sorted(usable[cls.index], key=lambda o: (sum(g for _, g in o.compute), o.latency))
        option = next((o for o in lightest if fits(cls, o)), None)
        if option is None:
            raise PlacementInfeasible(
                f"{solver}: requests for {cls.model!r} at {cls.source!r} fit no held copy nor the cloud once "
                "the heavier classes were placed; the exact solver may still find a plan"
            )
        load(cls, option, 1.0)
        chosen[cls.index] = option
    for cls in classes:
        load(cls, chosen[cls.index], -1.0)
        best = sorted(usable[cls.index], key=lambda o: problem.option_cost(cls, o, weights))
        chosen[cls.index] = next((o for o in best if fits(cls, o)), chosen[cls.index])
        load(cls, chosen[cls.index], 1.0)
    return build_plan(problem, chosen, status="HEURISTIC", solver=solver, weights=weights)
