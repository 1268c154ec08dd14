"""The ``slurm`` executor: each simulation a Slurm batch job (``data.executor=slurm``), and Slurm
job states as the simulation fleet sees them.

Without an accounting daemon (slurmdbd), a job's state is read with ``scontrol show job -o``,
which keeps a finished job for ``MinJobAge`` seconds. These helpers turn one such line into
the exit code of a simulation process: ``None`` while the job is pending or running, ``0`` when
it completed, and a non-zero code (which the fleet retries from the sample index) otherwise.
"""

from __future__ import annotations

import os
import secrets
import shlex
import subprocess
import time
import warnings
from pathlib import Path

from engage.core.config.validate import ConfigError
from engage.core.executors import Executor, LaunchRequest, SimulationProcess, log_tail
from engage.core.files import write_private

#: Exit code of a job that Slurm ended (failed, cancelled, timed out, out of memory, ...).
SLURM_FAILURE = 75

RUNNING_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING"}
)
FAILED_STATES = frozenset(
    {
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "CANCELLED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)


def parse_job_line(line: str) -> dict[str, str]:
    """The ``Key=Value`` fields of one ``scontrol show job -o`` line."""
    fields: dict[str, str] = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            fields[key] = value
    return fields


def job_state(line: str) -> str:
    """The base state of a job (``CANCELLED by 0`` and flags such as ``+`` dropped)."""
    state = parse_job_line(line).get("JobState", "")
    return state.split("+")[0].upper()


def exit_code_for(line: str) -> int | None:
    """The exit code a simulation process reports for this job line, or ``None`` while it runs."""
    state = job_state(line)
    if state in RUNNING_STATES:
        return None
    if state == "COMPLETED":
        return 0
    if state in FAILED_STATES:
        return SLURM_FAILURE
    raise ValueError(f"unknown Slurm job state {state!r}")


# --- the executor -----------------------------------------------------------------------------


class SlurmProcess(SimulationProcess):
    """One simulation submitted as a batch job; ``poll`` reads ``scontrol show job -o``."""

    def __init__(self, job_id: str, log_path: Path, max_pending_s: float, poll_interval_s: float = 0.5):
        self.job_id = job_id
        self.log_path = log_path
        self.max_pending_s = max_pending_s
        self._submitted = time.monotonic()
        self._interval = poll_interval_s
        self._last_check = 0.0
        self._code: int | None = None
        self.host = "slurm"

    @property
    def pid(self) -> int | None:
        return int(self.job_id)

    def _line(self) -> str | None:
        """The job's ``scontrol`` line; ``""`` when slurmctld does not answer now, ``None`` when
        it no longer knows the job (it forgets ended jobs after ``MinJobAge``)."""
        out = subprocess.run(["scontrol", "show", "job", "-o", self.job_id], capture_output=True, text=True)
        if out.returncode != 0 and "invalid job id" in (out.stderr or "").lower():
            return None
        return out.stdout.strip() if out.returncode == 0 else ""

    def poll(self) -> int | None:
        if self._code is not None:
            return self._code
        now = time.monotonic()
        if now - self._last_check < self._interval:
            return None
        self._last_check = now
        line = self._line()
        if line is None:  # ended and forgotten before it was seen ending: its outcome is unknown
            self._code = SLURM_FAILURE
            return self._code
        if not line:  # slurmctld does not answer now: ask again at the next poll
            return None
        if job_state(line) == "PENDING" and now - self._submitted > self.max_pending_s:
            warnings.warn(
                f"Slurm job {self.job_id} pending for over {self.max_pending_s:.0f} s "
                f"({parse_job_line(line).get('Reason', '?')}); cancelled, to be retried",
                stacklevel=2,
            )
            self.kill()
            self._code = SLURM_FAILURE
            return self._code
        try:
            self._code = exit_code_for(line)
        except ValueError:
            self._code = None
        return self._code

    def kill(self) -> None:
        subprocess.run(["scancel", self.job_id], capture_output=True)

    def stderr_tail(self, limit: int = 4000) -> str:
        return log_tail(self.log_path, limit)


class SlurmExecutor(Executor):
    """Simulations as Slurm batch jobs (``data.executor=slurm``), submitted with ``sbatch --parsable``.

    A simulation is a shell command, not a pickled Python function, so plain ``sbatch`` of a
    small batch script fits it better than submitit. Secrets are written to a ``0600`` file in
    the run's folder that the script reads and deletes, never put in the job's environment
    (slurmctld stores that). Options: ``partition``, ``time``, ``cpus_per_task``, ``mem``,
    ``account``, ``extra`` (further ``#SBATCH`` lines) and ``max_pending_s`` (default 600).

    When it is made, the executor checks the options with ``sbatch --test-only`` and, with
    ``check_folder`` (default), that a job on a compute node sees the folder it will run in (the
    current folder, where the run's folder and its logs, scripts and key files are made): the
    trainer writes a file with a random token there and a one-line job (``sbatch --wait``) must
    read the same token from it. A node-local folder fails this even where the same path exists
    on the node. A probe job still pending after ``probe_timeout_s`` is cancelled with a warning
    (a busy cluster cannot tell), and the run goes on.
    """

    shares_memory = False

    def __init__(
        self,
        log_dir: str | None = None,
        partition: str | None = None,
        time: str | None = None,
        cpus_per_task: int | None = None,
        mem: str | None = None,
        account: str | None = None,
        extra: list[str] | None = None,
        max_pending_s: float = 600.0,
        check_folder: bool = True,
        probe_timeout_s: float = 60.0,
    ):
        self.log_dir = Path(log_dir or os.getcwd())
        self.max_pending_s = float(max_pending_s)
        self.options = [
            f"--{flag}={value}"
            for flag, value in (
                ("partition", partition),
                ("time", time),
                ("cpus-per-task", cpus_per_task),
                ("mem", mem),
                ("account", account),
            )
            if value is not None
        ]
        self.extra = [str(line) for line in (extra or [])]
        self._processes: list[SlurmProcess] = []
        self._check()
        if check_folder:
            self._check_folder(Path(os.getcwd()), float(probe_timeout_s))

    def _check(self) -> None:
        try:
            out = subprocess.run(
                ["sbatch", "--test-only", *self.options, "--wrap", "true"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"data.executor=slurm: sbatch cannot run ({exc}); install Slurm's client") from None
        if out.returncode != 0:
            msg = " ".join(out.stderr.split())
            if "partition" in msg.lower():
                raise ConfigError(f"data.executor_options.partition: {msg}; pick one that `sinfo` lists") from None
            raise ConfigError(
                f"data.executor=slurm: {msg}; check that slurmctld is reachable (`sinfo`) and data.executor_options"
            ) from None

    def _check_folder(self, folder: Path, timeout_s: float) -> None:
        """Refuse (one line) a folder that a job on a compute node does not see as this host does."""
        token = secrets.token_hex(8)
        probe = folder / f".engage-probe-{token}"
        name = f"engage-probe-{token}"
        try:
            probe.write_text(token)
        except OSError as exc:
            raise ConfigError(f"data.executor=slurm: cannot write in the working folder {folder} ({exc})") from None
        command = f'test "$(cat {shlex.quote(str(probe))} 2>/dev/null)" = {token}'
        try:
            done = subprocess.run(
                [
                    *("sbatch", "--wait", "--parsable", f"--job-name={name}", "--output=/dev/null"),
                    *(*self.options, f"--chdir={folder}", "--wrap", command),
                ],
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            subprocess.run(["scancel", f"--name={name}"], capture_output=True)
            warnings.warn(
                f"data.executor=slurm: the job checking that compute nodes see {folder} did not run within "
                f"{timeout_s:.0f} s; going on unchecked",
                stacklevel=2,
            )
            return
        finally:
            probe.unlink(missing_ok=True)
        if done.returncode != 0:
            raise ConfigError(
                f"data.executor=slurm: compute nodes do not see the working folder {folder} as this host does "
                "(a job there could not read a file written here); run from a folder on a filesystem the nodes "
                "share, or set data.executor_options.check_folder=false"
            ) from None

    def start(self, request: LaunchRequest) -> SimulationProcess:
        folder = Path(request.log_dir or self.log_dir)
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"sim-{request.simulation_id}-{request.attempt}"
        lines = ["#!/bin/sh"]
        if request.secrets:
            keys = folder / f"{stem}.secrets"
            write_private(keys, "".join(f"export {k}={shlex.quote(v)}\n" for k, v in request.secrets.items()))
            lines += [f". {shlex.quote(str(keys))}", f"rm -f {shlex.quote(str(keys))}"]
        lines.append(f"exec {shlex.join(request.command)}")
        script = folder / f"{stem}.sbatch"
        script.write_text("\n".join(["#!/bin/sh", *(f"#SBATCH {x}" for x in self.extra), *lines[1:]]) + "\n")
        log_path = folder / f"{stem}.log"
        out = subprocess.run(
            [
                "sbatch",
                "--parsable",
                f"--job-name=engage-{stem}",
                f"--output={log_path}",
                f"--chdir={os.getcwd()}",
                *self.options,
                str(script),
            ],
            capture_output=True,
            text=True,
            # the job's parent is slurmstepd, not the trainer: no parent-pid watch
            env={k: v for k, v in {**os.environ, **request.env}.items() if k != "ENGAGE_PARENT_PID"},
        )
        if out.returncode != 0:
            raise RuntimeError(f"sbatch failed: {' '.join(out.stderr.split())}")
        process = SlurmProcess(out.stdout.strip().split(";")[0], log_path, self.max_pending_s)
        self._processes.append(process)
        return process

    def bind_host(self) -> str:
        return "127.0.0.1"  # one node: the trainer and the jobs share it

    def shutdown(self) -> None:
        """Cancel the jobs still queued or running when the run ends."""
        live = [p.job_id for p in self._processes if p._code is None]
        if live:
            subprocess.run(["scancel", *live], capture_output=True)
        self._processes.clear()
