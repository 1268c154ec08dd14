"""The job contract: everything a job's process knows about its sweep, one typed record.

The launcher writes it once per attempt as ``job.json`` (mode ``0600``: it may hold the sweep
server's credentials) beside the job's ``job.pkl``; the job runner reads it, and so does the
``deploy`` executor inside the job (:meth:`JobContract.current`). Nothing else about the sweep
reaches a job: no environment variable is read by name outside this module.

Example::

    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> host = HostRecord("cloud-1", "cloud", "10.0.0.2", services=("trainer",))
    >>> job = JobContract(index=3, attempt=1, overrides=("lr=0.1",), folder=str(folder),
    ...                   host="cloud-1", hosts=(host,))
    >>> path = job.write(folder)
    >>> oct(path.stat().st_mode & 0o777)
    '0o600'
    >>> JobContract.read(folder) == job
    True
    >>> JobContract.read(folder).this_host().address
    '10.0.0.2'
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engage.core.files import write_private
from engage.core.tracking.store import (
    MLFLOW_BACKOFF_ENV,
    MLFLOW_PASSWORD_ENV,
    MLFLOW_RETRIES_ENV,
    MLFLOW_TOKEN_ENV,
    MLFLOW_USERNAME_ENV,
)
from engage.deploy.serving import ServingPlan

#: the contract's file name in a job's folder
JOB_FILE = "job.json"
#: the contract of the job this process runs: set by the runner for the job's process and its children
JOB_FILE_ENV = "ENGAGE_JOB_FILE"
#: the file where the job's process writes the id of the MLflow run it opened (see :func:`write_run_id`)
RUN_ID_FILE = "mlflow-run-id"
#: MLflow's switch for the run and experiment links it prints when a run ends over HTTP
QUIET_URLS_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
#: MLflow client retries of every process of a sweep (the launcher's and its jobs'): MLflow's own
#: back off for minutes, far longer than the launcher takes to restart a dead sweep server
MLFLOW_RETRY_ENV = {MLFLOW_RETRIES_ENV: "5", MLFLOW_BACKOFF_ENV: "1"}


class JobContractError(ValueError):
    """A job's contract is missing or unreadable; one line saying which file and why."""


@dataclass(frozen=True)
class HostRecord:
    """One deployed host as a job sees it: how to run a command there and which services it has."""

    name: str
    layer: str
    address: str
    exec_prefix: tuple[str, ...] = ()
    remote: bool = False
    services: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrackingContract:
    """Where and how the job logs to MLflow.

    ``uri``: the sweep's server as the job's host reaches it, or the store itself; ``experiment``:
    the sweep's experiment; ``parent_run_id``: the sweep's run (``None`` while it is created: its id
    is then written to ``parent_run_file``); ``offline_uri`` and ``offline_artifacts``: the job's
    own SQLite store, used when the server does not answer at the job's start;
    ``server_ready_by``: epoch seconds by which a starting server answers (a job started earlier
    waits for it, not going offline); ``username``/``password``: the server's basic-auth
    credentials, if it asks for them (the sweep's own server's, or the user's for a server of
    their own), ``token``: the user's bearer token for such a server; ``print_urls``: whether
    the job's MLflow prints run links.
    """

    uri: str
    experiment: str = "engage"
    parent_run_id: str | None = None
    parent_run_file: str | None = None
    offline_uri: str | None = None
    offline_artifacts: str | None = None
    server_ready_by: float | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    print_urls: bool = True


