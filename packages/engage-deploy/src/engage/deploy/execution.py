"""Running the jobs of one launch on the hosts: a thread pool as wide as ``parallelism``, the least
loaded host for each attempt, retries, stops and timeouts.

Each attempt's folder gets the job's contract and travels to a remote host and back
(:class:`~engage.deploy.attempt_folders.AttemptFolders`); the job's process is
``python -m engage.deploy.runner JOB_DIR`` on its host, or is forked from the host's fork server
(:class:`~engage.deploy.job_start.JobStarter`); how it ended becomes its ``result.json`` and the
launcher's MLflow record of the attempt (:func:`~engage.deploy.attempt.attempt_outcome`). On a
batch system that takes job arrays (``provider.array_limit``), the first attempts of a launch's
jobs are one array, submitted once all are composed, a thread a job watching its task; retries
are submitted on their own.

Example (what :class:`~engage.deploy.sweep.Sweep` does)::

    execution = JobExecution(options, folder, tracking, report, provider, hosts, monitors, ...)
    results = execution.run(job_overrides, compose, done, payload)
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle
from hydra.core.utils import JobReturn, JobStatus

from engage.core import lifeline
from engage.deploy import tracking
from engage.deploy.attempt import AttemptEnd, attempt_outcome, failed_return
from engage.deploy.attempt_folders import AttemptFolders
from engage.deploy.experiment import ExperimentFolder, SweepJob
from engage.deploy.job import HostRecord
from engage.deploy.job_start import JobStarter, job_preload
from engage.deploy.monitor import HostMonitor
from engage.deploy.options import LauncherOptions
from engage.deploy.processes import JobProcess, stop_process
from engage.deploy.progress import SweepProgress
from engage.deploy.providers import Host, Provider
from engage.deploy.report import SweepReport
from engage.deploy.serving import ServingPlan
from engage.deploy.sweep_tracking import SweepTracking

log = logging.getLogger("engage.deploy.sweep")

#: why a job did not run once another failed under ``hydra.launcher.fail_fast``
NOT_STARTED = "not started: an earlier job failed and hydra.launcher.fail_fast is set"


@dataclass(frozen=True)
class Recording:
    """What every job record of a launch carries: tags and artifacts naming the launch."""

    provider: str
    experiment_folder: Path
    command: Sequence[str]
    cwd: str
    placement_file: Path | None

    def tags(self) -> dict[str, str]:
        return {
            "engage.provider": self.provider,
            "engage.experiment_folder": str(self.experiment_folder),
            "engage.command": json.dumps(list(self.command)),
            "engage.cwd": self.cwd,
        }

    def artifacts(self, job_folder: Path) -> dict[str, str]:
        artifacts = {
            "engage": str(job_folder),
            "engage/infrastructure": str(self.experiment_folder / "infrastructure.yaml"),
        }
        if self.placement_file is not None:
            artifacts["engage/placement"] = str(self.placement_file)
        return artifacts


@dataclass(frozen=True)
class Submitted:
    """A job's first attempt, submitted with the launch's others as one job array: the slot
    it counts on, the batch system's handle of its task and when it was submitted."""

    host: Host
    job: Any
    started: float


