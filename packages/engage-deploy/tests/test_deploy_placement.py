"""Placement of model variants on an inference delivery network: CP-SAT against exhaustive search,
the greedy baseline, infeasibility, validation, re-placement and the Pareto mode."""

from __future__ import annotations

import itertools
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from engage.deploy.placement import (
    CpSatSolver,
    ExhaustiveSolver,
    GreedySolver,
    PlacementInfeasible,
    PlacementProblem,
    PlacementProblemError,
    metric_value,
    pareto_front,
    random_tree_problem,
)
from engage.deploy.placement.plan import check_capacities, options_by_key

SHIPPED = Path(__file__).parents[1] / "src/engage/deploy/conf/placement/edge_inference.yaml"


def _chosen(problem, plan):
    by_key = options_by_key(problem)
    return {c.index: by_key[c.index][plan.choice[c.index]] for c in problem.classes}


@pytest.mark.parametrize(("load", "seed"), [(1.0, 0), (1.0, 1), (1.0, 2), (3.0, 3), (3.0, 4), (4.0, 5)])
def test_cpsat_matches_exhaustive_search_on_small_seeded_instances(load, seed) -> None:
    problem = random_tree_problem(nodes=5, models=3, seed=seed, load=load)
    exact = ExhaustiveSolver().solve(problem)
    optimal = CpSatSolver(time_limit_s=20).solve(problem)
    assert optimal.status == "OPTIMAL" and optimal.gap == 0.0
    # CP-SAT works on costs rounded to a millionth of the costliest option
    assert optimal.objective == pytest.approx(exact.objective, rel=1e-5)
    assert check_capacities(problem, _chosen(problem, optimal)) == []
    greedy = GreedySolver().solve(problem)
    assert greedy.objective >= exact.objective - 1e-12


def test_loaded_instances_bind_capacities() -> None:
    """The loaded instances above are not won by each class's cheapest option alone."""
    problem = random_tree_problem(nodes=5, models=3, seed=0, load=4.0)
    unconstrained = sum(min(problem.option_cost(c, o) for o in c.options) for c in problem.classes)
    assert ExhaustiveSolver().solve(problem).objective > unconstrained * 1.001


def _tiny(cloud_compute: float | None = 10.0, edge_compute: float = 5.0, rate: float = 4.0) -> dict:
    return {
        "nodes": [
            {"name": "cloud", "compute": cloud_compute},
            {"name": "edge", "compute": edge_compute, "memory": "1GiB"},
        ],
        "links": [{"src": "edge", "dst": "cloud", "delay": "10ms", "rate": "100mbit"}],
        "models": [
            {"name": "m", "input": "10KB", "variants": [{"name": "v", "size": "10MB", "accuracy": 0.8, "gflop": 2}]}
        ],
        "requests": [{"node": "edge", "model": "m", "rate": rate}],
        "max_utilization": 1.0,
    }


def test_infeasible_instances_say_which_capacities_conflict() -> None:
    # 4 req/s x 2 GFLOP = 8 GFLOP/s: the edge (5) or the cloud (10) alone can serve it
    assert CpSatSolver().solve(PlacementProblem.from_dict(_tiny())).status == "OPTIMAL"
    # 8 req/s: 16 GFLOP/s, more than either node; one class cannot be shared between nodes
    with pytest.raises(PlacementInfeasible) as info:
        CpSatSolver().solve(PlacementProblem.from_dict(_tiny(rate=8.0)))
    message = str(info.value)
    assert "compute of edge (5 GFLOP/s" in message and "compute of cloud (10 GFLOP/s" in message
    assert "\n" not in message
    with pytest.raises(PlacementInfeasible, match="fit nowhere"):
        GreedySolver().solve(PlacementProblem.from_dict(_tiny(rate=8.0)))
    with pytest.raises(PlacementInfeasible, match="no combination"):
        ExhaustiveSolver().solve(PlacementProblem.from_dict(_tiny(rate=8.0)))
    # a seeded tree where one camera's requests overrun it and its uplink: named as such
    with pytest.raises(
        PlacementInfeasible,
        match=r"the 83\.43 requests/s arriving at 'edge-2' do not fit its compute 58\.32 GFLOP/s "
        r"\(at max_utilization 0\.8\) and uplink edge-2 -> fog-1 67\.05 mbit/s together "
        r"\(raising any one of them would do\)",
    ):
        CpSatSolver().solve(random_tree_problem(nodes=5, models=3, seed=3, load=4.0))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["links"].append({"src": "fog", "dst": "cloud"}), "links: src 'fog' of fog -> cloud is not a node"),
        (lambda d: d["nodes"][1].update(compute=-4), r"nodes\[1\].compute: -4 is out of range; use a number >= 0"),
        (lambda d: d["nodes"][1].update(memory="-1GiB"), r"nodes\[1\].memory: '-1GiB' is negative; use a value >= 0"),
        (
            lambda d: d["nodes"][0].update(memory="5MB"),
            "models: 'm' fits nowhere: its smallest variant .* exceeds the cloud's memory",
        ),
        (
            lambda d: d["models"][0]["variants"][0].update(accuracy=1.5),
            r"accuracy: 1.5 is out of range; use a number <= 1",
        ),
        (lambda d: d["requests"][0].update(model="n"), r"requests\[0\].model: 'n' is not a model; models are m"),
        (lambda d: d["links"].append({"src": "cloud", "dst": "edge"}), "roots: none, a cycle"),
        (lambda d: d["nodes"][1].update(gpus=1), r"nodes\[1\]: unknown key 'gpus'; known keys are name, compute"),
    ],
)
def test_bad_problems_get_one_line_naming_the_field(change, message) -> None:
    data = _tiny()
    change(data)
    with pytest.raises(PlacementProblemError, match=message) as info:
        PlacementProblem.from_dict(data)
    assert "\n" not in str(info.value)


