"""Online placement (INFIDA-style policy) against the offline engine, slot by slot.

Seeded instances from ``engage.deploy.placement.random_tree_problem`` without split points (the
online policy places whole variants) and with every node's memory scaled by ``--memory`` (0.2, so
that memory binds), and three seeded request traces over their classes:

* ``stationary``: every class at its base rate in every slot;
* ``shifting``: model popularity re-drawn (Zipf over a new random order) four times over the run;
* ``adversarial``: the models split in two halves, one half asked for at 1.5x its base rates and
  the other at 0.25x, swapping after segments of 1 to 30 slots drawn at random.

Every policy holds an allocation in each slot before seeing the slot's requests, and is scored by
the gain of :class:`engage.deploy.placement.online.ThresholdGain` (weighted cost saved per second
against serving everything in the cloud). Policies: the online policy (``--moves`` copies per
slot, made only when they gain on the slot's requests), the same making every move it draws
(``online-unchecked``), without a move limit, without a move limit and without filling free
memory before rounding (``online-unfilled``), and from CP-SAT's first plan with
``--fewer-moves`` per slot;
greedy re-solved every K slots on the mean rates of the last K (slot 0: its own rates);
CP-SAT solved once on slot 0; CP-SAT re-solved every K slots warm-started from the plan in force
with ``max_moves`` = K x the online budget; the best static fractional allocation in hindsight
(an LP over the aggregated demand, exact: the summed threshold functions are concave
piecewise-linear) and the best static integral allocation (the same as a MILP, SCIP, 60 s).

Regret ``R_T = Σ_t g_t(x*) - Σ_t E[g_t(x_t)]`` on the adversarial trace for T = 50 ... 1000, with
``x*`` the best static fractional allocation on the first T slots, the expectation over three
seeds of the policy without move limit (its rounded allocation, its fractional state, and its
rounded allocation without filling) and of the policy with ``--moves``; the log-log slope of
``R_T / T``; the same at the memory scales of ``--regret-memory``, each with its integrality gap
(the fractional static optimum less the integral one, per slot: what any static integral
allocation loses against ``x*``). Also the per-slot time
of the policy on a 200-node tree.

Run: ``python benchmarks/placement_online.py`` (about 10 minutes on 2 cores; ``--quick``: 20 nodes,
300 slots, under a minute); writes ``benchmarks/results/placement_online.json`` and
``benchmarks/results/placement_online_regret.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
from _cli import check_out, number, whole
from ortools.linear_solver import pywraplp

from engage.deploy.placement import CpSatSolver, GreedySolver, PlacementInfeasible, PlacementProblem
from engage.deploy.placement import random_tree_problem as tree
from engage.deploy.placement.online import OnlineSolver, ThresholdGain

RESULTS = Path(__file__).parent / "results"
E_FACTOR = 1 - 1 / math.e


def whole_variants(problem: PlacementProblem, memory: float = 1.0) -> PlacementProblem:
    """The problem without split points, every node's memory scaled by ``memory``."""
    data = problem.to_dict()
    for node in data["nodes"]:
        if node["memory"] is not None:
            node["memory"] = int(node["memory"] * memory)
    for model in data["models"]:
        for variant in model["variants"]:
            variant["splits"] = []
    return PlacementProblem.from_dict(data)


def trace(gain: ThresholdGain, base: np.ndarray, kind: str, slots: int, seed: int) -> np.ndarray:
    """Rates per slot (rows) and class (columns, as ``gain.keys``)."""
    rng = np.random.default_rng(seed)
    models = sorted({m for _, m in gain.keys}, key=lambda m: int(m.rsplit("-", 1)[1]))
    column = np.asarray([models.index(m) for _, m in gain.keys])
    if kind == "stationary":
        return np.tile(base, (slots, 1))
    if kind == "shifting":
        zipf = 1.0 / np.arange(1, len(models) + 1) ** 0.8
        out = np.empty((slots, len(base)))
        for phase, start in enumerate(range(0, slots, math.ceil(slots / 4))):
            weight = np.empty(len(models))
            weight[rng.permutation(len(models))] = 1.5 * zipf / zipf.max()
            out[start : start + math.ceil(slots / 4)] = base * weight[column]
            del phase
        return out
    if kind == "adversarial":
        half = column % 2 == 0
        a = np.where(half, 1.5, 0.25) * base
        b = np.where(half, 0.25, 1.5) * base
        out = np.empty((slots, len(base)))
        t, which = 0, 0
        while t < slots:
            length = int(rng.integers(1, 31))
            out[t : t + length] = a if which == 0 else b
            t, which = t + length, 1 - which
        return out
    raise ValueError(kind)


