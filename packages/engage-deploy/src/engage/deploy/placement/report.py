"""A placement plan for people: a table per node, a plot of the tree with what each node holds,
runs and serves, and both in MLflow."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from engage.deploy.placement.plan import PlacementPlan
from engage.deploy.placement.problem import PlacementProblem
from engage.deploy.placement.services import counts_of


def node_loads(problem: PlacementProblem, plan: PlacementPlan) -> dict[str, dict[str, float]]:
    """Per node: requests/s it serves (heads and whole variants), GFLOP/s and its utilisation."""
    loads: dict[str, dict[str, float]] = defaultdict(lambda: {"requests": 0.0, "gflops": 0.0})
    for route in plan.routes:
        variant = next(v for v in problem.models[route.model].variants if v.name == route.variant)
        loads[route.node]["requests"] += route.rate
        if route.split is None:
            loads[route.node]["gflops"] += route.rate * variant.gflop
        else:
            split = next(s for s in variant.splits if s.name == route.split)
            loads[route.node]["gflops"] += route.rate * variant.gflop * split.compute
            loads[route.tail_node]["gflops"] += route.rate * variant.gflop * (1 - split.compute)
    for (service, node_name), copies in counts_of(plan.assignment).items():
        loads[node_name]["gflops"] += copies * problem.services[service].compute
    out = {}
    for name, node in problem.nodes.items():
        load = loads.get(name, {"requests": 0.0, "gflops": 0.0})
        utilisation = load["gflops"] / node.compute if node.compute else 0.0
        out[name] = {**load, "utilisation": utilisation}
    return out


def plan_table(problem: PlacementProblem, plan: PlacementPlan, max_rows: int = 40) -> Any:
    """A ``rich`` table: node, what it holds, the service copies it runs, requests/s it serves, compute used."""
    from rich.table import Table

    gap = "" if plan.gap is None else f", gap {plan.gap:.2%}"
    figures = []
    if problem.models:
        figures.append(
            f"mean latency {plan.latency_s * 1e3:.1f} ms, accuracy {plan.accuracy:.3f}, "
            f"energy {plan.energy_j:.3f} J/request"
        )
    if problem.services:
        figures.append(
            f"services' traffic cost {plan.traffic_cost:.4g} "
            f"({plan.slow_traffic_mbit:.4g} Mbit/s over constrained links)"
        )
    table = Table(
        title=f"{plan.solver} plan ({plan.status}{gap}): {', '.join(figures)}, objective {plan.objective:.5g}"
    )
    columns = ["node"]
    columns += ["holds", "serves (req/s)"] if problem.models else []
    columns += ["runs"] if problem.services else []
    for column in (*columns, "compute used"):
        table.add_column(column, overflow="fold")
    loads = node_loads(problem, plan)
    runs = plan.per_node
    names = sorted(problem.nodes, key=lambda n: (problem.depth(n), n))
    for name in names[:max_rows]:
        load = loads[name]
        row = [name]
        if problem.models:
            held = ", ".join(plan.placement.get(name, [])) or ("every model" if name == problem.root else "-")
            row += [held, f"{load['requests']:.4g}"]
        if problem.services:
            row.append(", ".join(runs.get(name, [])) or "-")
        row.append(f"{load['utilisation']:.0%}" if problem.nodes[name].compute else f"{load['gflops']:.4g}")
        table.add_row(*row)
    if len(names) > max_rows:
        table.add_row(f"... {len(names) - max_rows} more", *[""] * len(columns))
    return table


def plot_plan(problem: PlacementProblem, plan: PlacementPlan, path: str | Path) -> Path:
    """The tree (cloud on top), each node coloured by the share of requests it serves and labelled
    with the number of items it holds and service copies it runs; the title gives the plan's figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    children: dict[str, list[str]] = defaultdict(list)
    for link in problem.links.values():
        children[link.dst].append(link.src)
    x: dict[str, float] = {}
    leaves = [0]

    def lay_out(name: str) -> float:
        kids = sorted(children[name])
        if not kids:
            x[name] = leaves[0]
            leaves[0] += 1
        else:
            x[name] = sum(lay_out(k) for k in kids) / len(kids)
        return x[name]

    lay_out(problem.root)
    loads = node_loads(problem, plan)
    total = sum(r.rate for r in plan.routes) or 1.0
    width = max(6.0, min(24.0, 0.25 * leaves[0]))
    fig, ax = plt.subplots(figsize=(width, 4.5))
    for link in problem.links.values():
        ax.plot([x[link.src], x[link.dst]], [-problem.depth(link.src), -problem.depth(link.dst)], color="0.75", lw=0.8)
    names = list(problem.nodes)
    runs = plan.per_node
    shares = [loads[n]["requests"] / total for n in names]
    points = ax.scatter(
        [x[n] for n in names],
        [-problem.depth(n) for n in names],
        c=shares,
        cmap="viridis",
        s=[60 + 30 * (len(plan.placement.get(n, [])) + len(runs.get(n, []))) for n in names],
        edgecolors=["red" if not problem.nodes[n].available else "black" for n in names],
        zorder=3,
    )
    if len(names) <= 60:
        crowded = leaves[0] > 8
        for n in names:
            held = len(plan.placement.get(n, [])) + len(runs.get(n, []))
            leaf = not children[n]
            what = "item" if not problem.services else "item or copy" if held == 1 else "items and copies"
            if n == problem.root and not runs.get(n):
                label = n
            elif crowded and leaf:
                label = f"{n} ({held})"
            else:
                label = f"{n}\n{held} {what}{'s' * (held != 1 and not problem.services)}"
            if crowded and leaf:
                ax.annotate(
                    label,
                    (x[n], -problem.depth(n)),
                    textcoords="offset points",
                    xytext=(0, -9),
                    ha="center",
                    va="top",
                    rotation=90,
                    fontsize=7,
                )
            else:
                ax.annotate(
                    label, (x[n], -problem.depth(n)), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=7
                )
    fig.colorbar(points, ax=ax, label="share of requests served")
    ax.set_yticks([-d for d in range(max(problem.depth(n) for n in names) + 1)])
    ax.set_yticklabels([problem.root if d == 0 else f"depth {d}" for d in range(len(ax.get_yticks()))])
    ax.set_xticks([])
    title = f"{plan.solver} ({plan.status}): latency {plan.latency_s * 1e3:.1f} ms, accuracy {plan.accuracy:.3f}"
    if problem.services:
        title += f", services' traffic {plan.slow_traffic_mbit:.4g} Mbit/s over constrained links"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("marker size: items held and service copies run (in brackets); red outline: unavailable", fontsize=8)
    deepest = max(problem.depth(n) for n in names)
    ax.set_ylim(-deepest - (0.9 if leaves[0] > 8 else 0.4), 0.4)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_front(front: list[PlacementPlan], objectives: tuple[str, str], path: str | Path) -> Path:
    """The Pareto front of two metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engage.deploy.placement.pareto import metric_value

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([metric_value(p, objectives[0]) for p in front], [metric_value(p, objectives[1]) for p in front], "o-")
    ax.set_xlabel(f"mean {objectives[0]}")
    ax.set_ylabel(f"mean {objectives[1]}")
    ax.set_title("non-dominated placements")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_plan(
    problem: PlacementProblem,
    plan: PlacementPlan,
    *,
    params: dict[str, Any] | None = None,
    front: list[PlacementPlan] | None = None,
    objectives: tuple[str, str] = ("latency", "inaccuracy"),
) -> None:
    """Into the active MLflow run: the figures as metrics, plan and problem as JSON, the plot."""
    import mlflow

    mlflow.log_params(
        {
            "solver": plan.solver,
            "nodes": len(problem.nodes),
            "models": len(problem.models),
            "request_classes": len(problem.classes),
            "services": len(problem.services),
            **(params or {}),
        }
    )
    figures = {k: v for k, v in plan.summary().items() if isinstance(v, (int, float)) and v is not None}
    mlflow.log_metrics({f"placement/{k}": float(v) for k, v in figures.items()})
    mlflow.set_tag("placement.status", plan.status)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "plan.json").write_text(json.dumps(plan.to_dict(), indent=1))
        (folder / "problem.json").write_text(json.dumps(problem.to_dict(), indent=1))
        plot_plan(problem, plan, folder / "network.png")
        if front:
            (folder / "pareto.json").write_text(json.dumps([p.summary() for p in front], indent=1))
            plot_front(front, objectives, folder / "pareto.png")
        mlflow.log_artifacts(str(folder), artifact_path="placement")
