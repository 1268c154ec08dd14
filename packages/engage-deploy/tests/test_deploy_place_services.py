"""Workflow services onto hosts with the placement engine: CPU, memory and link rates as
capacities, slow-link traffic as the cost, services and model variants sharing the nodes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engage.deploy.infrastructure import Infrastructure, InfrastructureError
from engage.deploy.placement import (
    CpSatSolver,
    ExhaustiveSolver,
    GreedySolver,
    Link,
    Node,
    PlacementInfeasible,
    PlacementProblem,
    PlacementProblemError,
    Service,
)
from engage.deploy.placement.online import OnlineSolver
from engage.deploy.placement.plan import check_capacities
from engage.deploy.placement.services import counts_of
from engage.deploy.placement.workflow import ServicePlacementError, place_services, workflow_problem

BASE = {
    "layers": [
        {
            "name": "cloud",
            "hosts": 1,
            "cpu": 2,
            "memory": "8GiB",
            "services": [{"name": "trainer", "cpu": 2, "pinned": True}],
        },
        {"name": "fog", "hosts": 1, "cpu": 2, "memory": "2GiB"},
        {
            "name": "edge",
            "hosts": 2,
            "cpu": 1,
            "memory": "1GiB",
            "services": [
                {"name": "simulator", "quantity": 2, "cpu": 1, "memory": "512MiB", "traffic": {"trainer": 40}}
            ],
        },
    ],
    "network": [
        {"src": "edge", "dst": "cloud", "rate": "100mbit", "delay": "30ms"},
        {"src": "fog", "dst": "cloud", "rate": "1gbit", "delay": "2ms"},
    ],
}


def test_simulators_move_to_the_fast_link_when_the_trainer_host_is_full() -> None:
    plan = place_services(Infrastructure.from_dict(BASE))
    assert plan.status == "OPTIMAL" and plan.solver == "cp-sat"
    assert plan.assignment["trainer#1"] == "cloud-1"
    # the cloud host is full with the trainer; the fog host has the fast link to it
    assert plan.assignment["simulator#1"] == plan.assignment["simulator#2"] == "fog-1"
    assert plan.slow_traffic_mbit == pytest.approx(40.0)  # over the 1gbit fog link, far cheaper than 100mbit
    assert plan.traffic_cost == pytest.approx(40 * (1 / 1000 + 0.002), rel=1e-6)
    assert plan.objective == pytest.approx(plan.traffic_cost)
    assert plan.per_node == {"cloud-1": ["trainer#1"], "fog-1": ["simulator#1", "simulator#2"]}


def test_capacities_force_the_slow_link_and_infeasible_is_one_line() -> None:
    data = {**BASE, "layers": [dict(BASE["layers"][0]), {**BASE["layers"][1], "cpu": 1}, BASE["layers"][2]]}
    plan = place_services(Infrastructure.from_dict(data))
    on_fog = [k for k, v in plan.assignment.items() if v == "fog-1"]
    assert len(on_fog) == 1  # one simulator fits the fog host; the other stays on the edge
    assert any(v.startswith("edge-") for v in plan.assignment.values())
    assert plan.traffic_cost == pytest.approx(20 * (1 / 1000 + 0.002) + 20 * (1 / 100 + 0.03), rel=1e-6)
    data["layers"][0] = {**data["layers"][0], "cpu": 1}
    with pytest.raises(ServicePlacementError, match="no placement fits: one copy of service 'trainer' needs 2 CPU"):
        place_services(Infrastructure.from_dict(data))
    data["layers"][0] = {**data["layers"][0], "cpu": 2}
    data["layers"][2] = {**data["layers"][2], "cpu": 0.5}
    with pytest.raises(ServicePlacementError, match="no placement fits") as info:
        place_services(Infrastructure.from_dict(data))
    assert "\n" not in str(info.value)


def test_link_rates_are_capacities_for_the_services_traffic() -> None:
    """A copy that would send more than its link carries goes elsewhere, or nothing fits, by name."""
    data = {**BASE, "network": [{**BASE["network"][0], "rate": "10mbit"}, BASE["network"][1]]}
    data["layers"] = [dict(BASE["layers"][0]), {**BASE["layers"][1], "cpu": 1}, BASE["layers"][2]]
    # 20 mbit/s per simulator: the fog host takes one, the 10mbit edge link cannot take the other
    with pytest.raises(ServicePlacementError, match="traffic exceeds the rate of constrained links"):
        place_services(Infrastructure.from_dict(data))
    with pytest.raises(ServicePlacementError, match="greedy: copy 2 of service 'simulator' fits nowhere"):
        place_services(Infrastructure.from_dict(data), GreedySolver())
    data["layers"][1] = {**data["layers"][1], "cpu": 2}
    plan = place_services(Infrastructure.from_dict(data))
    problem = workflow_problem(Infrastructure.from_dict(data))
    assert check_capacities(problem, {}, counts_of(plan.assignment)) == []
    moved = {**plan.assignment, "simulator#2": "edge-1"}
    assert check_capacities(problem, {}, counts_of(moved)) == ["link edge-1 -> cloud-1: 20 mbit/s > 10"]


def test_greedy_places_the_same_services_and_the_model_only_solvers_refuse_them() -> None:
    problem = workflow_problem(Infrastructure.from_dict(BASE))
    optimal, greedy = CpSatSolver().solve(problem), GreedySolver().solve(problem)
    assert greedy.status == "HEURISTIC" and greedy.traffic_cost >= optimal.traffic_cost - 1e-12
    assert greedy.assignment == optimal.assignment  # the fast link is the obvious choice here
    for solver in (ExhaustiveSolver(), OnlineSolver()):
        with pytest.raises(PlacementProblemError, match=r"places model variants only.*use the cpsat or greedy"):
            solver.solve(problem)


def test_layers_reach_each_other_directly_and_hosts_of_a_layer_freely() -> None:
    """The netns provider shapes layer pairs: edge to fog crosses their own constraint, not cloud's."""
    data = {**BASE, "network": [*BASE["network"], {"src": "edge", "dst": "fog", "rate": "50mbit", "delay": "5ms"}]}
    problem = workflow_problem(Infrastructure.from_dict(data))
    assert problem.root == "cloud-1"
    assert problem.route("edge-1", "fog-1") == ("edge-1<->fog-1",)
    assert problem.link("edge-1<->fog-1").delay == pytest.approx(0.005)
    assert problem.route("edge-2", "cloud-1") == ("edge-2",)
    assert problem.link("edge-1<->edge-2").delay == 0 and problem.link("edge-1<->edge-2").rate is None
    # a tree without cross links routes through the nearest common node
    tree = PlacementProblem(problem.nodes.values(), problem.links.values(), (), (), services=problem.services.values())
    assert tree.route("edge-1", "fog-1") == ("edge-1", "fog-1")