def best_static(gain: ThresholdGain, rates: np.ndarray, integral: bool, limit_s: float) -> dict:
    """max_x Σ_t G(r_t, x) over the budgets: Σ_t min(r_t, Z) is concave piecewise-linear in Z,
    so each threshold term is bounded by its pieces (one per distinct rate)."""
    solver = pywraplp.Solver.CreateSolver("SCIP" if integral else "GLOP")
    solver.SetTimeLimit(int(limit_s * 1000))
    n = len(gain)
    x = [solver.IntVar(0, 1, f"x{i}") if integral else solver.NumVar(0, 1, f"x{i}") for i in range(n)]
    for node in range(len(gain.node_names)):
        members = np.flatnonzero((gain.node_of == node) & (gain.share > 0))
        if len(members):
            solver.Add(solver.Sum([float(gain.share[i]) * x[i] for i in members]) <= 1)
    var, capacity, diff = gain.matrices()
    objective = []
    for c in range(rates.shape[1]):
        r = np.sort(rates[:, c])
        if r[-1] <= 0:
            continue
        levels = np.unique(np.concatenate([[0.0], r]))
        totals = [float(np.minimum(r, u).sum()) for u in levels]
        slopes = [float((r > u).sum()) for u in levels]
        terms = []
        for k in range(var.shape[1]):
            if diff[c, k] <= 0 or var[c, k] >= n:
                if var[c, k] < n:
                    terms.append(float(capacity[c, k]) * x[var[c, k]])
                continue
            terms.append(float(capacity[c, k]) * x[var[c, k]])
            z = solver.Sum(terms)
            h = solver.NumVar(0, totals[-1], f"h{c}_{k}")
            for total, slope, u in zip(totals, slopes, levels, strict=True):
                if slope > 0:
                    solver.Add(h <= total + slope * (z - float(u)))
            objective.append(float(diff[c, k]) * h)
    solver.Maximize(solver.Sum(objective))
    status = solver.Solve()
    names = {pywraplp.Solver.OPTIMAL: "OPTIMAL", pywraplp.Solver.FEASIBLE: "FEASIBLE"}
    value = np.asarray([v.solution_value() for v in x])
    if integral:
        value = np.round(value)
    return {
        "x": value,
        "value": float(sum(gain.gain(value, r) for r in rates)),
        "status": names.get(status, "NOT SOLVED"),
        "bound": solver.Objective().BestBound() if integral else None,
    }


def run_online(
    gain: ThresholdGain, problem, rates, *, max_moves, seed, eta, previous=None, fill=True, check_moves=True
) -> dict:
    solver = OnlineSolver(seed=seed, max_moves=max_moves, eta=eta, fill=fill, check_moves=check_moves)
    solver.start(problem, previous)
    solver.model = gain
    gains, fractional, moves = [], [], 0
    started = time.perf_counter()
    for r in rates:
        x_before = solver.x
        gains.append(gain.gain(solver.x, r))
        fractional.append(gain.gain(solver.y, r))
        solver.step(r)
        moves += int(np.sum((solver.x > 0.5) & (x_before < 0.5)))
    return {
        "gains": np.asarray(gains),
        "fractional": np.asarray(fractional),
        "moves": moves,
        "seconds": time.perf_counter() - started,
    }


def run_offline(gain, problem, rates, *, kind, every, max_moves, limit_s) -> dict:
    """greedy (every K slots), cpsat-once, cpsat-periodic (every K slots, warm, move budget)."""
    keys = gain.keys
    x = None
    plan = first = None
    gains, moves, solves = [], 0, 0
    started = time.perf_counter()
    for t, r in enumerate(rates):
        if t == 0 or (kind != "cpsat-once" and t % every == 0):
            demand = rates[0] if t == 0 else rates[t - every : t].mean(axis=0)
            slot = problem.with_changes(rates={key: float(v) for key, v in zip(keys, demand, strict=True)})
            try:
                if kind == "greedy":
                    plan = GreedySolver().solve(slot)
                elif t == 0 or kind == "cpsat-once":
                    plan = CpSatSolver(limit_s).solve(slot)
                else:
                    plan = CpSatSolver(limit_s, max_moves=max_moves * every).solve(slot, previous=plan)
                solves += 1
                first = plan if first is None else first
                new = gain.allocation(plan)
                if x is not None:
                    moves += int(np.sum((new > 0.5) & (x < 0.5)))
                x = new
            except PlacementInfeasible:
                pass
        gains.append(gain.gain(x, r) if x is not None else 0.0)
    return {
        "gains": np.asarray(gains),
        "moves": moves,
        "solves": solves,
        "seconds": time.perf_counter() - started,
        "first": first,
    }