class JobExecution:
    """Runs the jobs of one launch; see the module docstring."""

    def __init__(
        self,
        options: LauncherOptions,
        folder: ExperimentFolder,
        tracking: SweepTracking,
        report: SweepReport,
        provider: Provider,
        hosts: list[Host],
        monitors: Mapping[str, HostMonitor],  # the hosts of this machine only
        host_records: Sequence[HostRecord],
        placement: Mapping[str, str],
        recording: Recording,
        serving: ServingPlan | None = None,
    ) -> None:
        self.options = options
        self.folder = folder
        self.tracking = tracking
        self.report = report
        self.provider = provider
        self.hosts = hosts
        self.monitors = monitors
        self.recording = recording
        self.folders = AttemptFolders(folder, provider, tracking, host_records, placement, serving, recording.cwd)
        self._lock = threading.Lock()
        self._load = {host.name: 0 for host in hosts}
        self._running: dict[int, JobProcess] = {}
        self._stop_new = threading.Event()
        self._stopped: set[int] = set()
        self._withdrawn: set[int] = set()  # jobs whose array task fail-fast cancelled if still pending
        self._array_tasks: set[int] = set()  # jobs running their first attempt as a task of the array
        self._singles: threading.BoundedSemaphore | None = None  # with arrays: jobs submitted alone
        self.starter = JobStarter(
            provider, folder, report, options.python or sys.executable, options.fork_jobs, self._stop_new
        )

    # ------------------------------------------------------------------ the pool

    def run(
        self,
        job_overrides: Sequence[tuple[int, list[str]]],
        compose: Callable[[int, list[str]], SweepJob],
        done: Mapping[tuple[int, str], Path],
        payload: Mapping[str, Any],
        on_composed: Callable[[SweepJob], None],
    ) -> dict[int, JobReturn]:
        """Compose each job, then start it (or take its earlier result when resuming): the first
        jobs run while later ones are composed, which costs a tenth of a second or more each.
        The main thread waits in short slices so Ctrl-C and SIGTERM reach it promptly."""
        self.starter.preload = job_preload(payload.get("task_function"))
        parallelism = self.options.parallelism or os.cpu_count() or 1
        workers = max(1, min(parallelism, len(job_overrides)))
        arrays = self.provider.array_limit > 0
        if arrays:
            # the batch system holds the jobs and runs at most the array's limit of them: a thread
            # for each only watches its job, and records it when it ends; jobs submitted one by one
            # (retries, indices past the array's) take a slot of that limit each
            workers = max(1, len(job_overrides))
            self._singles = threading.BoundedSemaphore(self._array_limit())
        held: list[SweepJob] = []  # jobs for one job array, submitted once all are composed
        results: dict[int, JobReturn] = {}
        futures: dict[Future, SweepJob] = {}
        remaining: set[Future] = set()
        last_check = time.monotonic()
        progress = SweepProgress(
            total=len(job_overrides), queued=None if self.provider.local_processes else self._queued
        )

        def collect(timeout: float) -> None:
            nonlocal remaining, last_check
            finished, remaining = wait(remaining, timeout=timeout, return_when=FIRST_COMPLETED)
            for future in finished:
                index = futures[future].index
                ret = results[index] = future.result()
                # as its result.json says it ended (SKIPPED, KILLED), where Hydra knows only failed
                progress.ended(index, self.folder.read_result(index).get("status") or ret.status.name)
            if time.monotonic() - last_check > 2.0:
                last_check = time.monotonic()
                self.tracking.watch()

        with progress, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engage-job") as pool:
            try:
                for index, overrides in job_overrides:
                    job = compose(index, overrides)
                    on_composed(job)
                    previous = done.get((job.index, job.config_hash))
                    if previous is not None:
                        results[job.index] = self._resumed(job, previous)
                        progress.ended(job.index, results[job.index].status.name)
                        continue
                    (job.folder / "job.pkl").write_bytes(cloudpickle.dumps({**payload, "config": job.config}))
                    if arrays:
                        held.append(job)
                        continue
                    future = pool.submit(self._shown_job, progress, job)
                    futures[future] = job
                    remaining.add(future)
                    collect(0)
                submitted = self._submit_array(held) if held else {}
                for job in held:
                    future = pool.submit(self._shown_job, progress, job, submitted.get(job.index))
                    futures[future] = job
                    remaining.add(future)
                while remaining:
                    collect(0.5)
            except KeyboardInterrupt:
                # start nothing more; the job threads record what was stopped as KILLED
                pool.shutdown(wait=False, cancel_futures=True)
                self.stop()
                raise
            finally:
                self.starter.close()
        return results

    def _queued(self) -> list[int]:
        """The jobs whose batch job is pending in the batch system's queue, as its last look tells."""
        with self._lock:
            return [index for index, process in self._running.items() if getattr(process, "queued", False)]

    def stop(self) -> list[int]:
        """Start no more jobs and stop the running ones; returns the indices of every job stopped
        so far (their threads record them KILLED)."""
        self._stop_new.set()
        with self._lock:
            running = dict(self._running)
            self._stopped.update(running)
        for process in running.values():
            _stop(process)
        with self._lock:
            return sorted(self._stopped)

    def _resumed(self, job: SweepJob, previous: Path) -> JobReturn:
        ret: JobReturn = cloudpickle.loads(self.folder.copy_result(job, previous))
        self.report.resumed += 1
        log.info("\t#%d : already completed in %s, not run again", job.index, previous)
        return ret

    def _shown_job(self, progress: SweepProgress, job: SweepJob, submitted: Submitted | None = None) -> JobReturn:
        progress.started(job.index)
        return self._run_job(job, submitted)

    def _run_job(self, job: SweepJob, submitted: Submitted | None = None) -> JobReturn:
        """Attempts of ``job`` until one completes or its retries are spent; ``submitted``: its
        first attempt, already submitted as a task of the launch's job array."""
        if self._stop_new.is_set() and submitted is None:
            return self._not_run(job, NOT_STARTED)
        attempts = self.options.retries + 1
        for attempt in range(1, attempts + 1):
            alone = attempt > 1 or submitted is None
            if alone and self._singles is not None:
                self._singles.acquire()
            host = self._pick_host() if alone else submitted.host
            try:
                ret, summary = self._attempt(host, job, attempt, None if alone else submitted)
            finally:
                with self._lock:
                    self._load[host.name] -= 1
                if alone and self._singles is not None:
                    self._singles.release()
            if summary.get("status") == "SKIPPED":
                return ret  # its array task never started: withdrawn by fail-fast, counted skipped
            if ret.status == JobStatus.COMPLETED or summary.get("status") == "KILLED":
                break
            if attempt < attempts and not self._stop_new.is_set():
                with self._lock:
                    self.report.retried += 1
                log.warning(
                    "job %d failed (attempt %d/%d), retrying: %s", job.index, attempt, attempts, summary["error"]
                )
        waiting: dict[int, Any] = {}
        with self._lock:
            if ret.status == JobStatus.COMPLETED:
                self.report.completed += 1
            elif job.index in self._stopped and summary.get("status") == "KILLED":
                pass  # stopped by an interrupt: counted killed, not failed
            else:
                self.report.failed += 1
                if self.options.fail_fast:
                    self._stop_new.set()
                    # tasks of the job array that have not started yet start nothing either
                    waiting = {i: self._running[i] for i in self._array_tasks if self._running[i].waiting}
                    self._withdrawn.update(waiting)
        if waiting:
            # one call, which Slurm applies only to tasks still pending; a task it started meanwhile
            # runs on and is recorded as any other
            self.provider.cancel_pending(list(waiting.values()))
        return ret

    def _pick_host(self) -> Host:
        with self._lock:
            host = min(self.hosts, key=lambda h: self._load[h.name])
            self._load[host.name] += 1
            return host

    def _not_run(self, job: SweepJob, reason: str) -> JobReturn:
        ret = failed_return(job, RuntimeError(reason))
        self.folder.write_result(job.index, {"status": "SKIPPED", "error": reason, "config_hash": job.config_hash})
        with self._lock:
            self.report.skipped += 1
        return ret

    # ------------------------------------------------------------------ one attempt

    def _submit_array(self, jobs: Sequence[SweepJob]) -> dict[int, Submitted]:
        """The first attempt of ``jobs`` as one job array (one ``sbatch``), at most the
        provider's array limit (and ``parallelism``, when set) running at once; jobs past the
        array's size are left to their threads, which submit them one by one."""
        limit = self._array_limit()
        indices = self.provider.array_indices([job.index for job in jobs])
        if len(indices) < len(jobs):
            message = (
                f"{len(jobs) - len(indices)} jobs submitted one by one: the launch has more jobs than one job "
                f"array holds (Slurm's MaxArraySize, {len(indices)} here)"
            )
            log.warning("engage launcher: %s", message)
            self.report.warnings.append(message)
        if not indices:
            return {}
        held = set(indices)
        chosen = {job.index: job for job in jobs if job.index in held}
        hosts: dict[int, Host] = {}
        for number, (index, job) in enumerate(sorted(chosen.items())):
            host = hosts[index] = self.hosts[number % len(self.hosts)]
            with self._lock:
                self._load[host.name] += 1  # given back when the attempt ends, as a picked host's
            self.folders.prepare(host, job, 1)
        started = time.time()
        command, env = self.starter.runner_command(), self.starter.environment()
        folders = {index: job.folder for index, job in chosen.items()}
        tasks = self.provider.run_array(command, folders, limit, env=env, cwd=self.recording.cwd)
        log.info(
            "engage launcher: %d jobs (%d to %d) submitted as one job array, at most %d running at once",
            len(tasks), indices[0], indices[-1], limit,
        )  # fmt: skip
        return {index: Submitted(hosts[index], task, started) for index, task in tasks.items()}

    def _array_limit(self) -> int:
        """Jobs of the array running at once: the provider's limit, and ``parallelism`` when set."""
        return min(self.provider.array_limit, self.options.parallelism or self.provider.array_limit)

    def _attempt(
        self, host: Host, job: SweepJob, attempt: int, submitted: Submitted | None = None
    ) -> tuple[JobReturn, dict[str, Any]]:
        job_dir = str(job.folder)
        if submitted is None:
            started = time.time()
            job_dir, cwd = self.folders.prepare(host, job, attempt)
            process = self.starter.start(host, job_dir, cwd, job.folder)
        else:
            process, started = submitted.job, submitted.started
        with self._lock:
            self._running[job.index] = process
            if submitted is not None:
                self._array_tasks.add(job.index)
            stopping = self._stop_new.is_set()  # stopped (Ctrl-C, fail-fast) while it was starting
            if stopping:
                self._stopped.add(job.index)
        if stopping:
            _stop(process)
        # a host of another machine has no monitor here (a batch system's job has no process here either)
        monitor, key = self.monitors.get(host.name), str(job.index)
        if monitor is not None and process.pid is not None:
            monitor.track(key, process.pid)
        timed_out = False
        try:
            _wait(process, self.options.job_timeout_s)
        except subprocess.TimeoutExpired:
            _stop(process)
            process.wait()
            timed_out = True
        finally:
            if monitor is not None:
                monitor.untrack(key)
            if isinstance(process, subprocess.Popen):
                lifeline.let_go(process)  # a remote job's: it ended, or was stopped
            with self._lock:
                self._running.pop(job.index, None)
                self._array_tasks.discard(job.index)
                # cancelled by fail-fast while it pended: it never ran
                withdrawn = job.index in self._withdrawn and not getattr(process, "started", True)
        if withdrawn:
            return self._not_run(job, NOT_STARTED), {"status": "SKIPPED"}
        ended = time.time()
        self.folders.fetch(host, job, job_dir)
        # a batch system's job says how it ended (its state: CANCELLED, TIMEOUT, NODE_FAIL, ...)
        ended_as = getattr(process, "ended", "")
        batch_id = getattr(process, "job_id", None)  # the batch system's id (``12_3``: task 3 of array 12)
        how = f"batch job {batch_id} ended {ended_as}" if ended_as and batch_id else None
        if how and ended_as.startswith("FAILED"):  # its script's own exit code, which Slurm kept
            how += f" with exit code {process.returncode}"
        with self._lock:
            stopped = job.index in self._stopped  # by the launcher: an interrupt or fail-fast
        end = AttemptEnd(process.returncode, timed_out, stopped, started, ended, how)
        ret, summary = attempt_outcome(job, host, attempt, end, self.options.job_timeout_s)
        # a batch system's job names the node it ran on; the slot it took is the host
        node = getattr(process, "node", "")
        if node:
            summary["node"] = node
        if batch_id:
            summary["batch_job_id"] = batch_id
        self.folder.write_result(job.index, summary)
        if ret.status != JobStatus.COMPLETED and not (summary["status"] == "KILLED" and not timed_out):
            log.error("job %d failed on %s: %s (logs in %s)", job.index, host.name, summary["error"], job.folder)
        samples = monitor.job_samples_dicts(key) if monitor is not None else []
        (job.folder / "system.json").write_text(json.dumps(samples))
        record = tracking.JobRecord(
            index=job.index,
            run_name=f"job-{job.index}",
            status={"COMPLETED": "FINISHED"}.get(
                summary["status"], summary["status"] if summary["status"] == "KILLED" else "FAILED"
            ),
            start_time=started,
            end_time=ended,
            host=f"{host.name} ({node})" if node else host.name,
            overrides=job.overrides,
            config_hash=job.config_hash,
            output_dir=summary["output_dir"],
            attempt=attempt,
            tags=self.recording.tags(),
            artifacts=self.recording.artifacts(job.folder),
            system=samples,
            run_id=summary["job_run_id"],
        )
        self.tracking.record(job.index, record, offline=summary["offline"])
        return ret, summary


def _wait(process: Any, timeout_s: float | None) -> int:
    """Wait for a job's process; ``subprocess.TimeoutExpired`` after ``timeout_s`` seconds of
    running. A batch system's job counts only the time it runs, not the time it waits in the
    queue (for its array's limit, or requeued)."""
    if timeout_s is None or not hasattr(process, "queued"):
        return process.wait(timeout=timeout_s)
    ran, last = 0.0, time.monotonic()
    while (code := process.poll()) is None:
        time.sleep(0.25)
        now = time.monotonic()
        if not process.queued:
            ran += now - last
        last = now
        if ran > timeout_s:
            raise subprocess.TimeoutExpired(f"job {getattr(process, 'job_id', '')}", timeout_s)
    return code


def _stop(process: Any) -> None:
    """Stop a job's process, or cancel a batch system's job (which has no local pid)."""
    cancel = getattr(process, "cancel", None)
    if cancel is not None:
        cancel()
    else:
        stop_process(process)