def test_services_and_models_share_a_node() -> None:
    """A service's reserved memory and compute are what the model variants can no longer use."""
    data = {
        "nodes": [{"name": "cloud", "compute": 100}, {"name": "edge", "compute": 100, "memory": "1GiB"}],
        "links": [{"src": "edge", "dst": "cloud", "delay": "20ms"}],
        "models": [
            {"name": "detector", "variants": [{"name": "small", "size": "600MiB", "accuracy": 0.8, "gflop": 5}]}
        ],
        "requests": [{"node": "edge", "model": "detector", "rate": 10}],
    }
    alone = CpSatSolver().solve(PlacementProblem.from_dict(data))
    assert alone.placement["edge"] == ["detector/small"] and alone.latency_s == pytest.approx(0.05)
    simulator = {"name": "simulator", "nodes": ["edge"], "memory": "512MiB"}
    beside = CpSatSolver().solve(PlacementProblem.from_dict({**data, "services": [simulator]}))
    assert beside.placement["edge"] == [] and beside.routes[0].node == "cloud"  # 600 + 512 MiB > 1 GiB
    assert beside.assignment == {"simulator#1": "edge"}
    # compute: 10 req/s x 5 GFLOP = 50 GFLOP/s fits 0.8 x (100 - 30) = 56 but not 0.8 x (100 - 40) = 48
    for reserved, served_at in ((30, "edge"), (40, "cloud")):
        busy = {"name": "simulator", "nodes": ["edge"], "compute": reserved}
        for solver in (CpSatSolver(), GreedySolver()):
            plan = solver.solve(PlacementProblem.from_dict({**data, "services": [busy]}))
            assert plan.routes[0].node == served_at, (solver.name, reserved)
    problem = PlacementProblem.from_dict({**data, "services": [simulator]})
    again = PlacementProblem.from_dict(problem.to_dict())
    assert again.services == problem.services and again.to_dict() == problem.to_dict()


