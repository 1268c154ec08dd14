"""The online placement policy: rounding, the threshold gain, convergence, the solver interface."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from engage.deploy.placement import PlacementProblem, random_tree_problem
from engage.deploy.placement.online import OnlineSolver, ThresholdGain, dep_round


def tiny_problem(rates=(6.0, 3.0, 4.0)) -> PlacementProblem:
    """cloud <- fog <- two edges; two models with two variants each; memory for about two copies."""
    return PlacementProblem.from_dict(
        {
            "nodes": [
                {"name": "cloud"},
                {"name": "fog", "compute": 40, "memory": "300MB"},
                {"name": "edge-1", "compute": 10, "memory": "120MB"},
                {"name": "edge-2", "compute": 10, "memory": "120MB"},
            ],
            "links": [
                {"src": "fog", "dst": "cloud", "delay": "30ms"},
                {"src": "edge-1", "dst": "fog", "delay": "10ms"},
                {"src": "edge-2", "dst": "fog", "delay": "10ms"},
            ],
            "models": [
                {
                    "name": "a",
                    "variants": [
                        {"name": "small", "size": "50MB", "accuracy": 0.7, "gflop": 2},
                        {"name": "large", "size": "200MB", "accuracy": 0.9, "gflop": 8},
                    ],
                },
                {
                    "name": "b",
                    "variants": [
                        {"name": "small", "size": "60MB", "accuracy": 0.6, "gflop": 1},
                        {"name": "large", "size": "110MB", "accuracy": 0.8, "gflop": 5},
                    ],
                },
            ],
            "requests": [
                {"node": "edge-1", "model": "a", "rate": rates[0]},
                {"node": "edge-2", "model": "a", "rate": rates[1]},
                {"node": "edge-2", "model": "b", "rate": rates[2]},
            ],
        }
    )


def brute_gain(problem: PlacementProblem, gain: ThresholdGain, x: np.ndarray) -> float:
    """Serve each class by its held copies cheapest first up to their capacity, the rest in the
    cloud; the cost saved against the cloud serving all."""
    w = problem.weights
    total = 0.0
    for cls in problem.classes:
        root = min(w.cost(o.latency, 1 - o.accuracy, o.energy) for o in cls.options if not o.needs)
        offers = []
        for o in cls.options:
            if o.needs and o.split is None and x[gain.index[(o.node, cls.model, o.variant)]] > 0.5:
                capacity = problem.compute_capacity(o.node) / dict(o.compute)[o.node]
                offers.append((w.cost(o.latency, 1 - o.accuracy, o.energy), capacity))
        left = cls.rate
        for cost, capacity in sorted(offers):
            served = min(left, capacity)
            total += served * max(0.0, root - cost)
            left -= served
    return total


def feasible_allocations(gain: ThresholdGain):
    for bits in itertools.product((0.0, 1.0), repeat=len(gain)):
        x = np.asarray(bits)
        if gain.feasible(x):
            yield x


def test_rounding_keeps_marginals_and_budget() -> None:
    rng = np.random.default_rng(0)
    node_of = np.repeat(np.arange(3), 5)
    share = np.full(15, 0.5)  # two copies per node
    y = rng.uniform(0.05, 1.0, 15)
    for n in range(3):
        members = node_of == n
        y[members] *= min(1.0, 2.0 / y[members].sum())
    draws = np.asarray([dep_round(y, share, node_of, rng) for _ in range(4000)])
    assert np.max(np.abs(draws.mean(axis=0) - y)) < 0.03
    for x in draws:
        assert np.all(np.bincount(node_of, weights=share * x) <= 1 + 1e-12)


def test_rounding_never_breaks_the_budget_with_sizes() -> None:
    rng = np.random.default_rng(1)
    node_of = np.repeat(np.arange(4), 6)
    share = rng.uniform(0.25, 0.5, 24)
    y = rng.uniform(0.05, 0.6, 24)
    # nodes 0 and 1 use their whole budget; nodes 2 and 3 leave room for the largest copy
    for n, target in enumerate((1.0, 1.0, 0.5, 0.45)):
        members = node_of == n
        y[members] *= target / float(np.sum(share[members] * y[members]))
    assert np.all(y <= 1)
    draws = np.asarray([dep_round(y, share, node_of, rng) for _ in range(3000)])
    used = np.asarray([np.bincount(node_of, weights=share * x) for x in draws])
    assert np.all(used <= 1 + 1e-12)
    roomy = node_of >= 2
    assert np.max(np.abs(draws.mean(axis=0) - y)[roomy]) < 0.035  # marginals kept where the last entry fits
    # a full node may lose at most the leftover entry's mass, never more than its largest copy
    expected = np.bincount(node_of, weights=share * y)
    assert np.all(used.mean(axis=0) >= expected - share.reshape(4, 6).max(axis=1) - 0.02)


def test_gain_matches_brute_force_and_is_monotone() -> None:
    problem = tiny_problem()
    gain = ThresholdGain(problem)
    demand = {(r.node, r.model): r.rate for r in problem.requests}
    values = {}
    for bits in itertools.product((0.0, 1.0), repeat=len(gain)):
        x = np.asarray(bits)
        values[bits] = gain.gain(x, demand)
        assert values[bits] == pytest.approx(brute_gain(problem, gain, x), rel=1e-9, abs=1e-12)
    assert values[tuple([0.0] * len(gain))] == 0.0
    for bits, value in values.items():
        for i, b in enumerate(bits):
            if b == 0.0:
                assert values[(*bits[:i], 1.0, *bits[i + 1 :])] >= value - 1e-12


def test_supergradient_bounds_the_relaxation() -> None:
    problem = random_tree_problem(nodes=8, models=3, seed=2)
    gain = ThresholdGain(problem)
    demand = {(r.node, r.model): r.rate for r in problem.requests}
    rng = np.random.default_rng(0)
    for _ in range(50):
        y, z = rng.uniform(0, 1, len(gain)), rng.uniform(0, 1, len(gain))
        g = gain.supergradient(y, demand)
        assert gain.gain(z, demand) <= gain.gain(y, demand) + g @ (z - y) + 1e-9


def test_projection_fits_the_budget() -> None:
    gain = ThresholdGain(random_tree_problem(nodes=8, models=4, seed=3))
    y = gain.project(np.random.default_rng(0).uniform(0.5, 5.0, len(gain)), floor=1e-3)
    assert gain.feasible(y, slack=1e-6) and np.all(y >= 1e-3 - 1e-12)


def test_stationary_time_average_approaches_the_best_static_allocation() -> None:
    problem = tiny_problem()
    solver = OnlineSolver(seed=0, eta=2.0)
    gain = solver.start(problem)
    demand = gain.rates({(r.node, r.model): r.rate for r in problem.requests})
    best = max(gain.gain(x, demand) for x in feasible_allocations(gain))
    total = 0.0
    slots = 400
    for _ in range(slots):
        total += gain.gain(solver.x, demand)
        solver.step(demand)
    assert total / slots >= 0.9 * best
    assert gain.gain(solver.x, demand) == pytest.approx(best)


def test_solver_interface_seed_and_move_limit() -> None:
    from engage.core.plugins import placement_solvers

    assert "online" in placement_solvers()
    problem = random_tree_problem(nodes=12, models=4, seed=4)
    plans = []
    solver = OnlineSolver(seed=7, max_moves=2)
    previous = None
    for t in range(6):
        slot = problem.with_changes(rates={(r.node, r.model): r.rate * (0.4 + 0.3 * (t % 3)) for r in problem.requests})
        previous = solver.solve(slot, previous)
        plans.append(previous)
    assert all(plan.moves <= 2 for plan in plans[1:])
    assert all(plan.solver == "online" for plan in plans)
    again = OnlineSolver(seed=7, max_moves=2)
    assert again.solve(problem).placement == OnlineSolver(seed=7, max_moves=2).solve(problem).placement


def test_under_a_move_limit_a_slots_moves_are_made_only_when_they_gain() -> None:
    """A move budget makes the allocation a slow walk; a step drawn from the marginals may lose.
    Under constant requests, every slot's allocation must gain at least as much as the one
    before, and the walk still climbs: moves are made, and they end far above where it started."""
    data = random_tree_problem(nodes=20, models=6, seed=1).to_dict()
    for node in data["nodes"]:
        if node["memory"] is not None:
            node["memory"] = int(node["memory"] * 0.2)  # memory binds: not every copy fits
    problem = PlacementProblem.from_dict(data)
    solver = OnlineSolver(seed=0, max_moves=1)
    gain = solver.start(problem)
    demand = gain.rates({(r.node, r.model): r.rate for r in problem.requests})
    gains, moves = [gain.gain(solver.x, demand)], 0
    for _ in range(150):
        held = solver.x
        solver.step(demand)
        moves += int(np.sum((solver.x > 0.5) & (held < 0.5)))
        gains.append(gain.gain(solver.x, demand))
    assert all(later >= earlier - 1e-12 for earlier, later in itertools.pairwise(gains)), gains
    assert moves > 0 and gains[-1] > 1.1 * gains[0], (moves, gains[0], gains[-1])


def test_a_slots_moves_that_lose_are_not_made_and_its_allowance_is_kept(monkeypatch) -> None:
    problem = random_tree_problem(nodes=12, models=4, seed=4)
    solver = OnlineSolver(seed=0, max_moves=0.5)
    gain = solver.start(problem)
    demand = {(r.node, r.model): r.rate for r in problem.requests}  # a mapping, as solve() passes it
    held = solver.x.copy()
    assert gain.gain(held, demand) > 0
    monkeypatch.setattr(solver, "_limit_moves", lambda x, held: np.zeros_like(held))  # a draw that loses
    for _ in range(3):
        assert np.array_equal(solver.step(demand), held)
    assert solver._credit == 1.0  # half a move a slot, carried over up to one move: none spent
    solver.check_moves = False  # the walk as drawn: the losing draw is made
    assert not solver.step(demand).any()


def test_filling_free_memory_never_lowers_an_entry_nor_breaks_a_budget() -> None:
    gain = ThresholdGain(random_tree_problem(nodes=10, models=5, seed=2))
    y = gain.project(np.random.default_rng(1).uniform(0.001, 0.3, len(gain)), floor=1e-3)
    filled = gain.fill(y)
    assert gain.feasible(filled, slack=1e-6) and np.all(filled >= y - 1e-12)
    n = len(gain.node_names)
    used = np.bincount(gain.node_of, weights=gain.share * filled, minlength=n)
    before = np.bincount(gain.node_of, weights=gain.share * y, minlength=n)
    everything = np.bincount(gain.node_of, weights=gain.share, minlength=n)
    largest = np.zeros(n)
    np.maximum.at(largest, gain.node_of, gain.share)
    # each node holds every copy it has, or is filled up to its largest copy's share, or (using
    # more than that already) is left as it was
    holds_all = np.abs(used - everything) < 1e-9
    filled_up = np.abs(used - (1 - largest)) < 1e-6
    left = (before >= 1 - largest) & (np.abs(used - before) < 1e-12)
    assert np.all(holds_all | filled_up | left) and np.any(filled_up)


def test_a_copy_the_relaxation_half_holds_is_held_once_memory_is_free() -> None:
    """One class at 1 request/s and a copy that serves 80 of them on a node with room for it:
    the relaxation is saturated by a twentieth of the copy (its supergradient is 0 there), so
    rounding that fraction serves a twentieth of the requests; filling the free memory holds it."""
    problem = PlacementProblem.from_dict(
        {
            "nodes": [{"name": "cloud"}, {"name": "edge", "compute": 100, "memory": "1GB"}],
            "links": [{"src": "edge", "dst": "cloud", "delay": "20ms"}],
            "models": [{"name": "a", "variants": [{"name": "v", "size": "50MB", "accuracy": 0.9, "gflop": 1}]}],
            "requests": [{"node": "edge", "model": "a", "rate": 1.0}],
        }
    )
    served = {}
    for fill in (False, True):
        solver = OnlineSolver(seed=0, fill=fill)
        gain = solver.start(problem)
        demand = gain.rates({("edge", "a"): 1.0})
        full = gain.gain(np.ones(len(gain)), demand)
        total = 0.0
        for _ in range(200):
            total += gain.gain(solver.x, demand)
            solver.step(demand)
        served[fill] = total / 200 / full
    assert served[False] < 0.2 and served[True] == pytest.approx(1.0)


def test_rounding_keeps_the_marginals_of_a_filled_allocation() -> None:
    """Four copies of unequal sizes on a node that cannot hold them all: filled, the allocation
    leaves the largest copy's share free, so the last fractional copy can always be rounded up
    and every copy is held as often as its filled marginal says (and never less than before)."""
    problem = PlacementProblem.from_dict(
        {
            "nodes": [{"name": "cloud"}, {"name": "edge", "compute": 100, "memory": "100MB"}],
            "links": [{"src": "edge", "dst": "cloud", "delay": "20ms"}],
            "models": [
                {"name": f"m{k}", "variants": [{"name": "v", "size": f"{size}MB", "accuracy": 0.9, "gflop": 1}]}
                for k, size in enumerate((40, 35, 30, 25))
            ],
            "requests": [{"node": "edge", "model": f"m{k}", "rate": 1.0} for k in range(4)],
        }
    )
    gain = ThresholdGain(problem)
    y = np.full(len(gain), 0.2)
    p = gain.fill(y)
    assert np.all(p >= y) and float(np.sum(gain.share * p)) == pytest.approx(1 - gain.share.max())
    rng = np.random.default_rng(0)
    draws = np.asarray([dep_round(p, gain.share, gain.node_of, rng) for _ in range(20000)])
    assert all(gain.feasible(x) for x in draws[:500])
    np.testing.assert_allclose(draws.mean(axis=0), p, atol=0.015)
