"""Several simulations in one Slurm batch job (``data.executor_options.simulations_per_job``).

A batch job costs a scheduling cycle, a prolog and a node's start-up however short the
simulation it runs; a job of several pays them once. Each simulation of such a job is one job
step (``srun --exact``, one task, its own CPUs and memory), so that one can be cancelled
(``scancel JOB.STEP``) while the others run on, and each writes its exit code to a status file
in the run's folder when its step ends: without an accounting daemon, Slurm forgets a step's
exit code as soon as the step ends.

Example (the script a job of two simulations runs)::

    >>> from pathlib import Path
    >>> tasks = [SlurmTask(Path("/run/logs"), f"sim-{i}-1", ["python", "sim.py"], {}) for i in (3, 4)]
    >>> script = group_script(tasks, step_flags=["--cpus-per-task=1", "--mem=512M"], extra=[])
    >>> script.count("srun --ntasks=1 --nodes=1 --exact"), script.splitlines()[-1]
    (2, 'wait')
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from engage.core.config.validate import ConfigError
from engage.core.executors import SimulationProcess, log_tail
from engage.deploy.slurm.executor import (
    SLURM_FAILURE,
    SlurmProcess,
    batch_script,
    discard_keys,
    scancel,
    slurm_path,
    source_keys,
)
from engage.deploy.slurm.values import MEMORY

#: how long the executor's submission thread waits for further simulations to share a job
GROUP_WAIT_S = 0.5
#: how often a simulation's status file is looked at while its job runs
STATUS_INTERVAL_S = 0.5


#: MiB a job of several simulations asks for beyond their steps', per simulation: the batch
#: script's shell and one ``srun`` client each, which Slurm counts in the job's memory
BATCH_STEP_MIB = 32
_MIB = {"K": 1 / 1024, "M": 1, "": 1, "G": 1024, "T": 1024**2}


def job_memory(mem: str | None, simulations: int, field: str) -> str:
    """Slurm's ``--mem`` for a job of ``simulations`` steps of ``mem`` each (``mem`` stays what
    one simulation needs, however many share its job), in MiB, with :data:`BATCH_STEP_MIB` a
    simulation for the batch script. A step without a memory size would take the whole job's
    where memory is a consumable resource, and the others wait for it: ``mem`` is required.

    >>> job_memory("512M", 3, "mem"), job_memory("2G", 2, "mem")
    ('1632M', '4160M')
    """
    match = MEMORY.fullmatch(str(mem).strip()) if mem is not None else None
    if match is None:
        raise ConfigError(
            f"{field}: {mem!r} is not a Slurm memory size, and each simulation of a job of several needs one; "
            "give e.g. 512M or 2G (what one simulation needs)"
        )
    step = int(match.group(1)) * _MIB[match.group(2).upper()]
    return f"{math.ceil(simulations * (step + BATCH_STEP_MIB))}M"


class SlurmTask(SimulationProcess):
    """One simulation of a batch job that runs several, as a job step.

    Made when the simulation is started and queued for the executor's submission thread, which
    joins it to a job (:meth:`attach`) with the simulations queued beside it. Its exit code is
    its step's (read from its status file); when the job ends before the step wrote one (a node
    failure, a cancelled job, the time limit), the attempt failed. :meth:`kill` cancels its step
    alone while other simulations of the job still run, and the job with the last one.
    """

    def __init__(self, folder: Path, stem: str, command: list[str], env: Mapping[str, str], keys: Path | None = None):
        self.stem = stem
        self.command = list(command)
        self.env = dict(env)
        self.keys = keys
        self.log_path = folder / f"{stem}.log"
        self.status_path = folder / f"{stem}.status"
        self.cancel_path = folder / f"{stem}.cancel"
        # a resumed run starts an attempt under the same name: what an earlier one left is not its
        for stale in (self.status_path, self.cancel_path, self.status_path.with_name(f"{stem}.status.part")):
            stale.unlink(missing_ok=True)
        self.job: SlurmProcess | None = None  # its batch job, once submitted
        self.siblings: list[SlurmTask] = [self]  # the simulations of that job, itself included
        self.step_name = ""
        self._code: int | None = None
        self._killed = False
        self._checked = -float("inf")
        self._lock = threading.Lock()

    # -- the job it runs in

    def attach(self, job: SlurmProcess, siblings: list[SlurmTask], step_name: str) -> bool:
        """Join ``job`` as step ``step_name``; False (and left out) when killed before."""
        with self._lock:
            if self._killed or not job.wanted:
                return False
            self.job, self.siblings, self.step_name = job, siblings, step_name
            return True

    @property
    def wanted(self) -> bool:
        return not self._killed

    @property
    def pid(self) -> int | None:
        return None if self.job is None else self.job.pid

    @property
    def host(self) -> str:
        return "" if self.job is None else self.job.host

    @property
    def starting(self) -> bool:
        """Waiting for its job's ``sbatch``."""
        return self._code is None and (self.job is None or self.job.starting)

    # -- SimulationProcess

    def poll(self) -> int | None:
        if self._code is not None:
            return self._code
        job = self.job
        if job is None:
            return None
        now = time.monotonic()
        if now - self._checked >= STATUS_INTERVAL_S:
            self._checked = now
            code = self._status()
            if code is not None:
                code = self._settle(code)
                if all(task._code is not None for task in self.siblings):
                    job.withdraw()  # every step wrote its code: the job ends on its own, unwatched
                return code
        if job.poll() is None:
            return None
        # the job ended: what the step wrote, else it never ended on its own (node failure,
        # cancelled job, time limit, or never started)
        code = self._status()
        return self._settle(SLURM_FAILURE if code is None else code)

    def kill(self) -> None:
        last = self._give_up()
        job = self.job
        if job is None:
            return  # the submission thread leaves it out
        if last:
            job.kill()  # nothing of the job is wanted any longer
        elif job.job_id is not None and job.poll() is None:
            cancel_step(job.job_id, self.step_name)

    def withdraw(self) -> str | None:
        """Never run from now on; the job's id when this was its last simulation wanted and
        the job may still run (for the caller to cancel), else None."""
        last = self._give_up()
        return self.job.withdraw() if last and self.job is not None else None

    def _give_up(self) -> bool:
        """Mark it killed (its cancel file stops a step that has not started); whether every
        simulation of its job is now ended or given up."""
        with self._lock:
            self._killed = True
            if self._code is None:
                self._code = SLURM_FAILURE  # never polled as running again
        try:
            self.cancel_path.touch()
        except OSError:
            pass  # the run's folder is gone: nothing starts from it either
        discard_keys(self.keys)
        return all(task._code is not None for task in self.siblings)

    def stderr_tail(self, limit: int = 4000) -> str:
        tail = log_tail(self.log_path, limit)
        job = self.job
        if job is None:
            return tail
        if not tail.strip():
            return job.stderr_tail(limit)  # sbatch's refusal, or srun's own words
        if job.ended and self._status() is None:  # the job ended before the step wrote its code
            return job.headed_tail(self.log_path, limit)
        return tail

    def _status(self) -> int | None:
        try:
            text = self.status_path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.lstrip("-").isdigit() else SLURM_FAILURE

    def _settle(self, code: int) -> int:
        with self._lock:
            if self._code is None:
                self._code = code
        discard_keys(self.keys)  # its step read and deleted it, unless it never ran
        return self._code


