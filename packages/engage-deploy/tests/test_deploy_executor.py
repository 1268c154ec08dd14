"""The deploy executor starts simulations on the simulation layer's hosts, round robin, as the
job's contract describes them."""

from __future__ import annotations

import dataclasses
import sys

import psutil
import pytest

from engage.core.executors import LaunchRequest
from engage.deploy.executor import DeployExecutor
from engage.deploy.job import JOB_FILE_ENV, HostRecord, JobContract

HOSTS = (
    HostRecord("cloud-1", "cloud", "10.9.1.2", services=("trainer",)),
    HostRecord("edge-1", "edge", "10.9.2.2", services=("simulator",)),
    HostRecord("edge-2", "edge", "10.9.2.3", services=("simulator",)),
)


def _job(tmp_path, hosts=HOSTS, placement=None) -> JobContract:
    return JobContract(
        index=0,
        attempt=1,
        overrides=(),
        folder=str(tmp_path),
        host="cloud-1",
        hosts=tuple(hosts),
        placement=placement or {},
    )


def test_round_robin_on_the_simulator_layer_of_the_current_job(monkeypatch, tmp_path) -> None:
    # inside a sweep's job, the runner points the process at its contract
    monkeypatch.setenv(JOB_FILE_ENV, str(_job(tmp_path).write(tmp_path)))
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
    monkeypatch.delenv(JOB_FILE_ENV, raising=False)
    with pytest.raises(ValueError, match="needs the engage launcher"):
        DeployExecutor()


def test_simulations_follow_the_optimized_placement(tmp_path) -> None:
    plan = {"trainer#1": "cloud-1", "simulator#2": "edge-2", "simulator#1": "cloud-1", "simulator#10": "edge-1"}
    job = _job(tmp_path, placement=plan)
    executor = DeployExecutor(log_dir=str(tmp_path), job=job)
    assert [h.name for h in executor.targets] == ["cloud-1", "edge-2", "edge-1"]  # instance order
    # an explicit layer wins over the plan
    assert [h.name for h in DeployExecutor(log_dir=str(tmp_path), layer="edge", job=job).targets] == [
        "edge-1",
        "edge-2",
    ]
    with pytest.raises(ValueError, match=r"data\.executor_options\.layer='fog' names no layer with hosts"):
        DeployExecutor(log_dir=str(tmp_path), layer="fog", job=job)


def test_secrets_reach_a_remote_host_on_stdin_never_on_its_command_line(tmp_path) -> None:
    """A host reached with a command string (``ssh host 'env K=V cmd'``, here ``sh -c``): the
    attempt's keys arrive in its environment, read from its standard input."""
    remote = dataclasses.replace(HOSTS[1], remote=True, exec_prefix=("sh", "-c"))
    executor = DeployExecutor(log_dir=str(tmp_path), job=_job(tmp_path, hosts=(HOSTS[0], remote)))
    assert not executor.shares_filesystem
    script = "import os, sys, time; print(os.environ['SIM'], os.environ['ENGAGE_KEYS'], flush=True); time.sleep(1)"
    secret = '{"secret": "k3y with spaces; and $signs"}'
    request = LaunchRequest([sys.executable, "-c", script], 4, env={"SIM": "4"}, secrets={"ENGAGE_KEYS": secret})
    process = executor.start(request)
    cmdline = " ".join(psutil.Process(process.pid).cmdline())
    assert "k3y" not in cmdline
    assert process.wait(timeout=60) == 0
    assert process.stderr_tail().strip() == f"4 {secret}"


def test_the_trainer_on_a_remote_host_binds_its_one_address(tmp_path) -> None:
    trainer = dataclasses.replace(HOSTS[0], remote=True, address="localhost")
    edge = dataclasses.replace(HOSTS[1], remote=True)
    assert DeployExecutor(job=_job(tmp_path, hosts=(trainer, edge))).bind_host() == "127.0.0.1"  # never 0.0.0.0
    unknown = dataclasses.replace(trainer, address="no-such-host.invalid")
    with pytest.raises(ValueError, match=r"cannot resolve 'no-such-host\.invalid'"):
        DeployExecutor(job=_job(tmp_path, hosts=(unknown, edge))).bind_host()