def one_tree(nodes: int, models: int, seed: int, args) -> dict:
    problem = whole_variants(tree(nodes, models, seed), args.memory)
    gain = ThresholdGain(problem)
    base = gain.rates({(r.node, r.model): r.rate for r in problem.requests})
    out: dict = {"nodes": nodes, "models": models, "seed": seed, "classes": len(gain.keys), "copies": len(gain)}
    out["traces"] = {}
    for kind in ("stationary", "shifting", "adversarial"):
        rates = trace(gain, base, kind, args.slots, seed)
        frac = best_static(gain, rates, integral=False, limit_s=60)
        integ = best_static(gain, rates, integral=True, limit_s=args.milp_limit)
        rows = {}
        online = run_online(gain, problem, rates, max_moves=args.moves, seed=seed, eta=args.eta)
        rows["online"] = online
        rows["online-unchecked"] = run_online(
            gain, problem, rates, max_moves=args.moves, seed=seed, eta=args.eta, check_moves=False
        )
        rows["online-no-limit"] = run_online(gain, problem, rates, max_moves=None, seed=seed, eta=args.eta)
        rows["online-unfilled"] = run_online(gain, problem, rates, max_moves=None, seed=seed, eta=args.eta, fill=False)
        for name in ("greedy", "cpsat-once", "cpsat-periodic"):
            rows[name] = run_offline(
                gain, problem, rates, kind=name, every=args.every, max_moves=args.moves, limit_s=args.cpsat_limit
            )
            if name == "cpsat-once":
                rows["first"] = rows[name].pop("first")
        rows["online-from-cpsat"] = run_online(
            gain, problem, rates, max_moves=args.fewer_moves, seed=seed, eta=args.eta, previous=rows.pop("first")
        )
        table = {}
        for name, row in rows.items():
            total = float(row["gains"].sum())
            table[name] = {
                "gain_per_slot": total / len(rates),
                "of_fractional_static": total / frac["value"] if frac["value"] > 0 else None,
                "of_integral_static": total / integ["value"] if integ["value"] > 0 else None,
                "moves": row["moves"],
                "seconds": row["seconds"],
            }
        table["static-fractional"] = {"gain_per_slot": frac["value"] / len(rates), "status": frac["status"]}
        table["static-integral"] = {
            "gain_per_slot": integ["value"] / len(rates),
            "status": integ["status"],
            "bound_per_slot": None if integ["bound"] is None else integ["bound"] / len(rates),
        }
        out["traces"][kind] = table
        for name, row in table.items():
            extra = f" {row.get('of_integral_static') or 0:.3f} of integral static" if "moves" in row else ""
            print(f"{nodes:>3} nodes {kind:<11} {name:<17} {row['gain_per_slot']:10.3f}/slot{extra}", flush=True)
    return out


