"""Per-job system metrics: a running job is measured, one that has ended is not (a zombie, or
an exiting process, reads as zero memory, which would be a false sample)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from engage.deploy.monitor import HostMonitor


def test_running_jobs_are_sampled_and_ended_ones_are_not(tmp_path: Path) -> None:
    monitor = HostMonitor("local-1", tmp_path / "metrics.csv", interval_s=10.0)
    monitor.start()  # the CSV header; samples are taken by hand below
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # not reaped: a zombie until wait()
            with open(f"/proc/{ended.pid}/stat") as stat:
                if stat.read().split(") ")[1].startswith("Z"):
                    break
            time.sleep(0.05)
        # tracked once it has ended: while it still ran, the monitor's thread rightly sampled it
        monitor.track("running", running.pid)
        monitor.track("ended", ended.pid)
        before = len(monitor.job_samples("running"))  # the monitor's own thread samples too
        for _ in range(3):
            monitor.sample()
        assert len(monitor.job_samples("running")) >= before + 3
        assert all(sample.rss_mib > 1 for sample in monitor.job_samples("running"))
        assert monitor.job_samples("ended") == []
        ended.wait()
        monitor.sample()  # gone altogether: still nothing
        assert monitor.job_samples("ended") == []
    finally:
        running.kill()
        running.wait()
        ended.wait()
        monitor.stop()
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("time,") and len(lines) >= 1 + 4  # the thread adds its own samples