def test_unservable_requests_are_reported_before_solving() -> None:
    data = _tiny(cloud_compute=None)
    data["nodes"].append({"name": "cam", "compute": 1, "memory": "1MB"})
    data["links"].append({"src": "cam", "dst": "edge", "delay": "1ms"})
    data["requests"].append({"node": "cam", "model": "m", "rate": 1})
    problem = PlacementProblem.from_dict(data)
    problem = problem.with_changes(unavailable=["edge"])  # forwards, serves nothing
    assert [c.path for c in problem.classes][1] == ("cam", "edge", "cloud")
    assert {o.node for o in problem.classes[1].options} == {"cloud"}  # cam: 1 MB holds no variant


def _shifted(problem, factor: float):
    """The busiest classes fall silent, the others grow by ``factor``, and fog-1 goes down."""
    busiest = sorted(problem.requests, key=lambda r: -r.rate)[:6]
    rates = {(r.node, r.model): 0.0 for r in busiest}
    rates.update({(r.node, r.model): r.rate * factor for r in problem.requests if r not in busiest})
    return problem.with_changes(rates=rates, unavailable=["fog-1"])


def test_replacement_is_warm_started_and_respects_the_move_limit() -> None:
    problem = random_tree_problem(nodes=10, models=5, seed=3)
    before = CpSatSolver().solve(problem)
    changed = _shifted(problem, 1.5)
    free = CpSatSolver().solve(changed, previous=before)
    assert free.moves == 4 and free.removed >= 1
    assert not free.placement["fog-1"]
    objectives = []
    for limit in (0, 2):
        capped = CpSatSolver(max_moves=limit).solve(changed, previous=before)
        assert capped.moves <= limit and capped.status == "OPTIMAL"
        assert check_capacities(changed, _chosen(changed, capped)) == []
        objectives.append(capped.objective)
    # fewer moves allowed, no better plan; none allowed costs more here
    assert objectives[0] > objectives[1] >= free.objective - 1e-12
    # when the plan in force cannot absorb the change without moves, the error says the limit is why
    with pytest.raises(PlacementInfeasible, match=r"max_moves \(0\)"):
        CpSatSolver(max_moves=0).solve(_shifted(problem, 2.0), previous=before)


def test_pareto_front_is_non_dominated_and_spans_the_extremes() -> None:
    problem = random_tree_problem(nodes=5, models=3, seed=1)
    front = pareto_front(problem, ("latency", "inaccuracy"), points=5)
    assert len(front) >= 3
    for a, b in itertools.pairwise(front):
        assert metric_value(a, "latency") < metric_value(b, "latency")
        assert metric_value(a, "inaccuracy") > metric_value(b, "inaccuracy")
    fastest = CpSatSolver(weights=type(problem.weights)(latency=1, inaccuracy=0, energy=0)).solve(problem)
    assert front[0].latency_s == pytest.approx(fastest.latency_s, rel=1e-6)
    with pytest.raises(ValueError, match="two different ones of latency, inaccuracy, energy"):
        pareto_front(problem, ("latency", "latency"))


def test_problem_loads_from_a_hydra_config_node() -> None:
    cfg = OmegaConf.create({"placement": OmegaConf.load(SHIPPED)})
    problem = PlacementProblem.from_dict(cfg.placement)
    assert problem.root == "cloud" and len(problem.classes) == 7
    assert PlacementProblem.from_dict(problem.to_dict()).to_dict() == problem.to_dict()