def regret(nodes: int, models: int, seed: int, args, memory: float) -> dict:
    """The regret curves of the module docstring on the tree with every node's memory scaled by
    ``memory``, and the integral static optimum over the whole trace (its gap to the fractional
    one is what any static integral allocation loses per slot against ``x*``)."""
    problem = whole_variants(tree(nodes, models, seed), memory)
    gain = ThresholdGain(problem)
    base = gain.rates({(r.node, r.model): r.rate for r in problem.requests})
    rates = trace(gain, base, "adversarial", args.slots, seed + 100)
    runs = [run_online(gain, problem, rates, max_moves=None, seed=s, eta=args.eta) for s in range(3)]
    rounded = np.mean([r["gains"] for r in runs], axis=0)
    fractional = np.mean([r["fractional"] for r in runs], axis=0)
    unfilled = np.mean(
        [run_online(gain, problem, rates, max_moves=None, seed=s, eta=args.eta, fill=False)["gains"] for s in range(3)],
        axis=0,
    )
    limited = np.mean(
        [run_online(gain, problem, rates, max_moves=args.moves, seed=s, eta=args.eta)["gains"] for s in range(3)],
        axis=0,
    )
    horizons = [t for t in (50, 75, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000) if t <= args.slots]
    points = []
    for t in horizons:
        opt = best_static(gain, rates[:t], integral=False, limit_s=60)["value"]
        points.append(
            {
                "T": t,
                "static_fractional": opt,
                "regret": opt - float(rounded[:t].sum()),
                "regret_fractional": opt - float(fractional[:t].sum()),
                "regret_unfilled": opt - float(unfilled[:t].sum()),
                "regret_limited": opt - float(limited[:t].sum()),
                "regret_e": E_FACTOR * opt - float(rounded[:t].sum()),
            }
        )

    integral = best_static(gain, rates, integral=True, limit_s=args.milp_limit)

    def slope(name: str) -> float | None:
        pts = [(p["T"], p[name] / p["T"]) for p in points if p[name] > 0]
        if len(pts) < 3:
            return None
        t, v = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
        return float(np.polyfit(t, v, 1)[0])

    return {
        "nodes": nodes,
        "models": models,
        "seed": seed,
        "memory": memory,
        "static_integral": integral["value"],
        "static_integral_status": integral["status"],
        # per slot over the whole trace: what the best static integral allocation loses against x*
        "integrality_gap_per_slot": (points[-1]["static_fractional"] - integral["value"]) / len(rates),
        "points": points,
        "slope": slope("regret"),
        "slope_fractional": slope("regret_fractional"),
        "slope_unfilled": slope("regret_unfilled"),
        "slope_limited": slope("regret_limited"),
        "slope_e": slope("regret_e"),
    }


def timing(nodes: int, models: int) -> dict:
    problem = whole_variants(tree(nodes, models, 0), 0.2)
    solver = OnlineSolver(seed=0, max_moves=10)
    gain = solver.start(problem)
    r = gain.rates({(q.node, q.model): q.rate for q in problem.requests})
    started = time.perf_counter()
    for _ in range(20):
        solver.step(r)
    step = (time.perf_counter() - started) / 20
    plan = None
    started = time.perf_counter()
    for _ in range(3):
        plan = solver.solve(problem, plan)
    solve = (time.perf_counter() - started) / 3
    serving = len(gain.node_names)
    return {
        "nodes": nodes,
        "models": models,
        "copies": len(gain),
        "step_s": step,
        "solve_s": solve,
        "step_ms_per_node": step * 1e3 / serving,
        "solve_ms_per_node": solve * 1e3 / serving,
    }


