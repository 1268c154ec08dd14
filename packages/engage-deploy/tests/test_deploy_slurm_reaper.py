"""The reaper's contract, with ``squeue`` and ``scancel`` stand-ins that record what they are
asked (the cluster test kills a real trainer: ``test_deploy_slurm.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest


@pytest.fixture
def slurm_commands(tmp_path, monkeypatch) -> Path:
    """``squeue`` lists three jobs and a job array (a running task and the pending others, each
    as the array's id, as ``%F`` does), all but one named with token ``t0k3n``; ``scancel``
    writes its arguments to the returned file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    asked = tmp_path / "scancel.args"
    (bin_dir / "squeue").write_text(
        "#!/bin/sh\nprintf '11 engage-sim-1-1-t0k3n\\n12 other-job\\n13 engage-job-0-slurm-1-t0k3n\\n"
        "14 engage-job-array-0-3-t0k3n\\n14 engage-job-array-0-3-t0k3n\\n'\n"
    )
    (bin_dir / "scancel").write_text(f'#!/bin/sh\necho "$@" >> {asked}\n')
    for name in ("squeue", "scancel"):
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return asked


def test_a_reaper_stopped_by_its_submitter_cancels_nothing(slurm_commands):
    from engage.deploy.slurm.reaper import JobReaper

    reaper = JobReaper("t0k3n")
    reaper.start()
    assert reaper.running
    reaper.stop()
    assert not reaper.running and not slurm_commands.exists()


def test_a_reaper_that_died_is_replaced_and_its_pipe_forgotten(slurm_commands):
    from engage.core import lifeline
    from engage.deploy.slurm.reaper import JobReaper

    reaper = JobReaper("t0k3n")
    reaper.start()
    first = reaper._process
    first.kill()  # by someone else: its submitter still lives
    first.wait()
    reaper.start()
    assert reaper.running and reaper._process is not first
    # only the live reaper's pipe is pointed away in forked children; the dead one's is closed
    assert set(lifeline._WRITE_ENDS) == {reaper._process.stdin} and first.stdin.closed
    reaper.stop()
    assert not set(lifeline._WRITE_ENDS) and not slurm_commands.exists()


def test_a_killed_submitters_jobs_are_cancelled_by_their_name(slurm_commands):
    """Killed with a forked child still alive (as a data loader's worker would be), which must
    not hold the reaper's pipe open."""
    submitter = textwrap.dedent(
        """
        import os, signal, sys, time
        from engage.deploy.slurm.reaper import JobReaper
        JobReaper("t0k3n").start()
        child = os.fork()
        if child == 0:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1), os.dup2(null, 2)  # the test reads the submitter's output to its end
            time.sleep(30)
            os._exit(0)
        print(child, flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", submitter], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    child = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while not slurm_commands.exists():
        assert time.monotonic() < deadline, "the reaper cancelled nothing"
        time.sleep(0.05)
    assert slurm_commands.read_text().split() == ["11", "13", "14"]  # the token's jobs only, an array once
    assert "cancelled jobs 11 13 14" in proc.stderr.read()  # the reaper held the dead submitter's stderr
    os.kill(child, signal.SIGKILL)
