"""The launcher's records of jobs kept in each job's offline MLflow store while the sweep's store
does not answer, and their upload to it once it does.

Example (what :class:`~engage.deploy.sweep_tracking.SweepTracking` does)::

    offline = OfflineRecords(folder, report, experiment="engage")
    offline.keep(job_index, record, parent_run_id)      # the server did not answer
    ...
    offline.upload(tracking_uri, experiment_id, parent_run_id)   # it answers again
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from engage.deploy import tracking
from engage.deploy.experiment import ExperimentFolder
from engage.deploy.report import SweepReport


@dataclass(frozen=True)
class OfflineStore:
    """A job's offline MLflow store, in its job folder: where its own process logs while the
    sweep's store does not answer, and where the launcher keeps its records of the job."""

    folder: Path

    @classmethod
    def of(cls, job_folder: Path) -> OfflineStore:
        return cls(job_folder / tracking.OFFLINE_FOLDER)

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.folder / 'mlflow.db'}"

    @property
    def artifacts(self) -> Path:
        return self.folder / "artifacts"


class OfflineRecords:
    """The records of a launch's jobs kept offline, each in its job's :class:`OfflineStore`."""

    def __init__(self, folder: ExperimentFolder, report: SweepReport, experiment: str) -> None:
        self.folder = folder
        self.report = report
        self.experiment = experiment
        # job index -> (attempt, output folder) of each of its records kept offline
        self._records: dict[int, list[tuple[int, str | None]]] = {}
        self._lock = threading.Lock()

    def keep(self, index: int, record: tracking.JobRecord, parent_run_id: str | None) -> None:
        """Keep ``record`` of job ``index`` in the job's offline store (see
        :func:`~engage.deploy.tracking.record_offline`)."""
        store = OfflineStore.of(self.folder.job_folder(index))
        store.folder.mkdir(exist_ok=True)
        experiment_id = tracking.offline_experiment(store.uri, self.experiment, store.artifacts)
        tracking.record_offline(store.uri, experiment_id, parent_run_id, record)
        with self._lock:
            self._records.setdefault(index, []).append((record.attempt, record.output_dir))
            # a job, not a record: its attempts share one offline store
            self.report.offline_jobs = sorted(self._records)
        self.folder.update_result(index, offline_store=store.uri)

    def upload(self, tracking_uri: str, experiment_id: str, parent_run_id: str | None) -> None:
        """Upload every job's offline store to ``tracking_uri``: what of a record reached it before
        it stopped answering is replaced, not joined, by the record kept offline."""
        with self._lock:
            records = sorted(self._records.items())
        for index, attempts in records:
            for attempt, output_dir in attempts:
                tracking.delete_record_runs(tracking_uri, experiment_id, parent_run_id, index, attempt, output_dir)
            source = OfflineStore.of(self.folder.job_folder(index)).uri
            try:
                ids = tracking.upload_store(source, tracking_uri, experiment_id)
            except Exception as exc:  # the next jobs' records are still uploaded
                self.report.warnings.append(f"job {index}: its records kept in {source} were not uploaded ({exc})")
                continue
            self.report.uploaded_runs += len(ids)
            self.folder.update_result(index, uploaded_run_ids=ids)