def plot(reg: dict, by_memory: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.asarray([p["T"] for p in reg["points"]])
    fig, (ax, right) = plt.subplots(1, 2, figsize=(11, 4))
    curves = (
        ("regret", "rounded, no move limit"),
        ("regret_unfilled", "rounded, without filling free memory"),
        ("regret_limited", "rounded, move limit (online)"),
        ("regret_fractional", "fractional state"),
    )
    for key, label in curves:
        v = np.asarray([p[key] for p in reg["points"]]) / t
        ax.loglog(t[v > 0], v[v > 0], "o-", label=label)
    ref = t.astype(float) ** -0.5
    first = reg["points"][0]["regret_fractional"] / t[0]
    if first > 0:
        ax.loglog(t, first * ref / ref[0], "k--", lw=0.8, label="slope -1/2")
    ax.set_xlabel("horizon T (slots)")
    ax.set_ylabel("regret R_T / T (weighted cost per s)")
    ax.set_title(f"Adversarial switching, {reg['nodes']}-node tree, memory x{reg['memory']}")
    ax.legend()
    for i, level in enumerate(by_memory):
        color = f"C{i}"
        tt = np.asarray([p["T"] for p in level["points"]])
        v = np.asarray([p["regret_limited"] for p in level["points"]]) / tt
        fitted = level["slope_limited"]
        ax_label = f"memory x{level['memory']}" + ("" if fitted is None else f" (slope {fitted:.2f})")
        right.loglog(tt[v > 0], v[v > 0], "o-", color=color, label=ax_label)
        if level["integrality_gap_per_slot"] > 0:
            right.axhline(level["integrality_gap_per_slot"], color=color, ls=":", lw=1)
    right.set_xlabel("horizon T (slots)")
    right.set_ylabel("regret R_T / T (weighted cost per s)")
    right.set_title("Online (move limit) by memory; dotted: integrality gap")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _scales(text: str) -> list[float]:
    """``--regret-memory``: comma-separated memory scales > 0 (empty: none)."""
    one = number()
    return [one(part.strip()) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 nodes, 300 slots, short solver limits")
    parser.add_argument(
        "--slots", type=whole(50), default=None, help="slots per trace, >= 50 (default 1000; quick 300)"
    )
    parser.add_argument(
        "--every", type=whole(), default=None, help="K: slots between re-solves (default 100; quick 50)"
    )
    parser.add_argument("--moves", type=whole(0), default=2, help="copies newly loaded per slot (online policy)")
    parser.add_argument(
        "--fewer-moves",
        type=number(0.0, strict=False),
        default=0.05,
        help="per-slot move budget of the online run started from CP-SAT's first plan (0.05)",
    )
    parser.add_argument("--eta", type=number(), default=3.0, help="step scale of the online policy (default 3)")
    parser.add_argument(
        "--cpsat-limit", type=number(unit="s"), default=None, help="s per CP-SAT solve (default 10; quick 2)"
    )
    parser.add_argument(
        "--milp-limit",
        type=number(unit="s"),
        default=None,
        help="s for the integral static optimum (default 60; quick 10)",
    )
    parser.add_argument(
        "--memory", type=number(), default=0.2, help="scale of every node's memory (default 0.2: tight)"
    )
    parser.add_argument(
        "--regret-memory",
        type=_scales,
        default=None,
        help="memory scales the regret is also measured at, comma-separated (default 0.35,0.5; quick: none)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "placement_online.json", help="the JSON to write (plot beside it)"
    )
    args = parser.parse_args()
    check_out(parser, args.out)
    args.slots = args.slots or (300 if args.quick else 1000)
    args.every = args.every or (50 if args.quick else 100)
    args.cpsat_limit = args.cpsat_limit or (2.0 if args.quick else 10.0)
    args.milp_limit = args.milp_limit or (10.0 if args.quick else 60.0)
    trees = [(20, 8, 0)] if args.quick else [(20, 8, 0), (50, 10, 0)]
    started = time.perf_counter()
    results = [one_tree(n, m, s, args) for n, m, s in trees]
    n, m, s = trees[-1]
    extra = args.regret_memory if args.regret_memory is not None else ([] if args.quick else [0.35, 0.5])
    by_memory = []
    for memory in [args.memory, *extra]:
        level = regret(n, m, s, args, memory)
        by_memory.append(level)
        print(
            f"regret on adversarial switching, {n} nodes, memory x{memory}: slope of log(R_T/T) {level['slope']}, "
            f"fractional {level['slope_fractional']}, unfilled {level['slope_unfilled']}, "
            f"move limit {level['slope_limited']}, (1-1/e)-regret {level['slope_e']}; "
            f"integrality gap {level['integrality_gap_per_slot']:.3f} per slot ({level['static_integral_status']})",
            flush=True,
        )
    reg = by_memory[0]
    times = timing(200, 20 if args.quick else 50)
    print(
        f"per slot on {times['nodes']} nodes: update and rounding {times['step_s'] * 1e3:.0f} ms "
        f"({times['step_ms_per_node']:.2f} ms per node), with the plan {times['solve_s'] * 1e3:.0f} ms",
        flush=True,
    )
    print()
    print(f"{'nodes':>5} {'trace':<11} {'policy':<17} {'gain/slot':>10} {'of int.':>8} {'of frac.':>8} {'moves':>6}")
    for row in results:
        for kind, table in row["traces"].items():
            for name, cell in table.items():
                of_int = cell.get("of_integral_static")
                of_frac = cell.get("of_fractional_static")
                print(
                    f"{row['nodes']:>5} {kind:<11} {name:<17} {cell['gain_per_slot']:10.3f} "
                    f"{'' if of_int is None else f'{of_int:.3f}':>8} {'' if of_frac is None else f'{of_frac:.3f}':>8} "
                    f"{cell.get('moves', ''):>6}"
                )
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "trees": results,
        "regret": reg,
        "regret_by_memory": by_memory,
        "timing": times,
        "wall_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    png = args.out.with_name(args.out.stem + "_regret.png")
    plot(reg, by_memory, png)
    print(f"wrote {args.out} and {png} in {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