def group_script(tasks: list[SlurmTask], step_flags: list[str], extra: list[str]) -> str:
    """The batch script of a job running ``tasks``: each in a subshell that skips it when it was
    cancelled before its turn, sources and deletes its keys' file, runs it as a job step and
    writes the step's exit code (atomically: a reader never sees half a number)."""
    q = shlex.quote
    lines = []
    for task in tasks:
        lines.append("(")
        lines.append(f"  test -e {q(str(task.cancel_path))} && exit 0")
        lines += [f"  export {k}={q(v)}" for k, v in task.env.items()]
        lines += [f"  {line}" for line in source_keys(task.keys)]
        step = ["srun", "--ntasks=1", "--nodes=1", "--exact", *step_flags, f"--job-name={task.step_name}"]
        step += [f"--output={slurm_path(task.log_path)}", "--open-mode=append"]
        # checked again inside the step: one cancelled while srun waited for its CPUs never runs
        step += ["sh", "-c", 'test -e "$0" && exit 0; exec "$@"', str(task.cancel_path), *task.command]
        lines.append(f"  {shlex.join(step)}")
        part = q(f"{task.status_path}.part")
        lines.append(f"  echo $? > {part} && mv {part} {q(str(task.status_path))}")
        lines.append(") &")
    lines.append("wait")
    return batch_script(extra, lines)


def cancel_step(job_id: str, step_name: str) -> None:
    """Cancel the step named ``step_name`` of job ``job_id`` if it runs (found with ``squeue
    --steps``; one that has not started is held back by its cancel file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUEUE_")}
    try:
        out = subprocess.run(
            ["squeue", "--all", "--steps", "--noheader", f"--jobs={job_id}", "--format=%i|%j"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return  # its simulation's key is revoked: a step that runs on is told to stop when it speaks
    steps = [i for i, _, name in (line.partition("|") for line in out.stdout.split()) if name == step_name]
    if steps:
        scancel(*steps)