@dataclass(frozen=True)
class JobContract:
    """One attempt of one job of a sweep, as its process reads it.

    ``index``: the job's number in the sweep; ``attempt``: from 1 (failed jobs are retried);
    ``overrides``: the job's Hydra overrides; ``folder``: the job's folder on its host (``job.pkl``,
    logs, results); ``host``: the host it runs on; ``hosts``: every deployed host; ``placement``:
    service instance -> host with ``placement: optimize`` (``{"simulator#1": "fog-1"}``);
    ``tracking``: see :class:`TrackingContract` (``None``: the sweep records nothing);
    ``serving``: the sweep's inference replicas and request routes (``None``: it serves nothing);
    ``ranks``: the processes the job runs as (a multi-node Slurm job's tasks, each started by
    ``srun``, each a rank of its fit); rank 0 records the job's outcome.
    """

    index: int
    attempt: int
    overrides: tuple[str, ...]
    folder: str
    host: str
    hosts: tuple[HostRecord, ...] = ()
    placement: Mapping[str, str] = field(default_factory=dict)
    tracking: TrackingContract | None = None
    serving: ServingPlan | None = None
    ranks: int = 1
    #: the hash of the job's resolved config and task, as resume matches jobs on it
    config_hash: str = ""

    def write(self, folder: str | os.PathLike[str]) -> Path:
        """Write the contract to ``folder/job.json``, readable by its owner only; returns the path."""
        return write_private(Path(folder) / JOB_FILE, json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> JobContract:
        """The contract in ``folder/job.json`` (raises :class:`JobContractError`)."""
        path = Path(folder) / JOB_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise JobContractError(f"{path}: cannot read the job's contract ({exc})") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobContract:
        tracking = data.get("tracking")
        return cls(
            index=int(data["index"]),
            attempt=int(data["attempt"]),
            overrides=tuple(data.get("overrides", ())),
            folder=str(data["folder"]),
            host=str(data["host"]),
            hosts=tuple(
                HostRecord(**{**h, "exec_prefix": tuple(h["exec_prefix"]), "services": tuple(h["services"])})
                for h in data.get("hosts", ())
            ),
            placement=dict(data.get("placement") or {}),
            tracking=TrackingContract(**tracking) if tracking else None,
            serving=ServingPlan.from_dict(data["serving"]) if data.get("serving") else None,
            ranks=int(data.get("ranks", 1)),
            config_hash=str(data.get("config_hash", "")),
        )

    @classmethod
    def current(cls) -> JobContract | None:
        """The contract of the sweep job this process runs, or ``None`` outside a sweep's job."""
        path = os.environ.get(JOB_FILE_ENV)
        return cls.read(Path(path).parent) if path else None

    def this_host(self) -> HostRecord | None:
        """The record of the host this job runs on."""
        return next((host for host in self.hosts if host.name == self.host), None)

    def environ(self) -> dict[str, str]:
        """The variables the job's process sets for itself: where this contract is, and MLflow's
        settings (the engage-core tracking variables, the sweep's experiment, retries,
        credentials); the processes it starts inherit them but for the credentials
        (:func:`engage.core.tracking.store.inherited_environ`)."""
        from engage.core.tracking.store import (
            MLFLOW_EXPERIMENT_ENV,
            MLFLOW_TIMEOUT_ENV,
            MLFLOW_TRACKING_URI,
            PARENT_RUN_ENV,
            PARENT_RUN_FILE_ENV,
            TRACKING_URI_ENV,
        )

        env = {JOB_FILE_ENV: str(Path(self.folder) / JOB_FILE)}
        tracking = self.tracking
        if tracking is None:
            return env
        env.update({
            TRACKING_URI_ENV: tracking.uri,
            MLFLOW_TRACKING_URI: tracking.uri,
            # the sweep's experiment, for runs the job opens without naming one: MLflow's
            # set_experiment leaves none active when another process created the experiment
            # between its lookup and its create (jobs start while the launcher creates it)
            MLFLOW_EXPERIMENT_ENV: tracking.experiment,
            PARENT_RUN_ENV: tracking.parent_run_id or "",
            **MLFLOW_RETRY_ENV,
            MLFLOW_TIMEOUT_ENV: "30",
            QUIET_URLS_ENV: "false" if tracking.print_urls else "true",
        })  # fmt: skip
        if tracking.parent_run_file and not tracking.parent_run_id:
            env[PARENT_RUN_FILE_ENV] = tracking.parent_run_file
        if tracking.username and tracking.password:
            env[MLFLOW_USERNAME_ENV] = tracking.username
            env[MLFLOW_PASSWORD_ENV] = tracking.password
        if tracking.token:
            env[MLFLOW_TOKEN_ENV] = tracking.token
        return env


def write_run_id(run_id: str) -> bool:
    """Record, in the current job's folder, the id of the MLflow run its process opened, so the
    launcher adds its records to that run by id; ``False`` outside a sweep's job."""
    path = os.environ.get(JOB_FILE_ENV)
    if not path:
        return False
    (Path(path).parent / RUN_ID_FILE).write_text(run_id)
    return True


def read_run_id(folder: str | os.PathLike[str]) -> str | None:
    """The id :func:`write_run_id` recorded in a job's folder, if any."""
    try:
        return (Path(folder) / RUN_ID_FILE).read_text().strip() or None
    except OSError:
        return None
