"""System metrics per host, sampled with psutil at a fixed interval (nothing to download).

One :class:`HostMonitor` thread per host writes ``hosts/<host>/metrics.csv`` of the experiment
folder: the whole machine's CPU, memory and network counters, and the CPU and resident memory
of the job processes running on that host (their whole process trees). Each job also keeps its
own samples, logged to MLflow as ``system/...`` metrics.

Example::

    >>> import os, tempfile, time
    >>> monitor = HostMonitor("local-1", os.path.join(tempfile.mkdtemp(), "metrics.csv"), interval_s=0.05)
    >>> monitor.start(); monitor.track("job0", os.getpid()); time.sleep(0.2); monitor.stop()
    >>> len(monitor.job_samples("job0")) > 0
    True
"""

from __future__ import annotations

import csv
import os
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

COLUMNS = [
    "time",
    "host_cpu_percent",
    "host_memory_percent",
    "host_memory_used_mib",
    "net_sent_mib",
    "net_recv_mib",
    "jobs",
    "jobs_cpu_percent",
    "jobs_rss_mib",
]


@dataclass
class JobSample:
    """One sample of a job's process tree (``cpu_percent`` may exceed 100 with several cores)."""

    time: float
    cpu_percent: float
    rss_mib: float
    host_cpu_percent: float
    host_memory_percent: float


class HostMonitor:
    """A daemon thread sampling this machine and the tracked job processes every ``interval_s``."""

    def __init__(self, host: str, csv_path: str | os.PathLike[str], interval_s: float = 1.0) -> None:
        self.host = host
        self.csv_path = Path(csv_path)
        self.interval_s = interval_s
        self._jobs: dict[str, psutil.Process] = {}
        self._children: dict[str, dict[int, psutil.Process]] = defaultdict(dict)
        self._samples: dict[str, list[JobSample]] = defaultdict(list)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"engage-monitor-{host}", daemon=True)

    def start(self) -> None:
        """Start sampling (writes the CSV header)."""
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        with self.csv_path.open("w", newline="") as handle:
            csv.writer(handle).writerow(COLUMNS)
        psutil.cpu_percent(None)  # the first call only sets the reference point
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5 * self.interval_s + 1)

    def track(self, job: str, pid: int) -> None:
        """Sample the process tree rooted at ``pid`` as ``job`` until :meth:`untrack`."""
        try:
            process = psutil.Process(pid)
            process.cpu_percent(None)
        except psutil.Error:
            return
        with self._lock:
            self._jobs[job] = process

    def untrack(self, job: str) -> None:
        """Stop sampling ``job`` (its samples stay available)."""
        with self._lock:
            self._jobs.pop(job, None)
            self._children.pop(job, None)

    def job_samples(self, job: str) -> list[JobSample]:
        """The samples taken while ``job`` ran."""
        with self._lock:
            return list(self._samples.get(job, []))

    def job_samples_dicts(self, job: str) -> list[dict[str, float]]:
        """:meth:`job_samples` as plain mappings (for JSON)."""
        return [asdict(s) for s in self.job_samples(job)]

    def _tree_usage(self, job: str, root: psutil.Process) -> tuple[float, float] | None:
        """CPU percent and RSS (MiB) of the job's process tree; None once its process is ending or
        has ended (gone, or a zombie until whoever started it reaps it: both read as no memory)."""
        known = self._children[job]
        try:
            with root.oneshot():
                if root.status() == psutil.STATUS_ZOMBIE:
                    return None
                cpu, rss = root.cpu_percent(None), float(root.memory_info().rss)
            children = root.children(recursive=True)
        except psutil.Error:
            return None
        if rss == 0:  # exiting: its memory is released before it becomes a zombie
            return None
        for proc in children:
            cached = known.setdefault(proc.pid, proc)
            try:
                with cached.oneshot():
                    cpu += cached.cpu_percent(None)
                    rss += cached.memory_info().rss
            except psutil.Error:
                known.pop(proc.pid, None)
        return cpu, rss / 2**20

    def sample(self) -> list[float]:
        """Take one sample now, append it to the CSV and the tracked jobs, and return the row."""
        now = time.time()
        host_cpu = psutil.cpu_percent(None)
        memory = psutil.virtual_memory()
        net = psutil.net_io_counters()
        with self._lock:
            jobs = dict(self._jobs)
        jobs_cpu = jobs_rss = 0.0
        for job, process in jobs.items():
            usage = self._tree_usage(job, process)
            if usage is None:
                continue
            cpu, rss = usage
            jobs_cpu += cpu
            jobs_rss += rss
            with self._lock:
                self._samples[job].append(JobSample(now, cpu, rss, host_cpu, memory.percent))
        row = [
            round(now, 3),
            host_cpu,
            memory.percent,
            round(memory.used / 2**20, 1),
            round(net.bytes_sent / 2**20, 3),
            round(net.bytes_recv / 2**20, 3),
            len(jobs),
            round(jobs_cpu, 1),
            round(jobs_rss, 1),
        ]
        with self.csv_path.open("a", newline="") as handle:
            csv.writer(handle).writerow(row)
        return row

    def _loop(self) -> None:
        # sample on a fixed grid so intervals do not drift with the time sampling takes
        next_time = time.monotonic()
        while not self._stop.is_set():
            self.sample()
            next_time += self.interval_s
            self._stop.wait(max(0.0, next_time - time.monotonic()))
