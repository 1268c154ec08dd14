"""The deploy executor starts simulations on the simulation layer's hosts, round robin."""

from __future__ import annotations

import json
import sys

import psutil
import pytest

from engage.core.executors import LaunchRequest
from engage.deploy.executor import DeployExecutor

HOSTS = [
    {"name": "cloud-1", "layer": "cloud", "address": "10.9.1.2", "exec_prefix": [], "services": ["trainer"]},
    {"name": "edge-1", "layer": "edge", "address": "10.9.2.2", "exec_prefix": [], "services": ["simulator"]},
    {"name": "edge-2", "layer": "edge", "address": "10.9.2.3", "exec_prefix": [], "services": ["simulator"]},
]


def test_round_robin_on_the_simulator_layer(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ENGAGE_DEPLOY_HOSTS", json.dumps(HOSTS))
    monkeypatch.setenv("ENGAGE_DEPLOY_HOST", "cloud-1")
    executor = DeployExecutor(log_dir=str(tmp_path))
    assert executor.layer == "edge" and executor.bind_host() == "10.9.1.2"
    started = []
    for sim in range(3):
        request = LaunchRequest(
            [sys.executable, "-c", "import os; print(os.environ['SIM'])"], sim, env={"SIM": str(sim)}
        )
        process = executor.start(request)
        assert process.wait(timeout=60) == 0
        started.append(process.host)
        assert process.stderr_tail().strip() == str(sim)
    assert started == ["edge-1", "edge-2", "edge-1"]


def test_without_the_launcher_it_says_what_to_do(monkeypatch) -> None:
    monkeypatch.delenv("ENGAGE_DEPLOY_HOSTS", raising=False)
    with pytest.raises(ValueError, match="needs the engage launcher"):
        DeployExecutor()


def test_simulations_follow_the_optimized_placement(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ENGAGE_DEPLOY_HOSTS", json.dumps(HOSTS))
    monkeypatch.setenv("ENGAGE_DEPLOY_HOST", "cloud-1")
    plan = {"trainer#1": "cloud-1", "simulator#2": "edge-2", "simulator#1": "cloud-1", "simulator#10": "edge-1"}
    monkeypatch.setenv("ENGAGE_DEPLOY_PLACEMENT", json.dumps(plan))
    executor = DeployExecutor(log_dir=str(tmp_path))
    assert [h["name"] for h in executor.targets] == ["cloud-1", "edge-2", "edge-1"]  # instance order
    # an explicit layer wins over the plan
    assert [h["name"] for h in DeployExecutor(log_dir=str(tmp_path), layer="edge").targets] == ["edge-1", "edge-2"]


def test_secrets_reach_a_remote_host_on_stdin_never_on_its_command_line(monkeypatch, tmp_path) -> None:
    """A host reached with a command string (``ssh host 'env K=V cmd'``, here ``sh -c``): the
    attempt's keys arrive in its environment, read from its standard input."""
    remote = [{**HOSTS[1], "remote": True, "exec_prefix": ["sh", "-c"]}]
    monkeypatch.setenv("ENGAGE_DEPLOY_HOSTS", json.dumps([HOSTS[0], *remote]))
    monkeypatch.setenv("ENGAGE_DEPLOY_HOST", "cloud-1")
    executor = DeployExecutor(log_dir=str(tmp_path))
    assert not executor.shares_filesystem
    script = "import os, sys, time; print(os.environ['SIM'], os.environ['ENGAGE_KEYS'], flush=True); time.sleep(1)"
    secret = '{"secret": "k3y with spaces; and $signs"}'
    request = LaunchRequest([sys.executable, "-c", script], 4, env={"SIM": "4"}, secrets={"ENGAGE_KEYS": secret})
    process = executor.start(request)
    cmdline = " ".join(psutil.Process(process.pid).cmdline())
    assert "k3y" not in cmdline
    assert process.wait(timeout=60) == 0
    assert process.stderr_tail().strip() == f"4 {secret}"


def test_the_trainer_on_a_remote_host_binds_its_one_address(monkeypatch, tmp_path) -> None:
    hosts = [{**HOSTS[0], "remote": True, "address": "localhost"}, {**HOSTS[1], "remote": True}]
    monkeypatch.setenv("ENGAGE_DEPLOY_HOSTS", json.dumps(hosts))
    monkeypatch.setenv("ENGAGE_DEPLOY_HOST", "cloud-1")
    assert DeployExecutor(log_dir=str(tmp_path)).bind_host() == "127.0.0.1"  # never 0.0.0.0
    hosts[0]["address"] = "no-such-host.invalid"
    monkeypatch.setenv("ENGAGE_DEPLOY_HOSTS", json.dumps(hosts))
    with pytest.raises(ValueError, match=r"cannot resolve 'no-such-host\.invalid'"):
        DeployExecutor(log_dir=str(tmp_path)).bind_host()
