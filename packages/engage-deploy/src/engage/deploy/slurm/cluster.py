"""A real one-node Slurm cluster on this machine: munged, slurmctld and slurmd in a folder.

Used by the tests of the Slurm executor and by documentation examples. It needs root (slurmd
runs jobs as their submitting user) and Debian's ``slurm-wlm`` and ``munge`` packages. There is
no accounting daemon (slurmdbd): job states are read with ``scontrol show job -o``, so finished
jobs stay visible for ``MinJobAge`` seconds only.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo")


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


class LocalSlurmCluster:
    """Start and stop a one-node cluster whose configuration, state and logs live in one folder.

    >>> cluster = LocalSlurmCluster()          # doctest: +SKIP
    >>> cluster.start(); cluster.env["SLURM_CONF"]  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        partition: str = "debug",
        cpus: int = 2,
        min_job_age_s: int = 300,
    ) -> None:
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="engage-slurm-"))
        self.partition = partition
        self.cpus = cpus
        self.min_job_age_s = min_job_age_s
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self._procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment that points Slurm's commands at this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

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
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=engage",
                    f"SlurmctldHost={self.node}",
                    "SlurmUser=root",
                    "AuthType=auth/munge",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "SlurmdTimeout=10",
                    f"MinJobAge={self.min_job_age_s}",
                    "ReturnToService=2",
                    "JobCompType=jobcomp/none",
                    "AccountingStorageType=accounting_storage/none",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool'}",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd.pid'}",
                    f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
                    f"NodeName={self.node} CPUs={self.cpus} RealMemory={self._memory_mb()} State=UNKNOWN",
                    f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
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
        self._spawn([_which("slurmd"), "-D", "-f", str(self.conf)])
        self._wait(self._idle, timeout_s, "the node did not become idle")
        return self

    def _idle(self) -> bool:
        out = subprocess.run([_which("sinfo"), "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip().startswith(("idle", "mix", "alloc"))

    def _spawn(self, argv: list, user: str | None = None) -> None:
        log = open(self.root / "log" / f"{Path(argv[0]).name}-{len(self._procs)}.out", "wb")
        self._procs.append(
            subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, user=user, group=user)
        )

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
        if self._procs and all(p.poll() is None for p in self._procs):
            jobs = subprocess.run(
                [_which("squeue") or "squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True
            ).stdout.split()
            if jobs:
                subprocess.run([_which("scancel") or "scancel", *jobs], env=self.env, capture_output=True)
                time.sleep(1)  # let slurmstepd end the job steps before slurmd goes
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()

    def __enter__(self) -> LocalSlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