@pytest.mark.slow
def test_engage_place_prints_the_plan_and_logs_it_with_a_plot(tmp_path) -> None:
    engage = [sys.executable, "-m", "engage.core.cli", "place", "edge_inference"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run([*engage, "--tracking-uri", uri], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cp-sat plan (OPTIMAL" in proc.stdout and "fog-1" in proc.stdout
    db = sqlite3.connect(tmp_path / "mlflow.db")
    (run_id, artifacts), *_ = db.execute("select run_uuid, artifact_uri from runs").fetchall()
    metrics = dict(db.execute("select key, value from metrics where run_uuid = ?", (run_id,)).fetchall())
    assert 0.5 < metrics["placement/accuracy"] < 1 and metrics["placement/gap"] == 0.0
    folder = Path(artifacts.removeprefix("file://")) / "placement"
    assert {"plan.json", "problem.json", "network.png"} <= {p.name for p in folder.iterdir()}
    # an MLflow server that does not answer: the plan is still printed, the exit code says it was not logged
    down = subprocess.run(
        [*engage, "--solver", "greedy", "--tracking-uri", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert down.returncode == 3 and "greedy plan (HEURISTIC" in down.stdout
    assert "the plan above is not logged: MLflow server http://127.0.0.1:9 is unreachable" in down.stderr


def _two_models(edge_memory: str, uplink: str = "1gbit", rates: tuple[float, float] = (5.0, 5.0)) -> dict:
    variant = {"name": "s", "accuracy": 0.8, "gflop": 1}
    return {
        "nodes": [
            {"name": "cloud", "compute": 100_000},
            {"name": "fog", "compute": 10_000, "memory": "1GiB"},
            {"name": "edge", "compute": 10_000, "memory": edge_memory},
        ],
        "links": [
            {"src": "fog", "dst": "cloud", "delay": "50ms"},
            {"src": "edge", "dst": "fog", "delay": "20ms", "rate": uplink},
        ],
        "models": [
            {"name": "m1", "input": "100KB", "variants": [{**variant, "size": "10MB"}]},
            {"name": "m2", "input": "100KB", "variants": [{**variant, "size": "20MB"}]},
        ],
        "requests": [
            {"node": "edge", "model": "m1", "rate": rates[0]},
            {"node": "edge", "model": "m2", "rate": rates[1]},
        ],
    }


def test_a_node_filled_to_the_byte_and_tiny_rates_keep_the_exact_optimum() -> None:
    # 10 MB + 20 MB on a 30 MB edge: both fit exactly (decimal sizes are not whole KiB)
    problem = PlacementProblem.from_dict(_two_models("30MB"))
    plan = CpSatSolver().solve(problem)
    assert plan.placement["edge"] == ["m1/s", "m2/s"]
    assert plan.objective == pytest.approx(ExhaustiveSolver().solve(problem).objective, rel=1e-12)
    # a class at 1e-4 requests/s next to one at 1000: its better option still counts
    data = _two_models("1GiB", rates=(1000.0, 1e-4))
    data["models"][1]["variants"].append({"name": "l", "size": "20MB", "accuracy": 0.9, "gflop": 1})
    problem = PlacementProblem.from_dict(data)
    plan = CpSatSolver().solve(problem)
    assert [r.variant for r in plan.routes] == ["s", "l"]
    assert plan.objective == pytest.approx(ExhaustiveSolver().solve(problem).objective, rel=1e-12)


def test_greedy_serves_at_the_edge_what_a_narrow_uplink_cannot_carry() -> None:
    # each class sends 0.8 mbit/s per request over a 1 mbit uplink: one must stay on the edge
    problem = PlacementProblem.from_dict(_two_models("15MB", uplink="1mbit", rates=(1.0, 1.0)))
    greedy = GreedySolver().solve(problem)
    assert greedy.objective >= ExhaustiveSolver().solve(problem).objective - 1e-12
    assert greedy.placement["edge"] == ["m1/s"]


def test_pareto_front_of_an_unservable_problem_says_why() -> None:
    with pytest.raises(PlacementInfeasible, match=r"compute of edge \(5 GFLOP/s .*compute of cloud \(10 GFLOP/s"):
        pareto_front(PlacementProblem.from_dict(_tiny(rate=8.0)), points=3)


def test_duplicates_are_named() -> None:
    data = _tiny()
    data["links"].append({"src": "edge", "dst": "cloud"})
    with pytest.raises(PlacementProblemError, match=r"links\[1\]\.src: 'edge' again \(as in links\[0\]\)"):
        PlacementProblem.from_dict(data)
    data = _tiny()
    data["requests"] = [{"node": "edge", "model": "m", "rate": 0}, {"node": "nowhere", "model": "m", "rate": 1}]
    with pytest.raises(PlacementProblemError, match=r"requests\[1\]\.node: 'nowhere' is not a node"):
        PlacementProblem.from_dict(data)
