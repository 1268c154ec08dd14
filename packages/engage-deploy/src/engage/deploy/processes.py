"""The launcher's processes: the one handle a job's process is seen through (:class:`JobProcess`,
whatever started it), and stopping them: SIGTERM a process and everything it started, SIGKILL what
is left after a grace period (psutil finds the descendants, also those that left the process
group). The processes are never reaped here: the one that started a process reads its exit status
as usual.

Example::

    >>> import subprocess, sys
    >>> process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    >>> terminate(process.pid, grace_s=5.0)
    True
    >>> process.wait() != 0
    True
"""

from __future__ import annotations

import os
import signal
import time
from typing import Protocol

import psutil


class JobProcess(Protocol):
    """What the launcher knows of a job's process, as ``subprocess.Popen`` offers it: a process
    it started (``Popen``), one a host's fork server forked
    (:class:`~engage.core.forkserver.ForkedProcess`), or a batch job standing for one
    (:class:`~engage.deploy.providers.slurm.SlurmJob`, whose ``pid`` is ``None``)."""

    @property
    def pid(self) -> int | None: ...

    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def terminate(
    pid: int | None, grace_s: float = 5.0, kill_wait_s: float = 5.0, *, reaped_at: float | None = None
) -> bool:
    """SIGTERM process ``pid`` (a child of the caller, not reaped yet), its process group when it
    leads one, and its descendants; SIGKILL those still alive ``grace_s`` later. Returns whether
    anything had to be stopped (``False`` when all had ended already).

    ``reaped_at`` (``time.time()``): the child ``pid`` has exited and was reaped by then; what is
    left of its group (a server's workers, which may hold its port) is stopped by the group's id,
    counting only processes started before that time: ``pid`` itself may name another process
    by now."""
    if pid is None:
        return False
    members = _group_members(pid)
    if reaped_at is not None:
        members = [m for m in members if _created_before(m, reaped_at)]
        tree = []
    else:
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
    processes = [p for p in {p.pid: p for p in (*tree, *members)}.values() if _running(p)]
    if not processes:
        return False
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_wait_s)):
        if members:
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for process in processes:
            try:
                process.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        if _wait_ended(processes, wait_s):
            break
    return True


def stop_process(process: JobProcess, grace_s: float = 5.0) -> bool:
    """:func:`terminate` a process this one started (a ``Popen``, a forked one), safely for its
    pid: once it has ended and been reaped, only what is left of its group, started before, is
    stopped, since its pid may name another process by then."""
    if process.pid is None:
        return False
    reaped_at = time.time() if process.poll() is not None else None
    return terminate(process.pid, grace_s, reaped_at=reaped_at)


def _group_members(pgid: int) -> list[psutil.Process]:
    """The processes of process group ``pgid`` (the leader among them while it lives)."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid:
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def _wait_ended(processes: list[psutil.Process], timeout_s: float) -> bool:
    """Wait until every process ended (a zombie counts: its parent reaps it, and reads its exit
    status, as it would have); whether they all did within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        processes[:] = [p for p in processes if _running(p)]
        if not processes:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _created_before(process: psutil.Process, moment: float) -> bool:
    try:
        return process.create_time() <= moment
    except psutil.NoSuchProcess:
        return False


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