def test_bad_services_are_one_line_naming_the_field() -> None:
    base = {"nodes": [{"name": "cloud", "compute": 4}]}
    for services, expected in (
        ([{"name": "a", "instances": 0}], r"services\[0\]\.instances: 0; give a whole number >= 1"),
        (
            [{"name": "a", "traffic": {"b": "1mbit"}}],
            r"services\[0\]\.traffic: 'a' sends to 'b', which is not a service",
        ),
        ([{"name": "a", "nodes": ["fog"]}], r"services\[0\]\.nodes: 'fog' is not a node"),
        ([{"name": "a", "compute": 8}], r"services\[0\]: 'a' fits on no node"),
        ([{"name": "a", "speed": 1}], r"services\[0\]: unknown key 'speed'"),
        ([{"name": "a", "traffic": {"a": "1mbit"}}], r"services\[0\]\.traffic: 'a' sends to itself"),
    ):
        with pytest.raises(PlacementProblemError, match=expected) as info:
            PlacementProblem.from_dict({**base, "services": services})
        assert "\n" not in str(info.value)


def test_services_made_in_python_with_wrong_types_are_one_line() -> None:
    nodes = [Node("cloud", compute=None), Node("edge", compute=10.0)]
    links = [Link("edge", "cloud")]
    for service, expected in (
        (Service("a", instances="2"), r"services\[0\]\.instances: '2'; give a whole number >= 1"),
        (Service("a", instances=1.5), r"services\[0\]\.instances: 1.5; give a whole number"),
        (Service("a", compute="1"), r"services\[0\]\.compute: '1'; give a number >= 0"),
        (Service("a", nodes="edge"), r"services\[0\]\.nodes: 'edge'; give a tuple of node names"),
        (Service("a", traffic={"b": 1e6}), r"services\[0\]\.traffic: \{'b': 1000000.0\}; give \(\(service"),
    ):
        with pytest.raises(PlacementProblemError, match=expected) as info:
            PlacementProblem(nodes, links, (), (), services=[service])
        assert "\n" not in str(info.value)


def test_infrastructure_switches_are_booleans() -> None:
    pinned = {**BASE, "layers": [{**BASE["layers"][0], "services": [{"name": "trainer", "pinned": "no"}]}]}
    with pytest.raises(
        InfrastructureError, match=r"layers\[0\].services\[0\].pinned is 'no' \(service 'trainer'\); use true or false"
    ):
        Infrastructure.from_dict(pinned).validate()
    one_way = {**BASE, "network": [{**BASE["network"][0], "symmetric": "no"}]}
    with pytest.raises(InfrastructureError, match=r"network\[0\].symmetric is 'no'; use true or false"):
        Infrastructure.from_dict(one_way).validate()


def test_engage_place_refuses_bad_files_and_arguments_in_one_line(tmp_path, capsys) -> None:
    import argparse

    import yaml

    from engage.deploy.placement.cli import add_arguments, run_command

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def place(*args: str) -> tuple[int, str]:
        code = run_command(parser.parse_args([*args, "--no-mlflow", "--json"]))
        return code, capsys.readouterr().err

    files = {
        "syntax.yaml": "layers: [\n  - name: x\n",
        "empty.yaml": "",
        "list.yaml": "- a\n",
        "binary.yaml": b"\xf0\x28\x8c\x28 layers",
        "provider.yaml": yaml.safe_dump({**BASE, "provider": "nope"}),
    }
    for name, text in files.items():
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    for args, expected in (
        (["syntax.yaml"], "syntax.yaml is not valid YAML at line 2, column 3: expected the node content"),
        (["empty.yaml"], "empty.yaml is empty; give a placement problem or an infrastructure"),
        (["list.yaml"], "list.yaml: expected a mapping at the top, got list"),
        (["binary.yaml"], "binary.yaml is not a UTF-8 text file; give a YAML file"),
        (["provider.yaml"], "infrastructure.provider: unknown provider 'nope'; known providers:"),
        (["netns_edge_cloud", "--time-limit", "nan"], "--time-limit is nan; give seconds > 0"),
        (["netns_edge_cloud", "--points", "3"], "--points counts the points of a Pareto front: give --pareto A,B"),
    ):
        code, err = place(*[str(tmp_path / a) if a.endswith(".yaml") else a for a in args])
        assert code == 2 and expected in err and err.count("\n") == 1, (args, err)
    # the shipped infrastructures with services all place
    for name in ("local_edge_cloud", "netns_edge_cloud", "netns_continuum"):
        code, err = place(name)
        assert code == 0, (name, err)


