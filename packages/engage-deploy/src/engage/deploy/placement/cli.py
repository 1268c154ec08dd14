"""``engage place CONFIG``: solve a placement, print it as a table and log it to MLflow.

``CONFIG`` is a YAML file or the name of a shipped config: a placement problem (``nodes``,
``links``, ``models``, ``requests``, ``services``; shipped: ``edge_inference``) or an
infrastructure whose layers list services (shipped: ``netns_edge_cloud``), which becomes a
problem of those services on its hosts; both are solved, printed and logged alike. Exit codes:
0 placed, 2 bad input or nothing fits, 3 placed but MLflow did not answer.

Example::

    engage place edge_inference                       # CP-SAT, table, MLflow run in ./mlflow.db
    engage place my_network.yaml --solver greedy --no-mlflow
    engage place edge_inference --pareto latency,inaccuracy --points 6
    engage place netns_edge_cloud --no-mlflow          # the launcher's placement: optimize
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from engage.core.plugins import placement_solvers
from engage.core.run import EXIT_TRACKING_UNAVAILABLE
from engage.core.tracking.store import TrackingUnavailable, check_reachable, resolve_tracking_uri
from engage.deploy.infrastructure import Infrastructure, InfrastructureError
from engage.deploy.placement.plan import PlacementInfeasible, PlacementPlan
from engage.deploy.placement.problem import PlacementProblem, PlacementProblemError
from engage.deploy.placement.workflow import ServicePlacementError, solve_workflow, workflow_problem

CONF = Path(__file__).resolve().parent.parent / "conf"
#: points of a Pareto front unless ``--points`` says otherwise
POINTS = 6


def load_config(spec: str) -> dict[str, Any]:
    """The mapping in a YAML file, or in the shipped ``placement/`` or ``infrastructure/`` config."""
    import yaml

    path = Path(spec)
    if not path.is_file():
        for group in ("placement", "infrastructure"):
            shipped = CONF / group / f"{spec}.yaml"
            if shipped.is_file():
                path = shipped
                break
        else:
            names = sorted(p.stem for group in ("placement", "infrastructure") for p in (CONF / group).glob("*.yaml"))
            raise PlacementProblemError(f"{spec!r} is neither a file nor a shipped config ({', '.join(names)})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise PlacementProblemError(f"{path} is not a UTF-8 text file; give a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise PlacementProblemError(f"{path} is not valid YAML{where}: {problem}; fix the file") from None
    if data is None:
        raise PlacementProblemError(f"{path} is empty; give a placement problem or an infrastructure")
    if not isinstance(data, dict):
        raise PlacementProblemError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
    return data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="placement problem or infrastructure: YAML file or shipped name")
    parser.add_argument("--solver", choices=sorted(placement_solvers()), default="cpsat")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=10.0,
        help="CP-SAT's time limit for its search, in seconds (default 10; building the model comes on top)",
    )
    parser.add_argument("--pareto", metavar="A,B", help="two of latency, inaccuracy, energy: print the front")
    parser.add_argument("--points", type=int, default=POINTS, help=f"points of the Pareto front ({POINTS})")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the plan to MLflow")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow store (default: ENGAGE_TRACKING_URI or ./mlflow.db)"
    )
    parser.add_argument("--experiment", default="engage-place", help="MLflow experiment")


def _solver(name: str, time_limit_s: float):
    return placement_solvers()[name](time_limit_s=time_limit_s)


def check_arguments(namespace: argparse.Namespace) -> None:
    """The command's own figures, named by their flags (:class:`ValueError`, one line)."""
    if not math.isfinite(namespace.time_limit) or namespace.time_limit <= 0:
        raise ValueError(f"--time-limit is {namespace.time_limit}; give seconds > 0")
    if namespace.points != POINTS and not namespace.pareto:
        raise ValueError("--points counts the points of a Pareto front: give --pareto A,B with it")


def run_command(namespace: argparse.Namespace) -> int:
    try:
        check_arguments(namespace)
        data = load_config(namespace.config)
        front = None
        objectives: tuple[str, str] = ("latency", "inaccuracy")
        if "layers" in data:
            if namespace.pareto:
                raise PlacementProblemError(
                    "--pareto trades request metrics; an infrastructure's services have none: drop --pareto"
                )
            infra = Infrastructure.from_dict(data)
            infra.validate()  # the provider too: this infrastructure is meant for the launcher
            problem = workflow_problem(infra)
            # CP-SAT without its capacity search: the infrastructure's own reasons read in cores
            chosen = None if namespace.solver == "cpsat" else _solver(namespace.solver, namespace.time_limit)
            plan = solve_workflow(infra, problem, chosen, namespace.time_limit)
        elif namespace.pareto:
            from engage.deploy.placement.pareto import pareto_front

            problem = PlacementProblem.from_dict(data)
            objectives = tuple(namespace.pareto.split(","))  # type: ignore[assignment]
            front = pareto_front(problem, objectives, namespace.points, namespace.time_limit)
            plan = front[0]
        else:
            problem = PlacementProblem.from_dict(data)
            plan = _solver(namespace.solver, namespace.time_limit).solve(problem)
    except (PlacementProblemError, PlacementInfeasible, InfrastructureError, ServicePlacementError, ValueError) as exc:
        print(f"engage place: {exc}", file=sys.stderr)
        return 2
    _print(problem, plan, front, objectives, namespace.json)
    if namespace.no_mlflow:
        return 0
    return _log(problem, plan, front, objectives, namespace)


def _print(
    problem: PlacementProblem,
    plan: PlacementPlan,
    front: list[PlacementPlan] | None,
    objectives: tuple[str, str],
    as_json: bool,
) -> None:
    if as_json:
        print(json.dumps(plan.to_dict() if front is None else [p.to_dict() for p in front], indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    from engage.deploy.placement.pareto import metric_value
    from engage.deploy.placement.report import plan_table

    console = Console()
    console.print(plan_table(problem, plan))
    if front:
        table = Table(title=f"Pareto front: {objectives[0]} against {objectives[1]}")
        for column in (*objectives, "accuracy", "latency (ms)", "items", "status"):
            table.add_column(column)
        for point in front:
            table.add_row(
                f"{metric_value(point, objectives[0]):.5g}",
                f"{metric_value(point, objectives[1]):.5g}",
                f"{point.accuracy:.4f}",
                f"{point.latency_s * 1e3:.2f}",
                str(len(point.items)),
                point.status,
            )
        console.print(table)


def _log(
    problem: PlacementProblem,
    plan: PlacementPlan,
    front: list[PlacementPlan] | None,
    objectives: tuple[str, str],
    namespace: argparse.Namespace,
) -> int:
    uri = resolve_tracking_uri(namespace.tracking_uri)
    try:
        check_reachable(uri, timeout_s=10.0)
    except TrackingUnavailable as exc:
        print(f"engage place: the plan above is not logged: {exc}; start it or pass --no-mlflow", file=sys.stderr)
        return EXIT_TRACKING_UNAVAILABLE
    import mlflow

    from engage.deploy.placement.report import log_plan

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(namespace.experiment)
    with mlflow.start_run(run_name=f"place {Path(namespace.config).stem}") as run:
        params = {"config": namespace.config, "time_limit_s": namespace.time_limit}
        if front:
            params["pareto"] = ",".join(objectives)
        log_plan(problem, plan, params=params, front=front, objectives=objectives)
    print(f"logged to MLflow run {run.info.run_id} ({uri})", file=sys.stderr)
    return 0
