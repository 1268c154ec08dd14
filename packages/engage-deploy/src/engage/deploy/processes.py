"""Stopping the launcher's processes: SIGTERM a process and everything it started, SIGKILL what is
left after a grace period (psutil finds the descendants, also those that left the process group). The processes are
never reaped here: the one that started a process reads its exit status as usual.

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

import psutil


def terminate(pid: int | None, grace_s: float = 5.0, kill_wait_s: float = 5.0) -> bool:
    """SIGTERM process ``pid``, its process group when it leads one, and its descendants; SIGKILL
    those still alive ``grace_s`` later. Returns whether it had to be stopped (``False`` when it
    had ended already)."""
    if pid is None:
        return False
    try:
        root = psutil.Process(pid)
        if root.status() == psutil.STATUS_ZOMBIE:
            return False
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    leads_group = _leads_group(pid)
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, kill_wait_s)):
        if leads_group:
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for process in processes:
            try:
                process.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        if not _wait_ended(processes, wait_s):
            continue
        break
    return True


def stop_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM process group ``pgid``, SIGKILL what is left of it ``grace_s`` later. By group id,
    for a group whose leader exited and was reaped (a server's workers may be left in it):
    :func:`terminate` starts from the leader's pid, which no longer names a process then."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


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


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
