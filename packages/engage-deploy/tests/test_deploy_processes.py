"""engage.deploy.processes: stopping a process and what it started, never another process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from engage.deploy.processes import stop_process, terminate


def test_what_is_left_of_a_reaped_processs_group_is_stopped_and_only_that():
    """A server whose leader died and was reaped leaves workers in its group: they are stopped
    by the group's id, counting only processes started before the reaping."""
    leader = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"],
        start_new_session=True,
    )
    deadline = time.time() + 10
    while not psutil.Process(leader.pid).children() and time.time() < deadline:
        time.sleep(0.05)
    (worker,) = psutil.Process(leader.pid).children()
    os.kill(leader.pid, signal.SIGKILL)
    leader.wait()  # reaped: its pid may name another process from now on
    assert worker.is_running() and os.getpgid(worker.pid) == leader.pid
    assert not terminate(leader.pid, grace_s=5.0, reaped_at=worker.create_time() - 1)  # started after: untouched
    assert worker.is_running()
    assert stop_process(leader, grace_s=5.0)
    assert worker.wait(timeout=10) is not None or not worker.is_running()