def test_engage_place_command_on_a_shipped_infrastructure(tmp_path) -> None:
    engage = [sys.executable, "-m", "engage.core.cli", "place"]

    def place(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*engage, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)

    proc = place("netns_edge_cloud", "--json", "--no-mlflow")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["assignment"]["trainer#1"] == "cloud-1" and plan["status"] == "OPTIMAL"
    greedy = json.loads(place("netns_edge_cloud", "--json", "--no-mlflow", "--solver", "greedy").stdout)
    assert greedy["solver"] == "greedy" and greedy["assignment"]["trainer#1"] == "cloud-1"
    table = place("netns_edge_cloud", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert table.returncode == 0, table.stderr
    assert "trainer#1" in table.stdout and "OPTIMAL" in table.stdout and "logged to MLflow run" in table.stderr
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("engage-place").experiment_id])
    # the services' figures, and no request latency or accuracy for a plan that routes no requests
    assert {"placement/traffic_cost", "placement/service_copies"} <= set(run.data.metrics)
    assert not {"placement/latency_ms", "placement/accuracy"} & set(run.data.metrics)
    pareto = place("netns_edge_cloud", "--pareto", "latency,energy", "--no-mlflow")
    assert pareto.returncode == 2 and pareto.stderr.strip() == (
        "engage place: --pareto trades request metrics; an infrastructure's services have none: drop --pareto"
    )
    bad = place("nowhere")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("engage place: 'nowhere' is neither a file")


def test_cpsat_names_the_capacities_the_copies_cannot_all_fit() -> None:
    problem = PlacementProblem.from_dict({
        "nodes": [{"name": "cloud", "compute": 4}, {"name": "edge", "compute": 2}],
        "links": [{"src": "edge", "dst": "cloud", "rate": "1mbit"}],
        "services": [
            {"name": "trainer", "compute": 3, "nodes": ["cloud"]},
            {"name": "simulator", "instances": 2, "compute": 2, "traffic": {"trainer": "4mbit"}},
        ],
    })  # fmt: skip
    with pytest.raises(PlacementInfeasible) as info:
        CpSatSolver().solve(problem)
    assert info.value.proved
    assert str(info.value) == (
        "no plan places every service copy: these cannot all hold: compute of cloud (4 GFLOP/s); "
        "rate of edge -> cloud (1 mbit/s); add capacity or lower the services' needs"
    )


def test_capacities_exactly_filled_fit() -> None:
    """Float noise and copies sharing a flow never turn an exact fit into 'nothing fits'."""
    exact = {
        "nodes": [{"name": "cloud"}, {"name": "edge", "compute": 3}],
        "links": [{"src": "edge", "dst": "cloud", "rate": "10mbit"}],
        "max_utilization": 0.7,
        "services": [
            {"name": "trainer", "nodes": ["cloud"]},
            {"name": "simulator", "instances": 3, "compute": 1, "nodes": ["edge"], "traffic": {"trainer": "10mbit"}},
        ],
    }
    plan = CpSatSolver().solve(PlacementProblem.from_dict(exact))  # 3 x 1 GFLOP/s on 3; 3 x 10/3 mbit on 10
    assert plan.assignment["simulator#3"] == "edge" and plan.slow_traffic_mbit == pytest.approx(10.0)
    trainer = {**BASE["layers"][0]["services"][0], "cpu": 2.01}
    data = {**BASE, "layers": [{**BASE["layers"][0], "cpu": 2.01, "services": [trainer]}, *BASE["layers"][1:]]}
    assert place_services(Infrastructure.from_dict(data)).assignment["trainer#1"] == "cloud-1"


