"""A sweep job that runs as several Slurm tasks: this process's rank, and where the ranks meet.

With ``nodes`` or ``ntasks_per_node`` above 1 (the ``slurm`` provider's options), a job's batch
script starts the job runner with ``srun``, once a task; Lightning's ``SLURMEnvironment`` then
gives each task its rank (``SLURM_PROCID``) in the job's fit. :class:`TaskRank` is the runner's
record of its own task. Before the fit, :meth:`TaskRank.rendezvous` names what the ranks need to
find each other where node names do not resolve, or resolve to an address other nodes cannot
reach (the loopback): ``MASTER_ADDR``, the first node's address as Slurm knows it
(``NodeAddr``), and ``GLOO_SOCKET_IFNAME``, the interface this node reaches that address
through, or, where that is the loopback, the controller (gloo otherwise binds the address its
host name resolves to). A value the user set wins.

Example::

    >>> rank = TaskRank.current(1, environ={})
    >>> rank.rank, rank.ranks, rank.records
    (0, 1, True)
    >>> TaskRank.current(2, environ={"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURMD_NODENAME": "n2"})
    TaskRank(rank=1, ranks=2, node='n2')
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from engage.core.hosts import node_name
from engage.core.rank_env import MASTER_ADDR_ENV

#: the variables :meth:`TaskRank.rendezvous` sets, each only when the user has not
RENDEZVOUS_VARIABLES = (MASTER_ADDR_ENV, "GLOO_SOCKET_IFNAME")


class RankError(RuntimeError):
    """The job runs as several ranks, but this process was not started as one of them."""


@dataclass(frozen=True)
class TaskRank:
    """One task of a job: its ``rank`` of ``ranks``, on ``node``."""

    rank: int
    ranks: int
    node: str

    @classmethod
    def current(cls, ranks: int, environ: Mapping[str, str] | None = None) -> TaskRank:
        """This process's rank in a job that runs as ``ranks`` tasks (from Slurm's variables when
        ``ranks`` is above 1); :class:`RankError` when Slurm did not start it as one of them."""
        env = os.environ if environ is None else environ
        node = node_name(env)
        if ranks <= 1:
            return cls(0, 1, node)
        # the step's task count, which srun sets: the batch script itself is a step of one task
        # with SLURM_PROCID=0, whatever the job asked for
        procid, ntasks = env.get("SLURM_PROCID"), env.get("SLURM_STEP_NUM_TASKS")
        if procid is None or ntasks != str(ranks):
            raise RankError(
                f"the job runs as {ranks} ranks, one a Slurm task started by srun, but this process has "
                f"SLURM_PROCID={procid} and SLURM_STEP_NUM_TASKS={ntasks}"
            )
        return cls(int(procid), ranks, node)

    @property
    def records(self) -> bool:
        """Whether this process records the job's outcome (rank 0 does, for every rank)."""
        return self.rank == 0

    def rendezvous(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The variables to set for the ranks to meet (see the module doc); empty for one rank."""
        env = os.environ if environ is None else environ
        if self.ranks == 1:
            return {}
        found: dict[str, str] = {}
        root = env.get(MASTER_ADDR_ENV) or root_node_address(env.get("SLURM_JOB_NODELIST", ""))
        if root and MASTER_ADDR_ENV not in env:
            found[MASTER_ADDR_ENV] = root
        if root and "GLOO_SOCKET_IFNAME" not in env:
            # on the first node its own name may resolve to a loopback address (127.0.1.1): the
            # interface towards the controller is then the one other nodes reach it through
            interface = interface_towards(root) or interface_towards(controller_host())
            if interface:
                found["GLOO_SOCKET_IFNAME"] = interface
        return found

    def describe(self, environ: Mapping[str, str] | None = None) -> str:
        """One line on where this rank runs and meets the others (the job's log shows each)."""
        env = os.environ if environ is None else environ
        meet = ", ".join(f"{name}={env[name]}" for name in RENDEZVOUS_VARIABLES if env.get(name))
        return f"rank {self.rank} of {self.ranks} on node {self.node}" + (f" ({meet})" if meet else "")


def root_node_address(nodelist: str) -> str | None:
    """The address Slurm reaches the first node of ``nodelist`` at (its ``NodeAddr``, which is
    its name unless the cluster says otherwise); ``None`` when ``scontrol`` cannot tell."""
    from engage.deploy.slurm.executor import parse_job_line

    if not nodelist:
        return None
    try:
        names = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
        if not names:
            return None
        line = subprocess.run(
            ["scontrol", "show", "node", "-o", names[0]], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_job_line(line).get("NodeAddr") or names[0]


def controller_host() -> str:
    """The host of ``slurmctld``, from ``scontrol show config`` (empty when it cannot tell)."""
    from engage.deploy.slurm.executor import slurmctld_endpoint

    try:
        return slurmctld_endpoint()[0]
    except (OSError, ValueError, subprocess.SubprocessError):
        return ""


def interface_towards(address: str) -> str | None:
    """The network interface holding this machine's address on its route to ``address`` (the
    loopback is never it: other nodes cannot reach it); ``None`` when there is none."""
    import psutil

    from engage.deploy.providers.base import address_towards

    if not address:
        return None
    try:
        local = address_towards(address)
    except OSError:
        return None
    for name, addresses in psutil.net_if_addrs().items():
        if name != "lo" and any(a.family == socket.AF_INET and a.address == local for a in addresses):
            return name
    return None
