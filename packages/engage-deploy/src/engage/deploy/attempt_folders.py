"""A job attempt's folder as its host sees it: the attempt's contract written into it, the folder
shipped to a host of another machine, and what the job left there brought back.

Example (what :class:`~engage.deploy.execution.JobExecution` does for each attempt)::

    folders = AttemptFolders(folder, provider, tracking, host_records, placement, serving, cwd)
    job_dir, cwd = folders.prepare(host, job, attempt)   # then start the job with them
    ...
    folders.fetch(host, job, job_dir)                    # once its process ended
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from engage.deploy.experiment import ExperimentFolder, SweepJob
from engage.deploy.job import HostRecord, JobContract
from engage.deploy.providers import Host, Provider
from engage.deploy.serving import ServingPlan
from engage.deploy.sweep_tracking import SweepTracking

log = logging.getLogger("engage.deploy.sweep")

#: what a remote host's job leaves for the launcher to bring back
FETCHED_FILES = ("result.pkl", "runner.json", "mlflow-run-id")


class AttemptFolders:
    """The job folders of one launch, attempt by attempt: what each attempt's contract says
    (the hosts, the placement and serving plans, where it records), and the copies to and from
    remote hosts (under their provider's ``remote_workdir``)."""

    def __init__(
        self,
        folder: ExperimentFolder,
        provider: Provider,
        tracking: SweepTracking,
        host_records: Sequence[HostRecord],
        placement: Mapping[str, str],
        serving: ServingPlan | None,
        cwd: str,
    ) -> None:
        self.folder = folder
        self.provider = provider
        self.tracking = tracking
        self.host_records = tuple(host_records)
        self.placement = dict(placement)
        self.serving = serving
        #: the working directory of jobs on this machine's hosts (the app's, as Hydra ran it)
        self.cwd = cwd

    def prepare(self, host: Host, job: SweepJob, attempt: int) -> tuple[str, str]:
        """Write the attempt's contract (and ship the job folder to a remote host); the job's
        folder and working directory as the host sees them."""
        self.folder.clear_attempt(job)
        with (job.folder / "stdout.log").open("ab") as out:
            out.write(f"--- attempt {attempt} on {host.name} at {time.strftime('%H:%M:%S')}\n".encode())
        job_dir, cwd = str(job.folder), self.cwd
        if host.remote:
            workdir = getattr(self.provider, "remote_workdir", lambda h: "/tmp/engage")(host)
            # a folder of its own per attempt: a stopped attempt may still be ending on the host
            # (SIGTERM, up to 10 s) while the next one starts, and writes nothing into the next's
            job_dir, cwd = f"{workdir}/{self.folder.name}/jobs/{job.index}/attempt-{attempt}", workdir
        contract = JobContract(
            index=job.index,
            attempt=attempt,
            overrides=tuple(job.overrides),
            folder=job_dir,
            host=host.name,
            hosts=self.host_records,
            placement=self.placement,
            tracking=self.tracking.contract_for(job.folder),
            serving=self.serving,
            ranks=self.provider.ranks_per_job,
            config_hash=job.config_hash,
        )
        contract.write(job.folder)
        if host.remote:
            # ship the job folder (contract included) to the host; brought back after the attempt
            self.provider.put(host, job.folder, job_dir)
        return job_dir, cwd

    def fetch(self, host: Host, job: SweepJob, job_dir: str) -> None:
        """Bring back what the job left on a remote host (:data:`FETCHED_FILES`); a file it did not
        write is said (but its MLflow run's id, which a job that opened none has not)."""
        if not host.remote:
            return
        for name in FETCHED_FILES:
            try:
                self.provider.get(host, f"{job_dir}/{name}", job.folder / name)
            except OSError as exc:
                if name != "mlflow-run-id":
                    log.warning("job %d: could not fetch %s from %s: %s", job.index, name, host.name, exc)