def test_each_direction_of_a_link_has_its_rate() -> None:
    """As the netns provider shapes them: 8 mbit/s each way over a 10mbit link fits."""
    data = {
        "layers": [
            {"name": "cloud", "services": [{"name": "trainer", "pinned": True, "traffic": {"simulator": 8}}]},
            {"name": "edge", "services": [{"name": "simulator", "pinned": True, "traffic": {"trainer": 8}}]},
        ],
        "network": [{"src": "edge", "dst": "cloud", "rate": "10mbit", "symmetric": True}],
    }
    plan = place_services(Infrastructure.from_dict(data))
    assert plan.slow_traffic_mbit == pytest.approx(16.0)
    problem = workflow_problem(Infrastructure.from_dict(data))
    assert problem.crossings("cloud-1", "edge-1") == (("edge-1", False),)
    data["layers"][0]["services"][0]["traffic"] = {"simulator": 12}
    with pytest.raises(ServicePlacementError, match="traffic exceeds the rate"):
        place_services(Infrastructure.from_dict(data))


def test_request_costs_keep_their_precision_beside_dear_services_traffic() -> None:
    """A dear, unused pair of nodes for the services does not blur the choice between variants."""
    problem = PlacementProblem.from_dict({
        "nodes": [{"name": "cloud"}, {"name": "edge", "compute": 10}, {"name": "far", "compute": 10}],
        "links": [{"src": "edge", "dst": "cloud", "delay": "1ms"}, {"src": "far", "dst": "cloud", "rate": "1kbit"}],
        "models": [{"name": "m", "variants": [
            {"name": "a", "size": "10MB", "accuracy": 0.8, "gflop": 1},
            {"name": "b", "size": "10MB", "accuracy": 0.8002, "gflop": 1}]}],
        "requests": [{"node": "edge", "model": "m", "rate": 1}],
        "services": [{"name": "trainer", "nodes": ["cloud"]}, {"name": "simulator", "traffic": {"trainer": "1gbit"}}],
    })  # fmt: skip
    plan = CpSatSolver().solve(problem)
    assert plan.routes[0].variant == "b" and plan.status == "OPTIMAL"
    assert plan.bound <= plan.objective + 1e-12


def test_hosts_of_a_layer_are_interchangeable_and_many_are_placed_fast() -> None:
    layers = [
        {"name": "cloud", "hosts": 2, "cpu": 4, "services": [{"name": "trainer", "cpu": 2, "pinned": True}]},
        {"name": "fog", "hosts": 8, "cpu": 2, "services": [
            {"name": "replay", "quantity": 4, "traffic": {"trainer": 10}}]},
        {"name": "edge", "hosts": 8, "cpu": 1, "services": [
            {"name": "simulator", "quantity": 16, "cpu": 0.5, "traffic": {"trainer": 20, "replay": 10}}]},
    ]  # fmt: skip
    network = [
        {"src": "edge", "dst": "cloud", "delay": "20ms", "rate": "1gbit"},
        {"src": "fog", "dst": "cloud", "delay": "5ms", "rate": "1gbit"},
        {"src": "edge", "dst": "fog", "delay": "2ms"},
    ]
    infra = Infrastructure.from_dict({"layers": layers, "network": network})
    problem = workflow_problem(infra)
    assert problem.interchangeable == (("cloud-1", "cloud-2"), tuple(f"fog-{i}" for i in range(1, 9)),
                                       tuple(f"edge-{i}" for i in range(1, 9)))  # fmt: skip
    plan = place_services(infra, time_limit_s=60)
    assert plan.status == "OPTIMAL" and plan.solve_time_s < 30
    assert check_capacities(problem, {}, counts_of(plan.assignment)) == []
    # renumbered hosts come first: within a layer, the hosts' copies (one count per service) come
    # in decreasing order, whichever of the plans of equal cost the solver found
    names = list(problem.services)
    copies = {node: [sum(1 for c in plan.per_node.get(node, []) if c.split("#")[0] == name) for name in names]
              for group in problem.interchangeable for node in group}  # fmt: skip
    for group in problem.interchangeable:
        assert [copies[n] for n in group] == sorted((copies[n] for n in group), reverse=True), copies
    greedy = place_services(infra, GreedySolver())
    assert greedy.traffic_cost >= plan.traffic_cost - 1e-9
    unlike = {**problem.to_dict(), "interchangeable": [["cloud-1", "fog-1"]]}
    with pytest.raises(PlacementProblemError, match=r"interchangeable\[0\]: 'cloud-1' and 'fog-1' differ"):
        PlacementProblem.from_dict(unlike)


