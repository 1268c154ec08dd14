"""Workflow services onto hosts: CP-SAT placement under CPU and memory capacities, minimising slow-link traffic."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engage.deploy.infrastructure import Infrastructure
from engage.deploy.placement.services import ServicePlacementError, place_services

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
        {"src": "edge", "dst": "cloud", "rate": "10mbit", "delay": "30ms"},
        {"src": "fog", "dst": "cloud", "rate": "1gbit", "delay": "2ms"},
    ],
}


def test_simulators_move_to_the_fast_link_when_the_trainer_host_is_full() -> None:
    plan = place_services(Infrastructure.from_dict(BASE))
    assert plan.status == "OPTIMAL"
    assert plan.assignment["trainer#1"] == "cloud-1"
    # the cloud host is full with the trainer; the fog host has the fast link to it
    assert plan.assignment["simulator#1"] == plan.assignment["simulator#2"] == "fog-1"
    assert plan.slow_traffic_mbit == pytest.approx(40.0)  # over the 1gbit fog link, far cheaper than 10mbit
    assert plan.cost == pytest.approx(40 * (1 / 1000 + 0.002), rel=1e-3)


def test_capacities_force_the_slow_link_and_infeasible_is_one_line() -> None:
    data = {**BASE, "layers": [dict(BASE["layers"][0]), {**BASE["layers"][1], "cpu": 1}, BASE["layers"][2]]}
    plan = place_services(Infrastructure.from_dict(data))
    on_fog = [k for k, v in plan.assignment.items() if v == "fog-1"]
    assert len(on_fog) == 1  # one simulator fits the fog host; the other stays on the edge
    assert any(v.startswith("edge-") for v in plan.assignment.values())
    data["layers"][0] = {**data["layers"][0], "cpu": 1}
    data["layers"][2] = {**data["layers"][2], "cpu": 0.5}
    with pytest.raises(ServicePlacementError, match="no placement fits") as info:
        place_services(Infrastructure.from_dict(data))
    assert "\n" not in str(info.value)


def test_engage_place_command_on_a_shipped_infrastructure() -> None:
    engage = [sys.executable, "-m", "engage.core.cli"]
    proc = subprocess.run([*engage, "place", "netns_edge_cloud"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cloud-1: trainer#1" in proc.stdout and "OPTIMAL" in proc.stdout
    bad = subprocess.run([*engage, "place", "nowhere"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("engage place: 'nowhere' is neither a file")
