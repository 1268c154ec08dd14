"""Jobs of several ranks on Slurm, without a cluster: the job's shape from the provider's options,
the script that starts one runner a task, the trainer checked against the shape, and each task's
rank and rendezvous (the cluster runs one in ``test_deploy_slurm_sweep.py``)."""

from __future__ import annotations

import socket

import psutil
import pytest
from omegaconf import OmegaConf

from engage.deploy.infrastructure import Infrastructure, InfrastructureError
from engage.deploy.providers.slurm import SlurmProvider, check_ranks
from engage.deploy.slurm.ranks import RankError, TaskRank, interface_towards


def _infrastructure(**options) -> Infrastructure:
    return Infrastructure.from_dict(
        {"provider": "slurm", "layers": [{"name": "slurm", "hosts": 2}], "options": options}
    )


def test_a_multi_node_job_asks_slurm_for_its_shape_and_starts_one_runner_a_task(tmp_path):
    provider = SlurmProvider(_infrastructure(nodes=2, ntasks_per_node=4, gpus_per_node=4, cpus_per_task=8), tmp_path)
    assert provider.ranks_per_job == 8
    flags = provider._flags()
    assert {"--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=8"} <= set(flags), flags
    command = ["python", "-m", "engage.deploy.runner", "jobs/0"]
    assert provider._tasks(command) == ["srun", "--kill-on-bad-exit=1", "--cpus-per-task=8", *command]
    one = SlurmProvider(_infrastructure(), tmp_path)
    assert one.ranks_per_job == 1 and one._tasks(command) == command
    # one task is asked for too, for Slurm to set SLURM_NTASKS, which Lightning looks for
    assert [flag for flag in one._flags() if flag.startswith(("--nodes", "--ntasks"))] == [
        "--nodes=1",
        "--ntasks-per-node=1",
    ]


@pytest.mark.parametrize(
    ("options", "field"),
    [({"nodes": 0}, "nodes"), ({"ntasks_per_node": "two"}, "ntasks_per_node"), ({"gpus_per_node": 0}, "gpus_per_node"),
     ({"nodes": True}, "nodes")],
)  # fmt: skip
def test_a_job_shape_that_is_not_a_whole_number_is_one_line_naming_the_field(tmp_path, options, field):
    with pytest.raises(InfrastructureError) as refused:
        SlurmProvider(_infrastructure(**options), tmp_path)
    assert str(refused.value).startswith(f"infrastructure.options.{field} is ") and "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("trainer", "message"),
    [
        ({"num_nodes": 1, "devices": 2}, "trainer.num_nodes is 1; set trainer.num_nodes=2"),
        ({"num_nodes": 2, "devices": 1}, "trainer.devices is 1; set trainer.devices=2"),
        ({"num_nodes": 2, "devices": [0]}, "trainer.devices is 1; set trainer.devices=2"),
        ({"max_epochs": 1}, "trainer.num_nodes is 1; set trainer.num_nodes=2"),  # Lightning's default
        ({"num_nodes": 2, "devices": 2}, None),
        ({"num_nodes": 2, "devices": "2"}, None),
        ({"num_nodes": 2, "devices": [0, 1]}, None),
        ({"num_nodes": 2, "devices": "auto"}, None),  # what each task sees: Lightning checks it there
        (None, None),  # not a Lightning app: nothing to compare
    ],
)
def test_the_trainer_must_have_the_jobs_shape(trainer, message):
    config = OmegaConf.create({} if trainer is None else {"trainer": trainer})
    infrastructure = _infrastructure(nodes=2, ntasks_per_node=2)
    if message is None:
        check_ranks(infrastructure, config)
        return
    with pytest.raises(InfrastructureError) as refused:
        check_ranks(infrastructure, config)
    assert message in str(refused.value) and str(refused.value).startswith("hydra.launcher.infrastructure.options.")
    check_ranks(_infrastructure(), config)  # one rank a job: any trainer


def test_a_task_knows_its_rank_only_when_srun_started_it():
    env = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURMD_NODENAME": "gpu-7"}
    rank = TaskRank.current(4, environ=env)
    assert (rank.rank, rank.ranks, rank.node, rank.records) == (3, 4, "gpu-7", False)
    assert TaskRank.current(4, environ={**env, "SLURM_PROCID": "0"}).records
    with pytest.raises(RankError, match="SLURM_PROCID=None"):
        TaskRank.current(4, environ={})
    # the batch script itself, without srun: a step of one task, rank 0 of a job of four
    with pytest.raises(RankError, match="SLURM_STEP_NUM_TASKS=1"):
        TaskRank.current(4, environ={"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "1"})


def test_the_ranks_meet_where_the_user_says_else_at_the_interface_towards_the_first_node():
    rank = TaskRank(1, 2, "n2")
    assert rank.rendezvous({"MASTER_ADDR": "10.0.0.1", "GLOO_SOCKET_IFNAME": "ib0"}) == {}
    assert TaskRank(0, 1, "n1").rendezvous({"SLURM_JOB_NODELIST": "n[1-2]"}) == {}  # one rank: nothing to meet
    assert interface_towards("127.0.0.1") is None  # never the loopback, which other nodes cannot reach
    found = {
        a.address: name
        for name, addresses in psutil.net_if_addrs().items()
        for a in addresses
        if a.family == socket.AF_INET and name != "lo"
    }
    if not found:
        pytest.skip("this machine has no IPv4 interface besides the loopback")
    address, name = next(iter(found.items()))
    assert interface_towards(address) == name
    assert rank.rendezvous({"MASTER_ADDR": address}) == {"GLOO_SOCKET_IFNAME": name}
    assert rank.describe({"MASTER_ADDR": address}) == f"rank 1 of 2 on node n2 (MASTER_ADDR={address})"
