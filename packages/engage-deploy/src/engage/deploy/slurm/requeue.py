"""A Slurm job's requeue, as its processes see it: which job this is, whether Slurm may requeue
it, and its warning signal noted while the job starts (before a fit's
:class:`~engage.deploy.callbacks.SlurmRequeue` takes the signal over). Light: a sweep job's
runner imports it before anything else.

Example::

    >>> import signal
    >>> noted_early(signal.SIGUSR1)
    False
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading

#: Slurm's variables of a job's processes that this module reads (the only reader of them)
JOB_ID_ENV = "SLURM_JOB_ID"
ARRAY_JOB_ID_ENV = "SLURM_ARRAY_JOB_ID"
ARRAY_TASK_ID_ENV = "SLURM_ARRAY_TASK_ID"
#: signals :func:`note_early` saw
_NOTED: set[int] = set()


def in_slurm_job() -> bool:
    """Whether this process runs inside a Slurm job."""
    return JOB_ID_ENV in os.environ


def note_early(signum: int = signal.SIGUSR1) -> None:
    """Note ``signum`` from now on instead of dying of it (its default action), for the
    :class:`~engage.deploy.callbacks.SlurmRequeue` of a fit this process starts later: a job's
    warning signal may come while it imports and starts. Called by a sweep job's runner inside
    Slurm."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signum, lambda number, frame: _NOTED.add(number))


def job_id() -> str:
    """This Slurm job's id as ``scontrol`` takes it: ``12_3`` for task 3 of array 12."""
    array = os.environ.get(ARRAY_JOB_ID_ENV)
    if array is not None and ARRAY_TASK_ID_ENV in os.environ:
        return f"{array}_{os.environ[ARRAY_TASK_ID_ENV]}"
    return os.environ[JOB_ID_ENV]


def requeueable() -> bool:
    """Whether this process runs in a Slurm job that Slurm may requeue (``sbatch --requeue``, or
    the cluster's ``JobRequeue=1``), as ``scontrol show job`` says; False outside Slurm or when
    slurmctld does not answer."""
    if not in_slurm_job():
        return False
    from engage.deploy.slurm.executor import parse_job_line

    try:
        shown = subprocess.run(["scontrol", "show", "job", "-o", job_id()], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return parse_job_line(shown.stdout).get("Requeue") == "1"


def noted_early(signum: int) -> bool:
    """Whether :func:`note_early` saw ``signum`` come."""
    return signum in _NOTED
