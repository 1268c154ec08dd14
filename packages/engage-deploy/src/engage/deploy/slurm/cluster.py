"""A real Slurm cluster on this machine: munged, slurmctld and slurmd in a folder.

Used by the tests of the Slurm executor and by documentation examples. It needs root (slurmd
runs jobs as their submitting user) and Debian's ``slurm-wlm`` and ``munge`` packages. There is
no accounting daemon (slurmdbd): job states are read with ``squeue --states=all`` or
``scontrol show job -o``, so finished jobs stay visible for ``MinJobAge`` seconds only.

The cluster has this machine as its first node (partition ``debug``) and, optionally, further
nodes that are network-namespace hosts (:class:`~engage.deploy.providers.netns.NetnsProvider`),
each with its own ``slurmd`` in its namespace (partition ``nodes``): jobs there reach other
nodes, and the trainer, over the hosts' network only, as on a real cluster. The daemons listen
on free ports chosen at start, so several clusters can run side by side.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from engage.deploy.slurm.executor import SLURM_CONF_ENV

if TYPE_CHECKING:
    from engage.deploy.providers.base import Host

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "nsenter")


class SlurmUnavailable(RuntimeError):
    """This machine cannot run a local cluster (not root, or a binary is missing)."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")


def unavailable_reason() -> str | None:
    """Why a local cluster cannot start here, or None when it can."""
    if os.geteuid() != 0:
        return "a local Slurm cluster needs root"
    missing = [b for b in BINARIES if _which(b) is None]
    if missing:
        return f"Slurm binaries missing ({', '.join(missing)}): install slurm-wlm and munge"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "user munge missing: install munge"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