def test_bad_services_of_an_infrastructure_are_one_line() -> None:
    for service, expected in (
        ({"name": "s", "cpu": None}, r"infrastructure.layers\[1\].services\[0\].cpu: None; give cores as a finite"),
        ({"name": "s", "cpu": -5}, r"services\[0\].cpu: -5; give cores as a finite number >= 0"),
        ({"name": "s", "traffic": ["trainer"]}, r"services\[0\].traffic: give a mapping"),
        ({"name": "s", "traffic": {"trainer": "8mbit"}}, r"services\[0\].traffic.trainer: '8mbit'; give Mbit/s as a"),
        (
            {"name": "s", "traffic": {"s": 4}},
            r"services\[0\].traffic.s: a service sends traffic to other services, not",
        ),
        (
            {"name": "simulator"},
            r"layers\[2\].services\[0\].name: 'simulator' again \(as in infrastructure.layers\[1\]",
        ),
    ):
        data = {**BASE, "layers": [BASE["layers"][0], {**BASE["layers"][1], "services": [service]}, BASE["layers"][2]]}
        with pytest.raises(ServicePlacementError, match=expected) as info:
            place_services(Infrastructure.from_dict(data))
        assert "\n" not in str(info.value)


def test_many_copy_counts_sharing_a_link_stay_in_the_solver_integer_range() -> None:
    """Exact counting multiplies a link's rate by the copies' common multiple: when that leaves
    64-bit integers, the link is counted in bits/s, rounded up, and the plan is still found."""
    primes = (7, 11, 13, 17, 19, 23, 29, 31)  # their product, 6.7e9, times 1 Gbit/s leaves int64
    sims = [{"name": f"sim{p}", "quantity": p, "cpu": 0.1, "pinned": True, "traffic": {"trainer": 200}} for p in primes]
    infra = Infrastructure.from_dict({
        "layers": [
            {"name": "cloud", "cpu": 100, "services": [{"name": "trainer", "pinned": True}]},
            {"name": "edge", "hosts": 2, "cpu": 100, "services": sims},
        ],
        "network": [{"src": "edge", "dst": "cloud", "rate": "1gbit"}],
    })  # fmt: skip
    plan = place_services(infra)
    assert plan.status == "OPTIMAL" and len(plan.assignment) == 1 + sum(primes)


def test_only_nodes_with_a_link_of_their_own_to_every_other_node_are_interchangeable() -> None:
    """A and B look alike, but D's traffic crosses A's uplink: renumbering them is not free."""
    data = {
        "nodes": [
            {"name": "R", "compute": 0.5}, {"name": "A", "compute": 1}, {"name": "B", "compute": 1},
            {"name": "D", "compute": 0.5},
        ],
        "links": [{"src": "A", "dst": "R", "rate": "10mbit"}, {"src": "B", "dst": "R", "rate": "10mbit"},
                  {"src": "D", "dst": "A", "rate": "10mbit"}],
        "cross_links": [{"src": "B", "dst": "D", "rate": "10mbit"}],
        "services": [{"name": "tr", "nodes": ["R"]}, {"name": "dsim", "nodes": ["D"], "traffic": {"tr": "10mbit"}},
                     {"name": "srv", "compute": 1, "traffic": {"tr": "5mbit"}}],
    }  # fmt: skip
    assert CpSatSolver().solve(PlacementProblem.from_dict(data)).assignment["srv#1"] == "B"
    for groups, expected in (
        ([["A", "B"]], r"'A' has no link of its own to 'B'"),
        ([[]], r"interchangeable\[0\]: \[\]; give at least two nodes"),
        ([["A", "A"]], r"'A' is listed twice"),
    ):
        with pytest.raises(PlacementProblemError, match=expected):
            PlacementProblem.from_dict({**data, "interchangeable": groups})


def test_the_capacity_check_names_what_overruns() -> None:
    problem = workflow_problem(Infrastructure.from_dict(BASE))
    crowded = {("trainer", "cloud-1"): 1, ("simulator", "edge-1"): 2}  # two 1-CPU copies on a 1-CPU host
    assert check_capacities(problem, {}, crowded) == ["compute of edge-1: 2 GFLOP/s of services > 1"]
    spread = {("trainer", "cloud-1"): 1, ("simulator", "edge-1"): 1, ("simulator", "edge-2"): 1}
    assert check_capacities(problem, {}, spread) == []
