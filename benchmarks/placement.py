"""Placement of model variants on edge -> fog -> cloud trees: CP-SAT against greedy and exhaustive search.

Seeded instances from ``engage.deploy.placement.random_tree_problem`` (figures in its docstring),
from 5 nodes x 3 models to 200 nodes x 50 models. For each: CP-SAT's solve time, objective,
status and gap to its bound; the greedy baseline's objective and the gap between them; on the
smallest, exhaustive search (the exact optimum by enumeration). On the mid-size instances,
CP-SAT also minimises mean latency with mean accuracy at least the greedy plan's (an epsilon
constraint): the latency reduction at equal or better accuracy. A loaded series
(every rate x1.5 and x2; from x2 on, some trees have no plan at all)
shows what happens when capacities bind.

Run: ``python benchmarks/placement.py`` (about 8 minutes on 2 cores; ``--quick`` for a smaller
set); writes ``benchmarks/results/placement.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from _cli import check_out

from engage.deploy.placement import (
    CpSatSolver,
    ExhaustiveSolver,
    GreedySolver,
    PlacementInfeasible,
    Weights,
    random_tree_problem,
)

RESULTS = Path(__file__).parent / "results"
# (nodes, models, seeds, CP-SAT time limit in s, mid-size)
SIZES = [
    (5, 3, 3, 10.0, False),
    (10, 5, 3, 10.0, False),
    (20, 10, 3, 10.0, False),
    (50, 20, 3, 30.0, True),
    (100, 30, 3, 30.0, True),
    (200, 50, 1, 55.0, False),  # model building included, the whole solve stays within 60 s
]
QUICK = [(5, 3, 2, 10.0, False), (20, 10, 1, 10.0, False), (50, 20, 1, 10.0, True)]


def one_instance(nodes: int, models: int, seed: int, limit: float, mid: bool, load: float = 1.0) -> dict:
    problem = random_tree_problem(nodes, models, seed, load=load)
    row: dict = {"nodes": nodes, "models": models, "seed": seed, "load": load, "classes": len(problem.classes)}
    row["options"] = sum(len(c.options) for c in problem.classes)
    try:
        greedy = GreedySolver().solve(problem)
        row["greedy"] = greedy.summary()
    except PlacementInfeasible as exc:
        greedy = None
        row["greedy"] = {"status": "NO PLAN", "error": str(exc)}
    started = time.perf_counter()
    try:
        optimal = CpSatSolver(limit).solve(problem)
    except PlacementInfeasible as exc:
        row["cpsat"] = {"status": "INFEASIBLE", "error": str(exc), "wall_s": time.perf_counter() - started}
        return row
    row["cpsat"] = {**optimal.summary(), "wall_s": time.perf_counter() - started, "time_limit_s": limit}
    if greedy is not None:
        row["greedy_minus_cpsat"] = (greedy.objective - optimal.objective) / optimal.objective
    if nodes <= 5:
        exact = ExhaustiveSolver().solve(problem)
        row["exhaustive"] = exact.summary()
        row["cpsat_minus_exhaustive"] = optimal.objective - exact.objective
    if mid and greedy is not None:
        latency_only = Weights(latency=1.0, inaccuracy=0.0, energy=0.0)
        fast = CpSatSolver(limit, weights=latency_only, limits={"accuracy": greedy.accuracy}).solve(problem)
        row["latency_at_greedy_accuracy"] = {
            **fast.summary(),
            "latency_reduction": 1.0 - fast.latency_s / greedy.latency_s,
            "accuracy_not_lower": fast.accuracy >= greedy.accuracy - 1e-6,
        }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller set of instances")
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "placement.json", help="the JSON to write (default %(default)s)"
    )
    args = parser.parse_args()
    check_out(parser, args.out)
    rows = []
    for nodes, models, seeds, limit, mid in QUICK if args.quick else SIZES:
        for seed in range(seeds):
            row = one_instance(nodes, models, seed, limit, mid)
            rows.append(row)
            cp, gr = row["cpsat"], row["greedy"]
            extra = ""
            if "cpsat_minus_exhaustive" in row:
                extra += f" exhaustive {row['exhaustive']['objective']:.5f}"
            if "latency_at_greedy_accuracy" in row:
                extra += (
                    f" latency -{row['latency_at_greedy_accuracy']['latency_reduction'] * 100:.1f}% at greedy accuracy"
                )
            print(
                f"{nodes:>3} x {models:<2} seed {seed}: {row['classes']:>4} classes  cp-sat {cp['objective']:.5f} "
                f"{cp['status']} gap {cp['gap']:.4f} in {cp['wall_s']:.1f} s  greedy "
                f"{gr.get('objective', float('nan')):.5f} ({gr['status']}){extra}",
                flush=True,
            )
    loaded = []
    for load in (2.0,) if args.quick else (1.5, 2.0):
        for seed in range(1 if args.quick else 3):
            row = one_instance(50, 20, seed, 30.0, True, load=load)
            loaded.append(row)
            cp, gr = row["cpsat"], row["greedy"]
            extra = ""
            if "latency_at_greedy_accuracy" in row:
                extra = (
                    f", latency -{row['latency_at_greedy_accuracy']['latency_reduction'] * 100:.1f}% at greedy accuracy"
                )
            print(
                f" 50 x 20 seed {seed}, rates x{load:g}: "
                f"cp-sat {cp['status']} {cp.get('objective', float('nan')):.5f}, "
                f"greedy {gr['status']} {gr.get('objective', float('nan')):.5f}{extra}",
                flush=True,
            )
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "instances": rows,
        "loaded": loaded,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