class LocalSlurmCluster:
    """Start and stop a cluster whose configuration, state and logs live in one folder.

    ``nodes`` are network-namespace hosts (from a deployed ``NetnsProvider``) that become compute
    nodes of partition ``nodes_partition``, each running its ``slurmd`` inside its namespace;
    ``controller_address`` is then this machine's address on their network (the provider's
    ``launcher_address()``), where they reach ``slurmctld``.

    >>> with LocalSlurmCluster() as cluster:      # doctest: +SKIP
    ...     print(cluster.env["SLURM_CONF"])      # for sbatch, sinfo and engage run
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        partition: str = "debug",
        cpus: int = 2,
        min_job_age_s: int = 300,
        nodes: Sequence[Host] = (),
        nodes_partition: str = "nodes",
        controller_address: str | None = None,
        slurmd_timeout_s: int = 10,
        kill_wait_s: int = 30,
        message_timeout_s: int = 10,
    ) -> None:
        if nodes and controller_address is None:
            raise ValueError("nodes in namespaces need controller_address, this machine's address on their network")
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="engage-slurm-"))
        self.partition = partition
        self.cpus = cpus
        self.min_job_age_s = min_job_age_s
        self.slurmd_timeout_s = slurmd_timeout_s
        self.kill_wait_s = kill_wait_s
        self.message_timeout_s = message_timeout_s
        self.node = socket.gethostname().split(".")[0]
        self.nodes = list(nodes)
        self.nodes_partition = nodes_partition
        self.controller_address = controller_address
        self.conf = self.root / "slurm.conf"
        self.ctld_port = self.slurmd_port = 0
        self._procs: list[subprocess.Popen] = []
        self._slurmd: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        """The environment that points Slurm's commands at this cluster."""
        return {**os.environ, SLURM_CONF_ENV: str(self.conf)}

    def _memory_mb(self) -> int:
        total_kb = int(Path("/proc/meminfo").read_text().split()[1])
        return max(256, int(total_kb / 1024 * 0.8))

    def _write_files(self) -> None:
        r = self.root
        r.mkdir(parents=True, exist_ok=True)
        os.chmod(r, 0o755)  # munged (user munge) must reach its folder inside
        for sub in ("state", "spool", "log", "munge"):
            (r / sub).mkdir(parents=True, exist_ok=True)
        munge = pwd.getpwnam("munge")
        mdir = r / "munge"
        os.chown(mdir, munge.pw_uid, munge.pw_gid)
        os.chmod(mdir, 0o700)
        key = mdir / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chown(key, munge.pw_uid, munge.pw_gid)
        os.chmod(key, 0o400)
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        ctld = f"{self.node}({self.controller_address})" if self.controller_address else self.node
        node_lines = [
            f"NodeName={h.name} NodeAddr={h.address} CPUs={self.cpus} RealMemory={self._memory_mb()} State=UNKNOWN"
            for h in self.nodes
        ]
        if self.nodes:
            names = ",".join(h.name for h in self.nodes)
            node_lines.append(f"PartitionName={self.nodes_partition} Nodes={names} MaxTime=INFINITE State=UP")
        for name in (self.node, *(h.name for h in self.nodes)):
            (r / "spool" / name).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=engage",
                    f"SlurmctldHost={ctld}",
                    f"SlurmctldPort={self.ctld_port}",
                    f"SlurmdPort={self.slurmd_port}",
                    "SlurmUser=root",
                    "AuthType=auth/munge",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    # start batch jobs at the scheduler's next pass rather than up to 3 s later,
                    # Slurm's default: six 0.5 s jobs on two CPUs took 7.1 s, now 2.7 s (the waves
                    # were allocated 3 s apart, now about 1 s)
                    "SchedulerParameters=batch_sched_delay=0",
                    f"SlurmdTimeout={self.slurmd_timeout_s}",
                    # how long slurmctld and the commands wait on a message; measured here, a killed
                    # node was marked down 24 s after with 10 s (Slurm's default), 10 s with 3 s
                    f"MessageTimeout={self.message_timeout_s}",
                    # between SIGTERM and SIGKILL of a job's processes (cancelled, requeued, timed out)
                    f"KillWait={self.kill_wait_s}",
                    # the nodes share this machine's cores: take the CPUs declared here as they are
                    "SlurmdParameters=config_overrides",
                    f"MinJobAge={self.min_job_age_s}",
                    "ReturnToService=2",
                    "JobCompType=jobcomp/none",
                    "AccountingStorageType=accounting_storage/none",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool' / '%n'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd-%n.pid'}",
                    f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log' / 'slurmd-%n.log'}",
                    f"NodeName={self.node} CPUs={self.cpus} RealMemory={self._memory_mb()} State=UNKNOWN",
                    f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
                    *node_lines,
                    "",
                ]
            )
        )

    def start(self, timeout_s: float = 30.0) -> LocalSlurmCluster:
        """Start munged, slurmctld and slurmd; return once the node accepts jobs."""
        reason = unavailable_reason()
        if reason:
            raise SlurmUnavailable(reason)
        self._write_files()
        m = self.root / "munge"
        self._spawn(
            [
                _which("munged"), "-F", "--force",
                f"--key-file={m / 'munge.key'}", f"--socket={m / 'munge.socket'}",
                f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
            ],
            user="munge",
        )  # fmt: skip
        sock = m / "munge.socket"
        self._wait(lambda: sock.exists(), timeout_s, "munged did not create its socket")
        os.environ.setdefault("MUNGE_SOCKET", str(sock))
        # Slurm's munge plugin reads the socket from AuthInfo.
        text = self.conf.read_text().replace("AuthType=auth/munge", f"AuthType=auth/munge\nAuthInfo=socket={sock}")
        self.conf.write_text(text)
        self._spawn([_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._slurmd[self.node] = self._spawn([_which("slurmd"), "-D", "-f", str(self.conf)])
        for host in self.nodes:
            self.start_node(host.name)
        self._wait(self._idle, timeout_s, "the nodes did not become idle")
        return self

    def _host(self, name: str) -> Host:
        for host in self.nodes:
            if host.name == name:
                return host
        raise KeyError(f"{name!r} is not a node in a network namespace; nodes are {[h.name for h in self.nodes]}")

    def start_node(self, name: str) -> None:
        """Start (or start again) the ``slurmd`` of node ``name`` inside its network namespace.

        ``nsenter --net`` rather than ``ip netns exec``, which remounts ``/sys`` and so hides the
        cgroup hierarchy slurmd reads.
        """
        ns = self._host(name).extra["netns"]
        argv = [_which("nsenter"), f"--net=/run/netns/{ns}", _which("slurmd"), "-D", "-N", name, "-f", str(self.conf)]
        self._slurmd[name] = self._spawn(argv)

    def kill_node(self, name: str) -> None:
        """A power cut of node ``name``: its ``slurmd`` and every process in its namespace (the
        jobs' too) are killed at once; slurmctld marks it down once it has not answered for
        ``SlurmdTimeout`` (measured: about 10 s with a 5 s ``SlurmdTimeout`` and a 3 s
        ``MessageTimeout``, 24 s with Slurm's default 10 s ``MessageTimeout``)."""
        ns = self._host(name).extra["netns"]
        proc = self._slurmd.pop(name)
        proc.kill()
        proc.wait()
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass

    def node_states(self) -> dict[str, str]:
        """Each node's state as ``sinfo`` shows it (``idle``, ``alloc``, ``down*``, ...)."""
        out = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%N %t"], env=self.env, capture_output=True, text=True)
        if out.returncode != 0:
            return {}
        return dict(line.split(None, 1) for line in out.stdout.splitlines() if line.strip())

    def _idle(self) -> bool:
        states = self.node_states()
        wanted = [self.node, *(h.name for h in self.nodes)]
        return all(states.get(n, "").startswith(("idle", "mix", "alloc")) for n in wanted)

    def _spawn(self, argv: list, user: str | None = None) -> subprocess.Popen:
        log = open(self.root / "log" / f"{Path(argv[0]).name}-{len(self._procs)}.out", "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, user=user, group=user)
        self._procs.append(proc)
        return proc

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            if any(p.poll() is not None for p in self._procs):
                break
            time.sleep(0.2)
        self.stop()
        raise SlurmUnavailable(f"{what}; logs in {self.root / 'log'}")

    def stop(self) -> None:
        """Cancel the jobs left, then stop the daemons (slurmd first, munged last)."""
        controller_up = len(self._procs) > 1 and self._procs[1].poll() is None  # munged, then slurmctld
        if controller_up:
            jobs = subprocess.run(
                [_which("squeue") or "squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True
            ).stdout.split()
            if jobs:
                subprocess.run([_which("scancel") or "scancel", *jobs], env=self.env, capture_output=True)
                time.sleep(1)  # let slurmstepd end the job steps before slurmd goes
        from engage.deploy.processes import terminate

        for proc in reversed(self._procs):
            if proc.poll() is None:  # not reaped: its pid is still its own
                terminate(proc.pid, grace_s=10.0)
                proc.wait()
        self._procs.clear()
        self._slurmd.clear()

    def __enter__(self) -> LocalSlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
