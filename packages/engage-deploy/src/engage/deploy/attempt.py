"""How one attempt of a sweep's job ended: its ``JobReturn`` for Hydra and the summary its
``result.json`` holds, from what its process left in the job folder (``result.pkl``,
``runner.json``, ``mlflow-run-id``) and how the process ended (:class:`AttemptEnd`).

Example (what :class:`~engage.deploy.execution.JobExecution` does once an attempt's process ended)::

    end = AttemptEnd(exit_code=process.returncode, timed_out=False, stopped=False, started=t0, ended=t1)
    ret, summary = attempt_outcome(job, host, attempt=1, end=end, job_timeout_s=None)
    folder.write_result(job.index, summary)
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.utils import JobReturn, JobStatus

from engage.deploy.experiment import SweepJob, read_json
from engage.deploy.job import read_run_id
from engage.deploy.providers import Host

log = logging.getLogger("engage.deploy.sweep")
#: the exit code of an ``ssh`` client that ended by a signal or lost its connection
SSH_ENDED = 255


@dataclass(frozen=True)
class AttemptEnd:
    """How the process of one attempt ended, as the launcher saw it."""

    #: its exit code (negative: the signal that ended it; on another host, that of the SSH client)
    exit_code: int | None
    #: the launcher stopped it past ``hydra.launcher.job_timeout_s``
    timed_out: bool
    #: the launcher stopped it: an interrupt, or ``fail_fast`` after another job failed
    stopped: bool
    #: when it started and ended (``time.time()``)
    started: float
    ended: float
    #: how its batch system says it ended (``batch job 12 ended TIMEOUT``), where one ran it
    how: str | None = None


def attempt_outcome(
    job: SweepJob, host: Host, attempt: int, end: AttemptEnd, job_timeout_s: float | None
) -> tuple[JobReturn, dict[str, Any]]:
    """The attempt's ``JobReturn`` and its ``result.json`` summary. A job that left no readable
    result failed, with one line saying why (or was stopped, when the launcher stopped it); a
    job whose task returned but whose process then failed is never reported completed."""
    runner = read_json(job.folder / "runner.json")
    exit_code = end.exit_code

    def failed(reason: str, stopped: bool = False) -> JobReturn:
        from engage.core.online.outcome import EXIT_RUN_FAILED
        from engage.core.run import RunFailed

        # one line for ``engage run`` to print (the job's own never came); the log holds the rest
        what = "was stopped" if stopped else "failed"
        line = f"job #{job.index} {what} on {host.name}: {reason}; see {job.folder / 'stderr.log'}"
        tail = "" if stopped else _tail(job.folder / "stderr.log").strip()
        if tail:
            log.warning("job %d: the end of its stderr:\n%s", job.index, tail)
        return failed_return(job, RunFailed(line, EXIT_RUN_FAILED, printed=False))

    ret: JobReturn | None = None
    if (job.folder / "result.pkl").is_file():
        try:
            ret = cloudpickle.loads((job.folder / "result.pkl").read_bytes())
            ret.hydra_cfg = job.config
        except Exception as exc:  # cut short: the job died, or its host, while writing it
            reason = f"its result.pkl is unreadable ({type(exc).__name__}: {exc})"
            ret, runner = failed(reason), {"status": "FAILED", "error": reason}
    # stopped by the launcher: its signal, or on another host the end of the SSH client that
    # stood for the job (ssh ends with 255 on SIGTERM; the job ends with the connection)
    stop_codes = (-signal.SIGTERM, -signal.SIGKILL, *((SSH_ENDED,) if host.remote else ()))
    killed = end.stopped and exit_code in stop_codes
    if ret is None:
        if end.timed_out:
            reason = f"killed after hydra.launcher.job_timeout_s={job_timeout_s}"
        elif killed:
            reason = "stopped by the launcher (an interrupt, or fail_fast after another job failed)"
        elif exit_code is not None and exit_code < 0 and not end.stopped:
            # no one here stopped it: a failure, which retries cover (SIGKILL: most often the
            # kernel's out-of-memory killer, at the host's memory limit)
            name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else str(-exit_code)
            why = " (out of memory at the host's limit, or killed by another process)" if name == "SIGKILL" else ""
            reason = f"job process was killed by {name}{why}"
        else:
            reason = end.how or f"job process exited with code {exit_code}"
        ret, runner = failed(reason, stopped=killed), {"status": "FAILED", "error": reason}
    # a job past job_timeout_s failed (its error says so), as the launch's counts have it;
    # KILLED is for jobs the user stopped (an interrupt, fail-fast)
    status = "FAILED" if end.timed_out else "KILLED" if killed else runner["status"]
    if status in ("KILLED", "FAILED") and (end.timed_out or killed) and ret.status == JobStatus.COMPLETED:
        status = "COMPLETED"  # its task had returned when the limit or the stop came
    elif status == "COMPLETED" and exit_code not in (0, None):
        # its task returned, then the job failed: another rank of a multi-node job, or the
        # process's own end (an exit handler, a crash in teardown); never reported completed
        reason = f"the job's task completed, then its process exited with code {exit_code}"
        ret, runner = failed(reason), {**runner, "status": "FAILED", "error": reason}
        status = "FAILED"
    summary = {
        "status": status,
        "attempt": attempt,
        "host": host.name,
        "config_hash": job.config_hash,
        "overrides": job.overrides,
        "return_value": runner.get("return_value"),
        "error": runner.get("error"),
        "exit_code": exit_code,
        "started": end.started,
        "finished": end.ended,
        "duration_s": end.ended - end.started,
        "job_duration_s": runner.get("duration_s"),
        "output_dir": runner.get("output_dir"),
        "offline": bool(runner.get("offline")),
        "job_run_id": read_run_id(job.folder),
    }
    return ret, summary


def failed_return(job: SweepJob, error: BaseException) -> JobReturn:
    """A failed ``JobReturn`` of ``job`` holding ``error``, as Hydra's own launchers make one."""
    ret = JobReturn(overrides=job.overrides, cfg=job.config, hydra_cfg=job.config, status=JobStatus.FAILED)
    ret._return_value = error
    ret.task_name = str(job.config.hydra.job.name)
    return ret


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
