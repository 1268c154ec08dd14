"""The MLflow side of one launch: the sweep's server (start, watch, restart, keep), its parent run,
each job's tracking contract, the launcher's records of its jobs, and offline records uploaded
when the server is back.

MLflow is opened in the background (:meth:`SweepTracking.open`): importing MLflow, waiting for a
starting server and creating the parent run take seconds, while hosts are deployed and jobs
composed. Jobs on hosts that share this machine's files do not wait for it: their contract names
the file where the parent run's id will be written and the time by which the server answers.

Example (what :class:`~engage.deploy.sweep.Sweep` does)::

    tracking = SweepTracking(options.mlflow, folder, report, provider_name="local", sweep_dir=...)
    tracking.start_server(jobs=8, parallelism=2)
    tracking.open()
    ...
    contract = tracking.contract_for(job, offline_folder)   # in each job's JobContract
    tracking.record(job_index, record, offline=False)
    tracking.finish()
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engage.core.tracking.resumed_sweep import continuable, reopen
from engage.core.tracking.store import (
    ERROR_TAG,
    MLFLOW_PASSWORD_ENV,
    MLFLOW_TOKEN_ENV,
    MLFLOW_USERNAME_ENV,
    PARENT_RUN_ENV,
)
from engage.deploy import tracking
from engage.deploy.experiment import ExperimentFolder
from engage.deploy.job import MLFLOW_RETRY_ENV, QUIET_URLS_ENV, TrackingContract
from engage.deploy.mlflow_process import hold_server, in_background, take_held_server
from engage.deploy.offline_records import OfflineRecords, OfflineStore
from engage.deploy.options import MLflowOptions
from engage.deploy.report import SweepReport

log = logging.getLogger("engage.deploy.sweep")

#: files of the experiment folder that describe the sweep, recorded on its MLflow run
DESCRIPTION_FILES = ("infrastructure.yaml", "placement.json", "serving.json")

#: MLflow settings of the launcher's own client during a sweep: the sweep's retries, and no links
#: printed for each job run it ends (it prints the sweep's own link at the end)
LAUNCHER_MLFLOW_ENV = {QUIET_URLS_ENV: "true", **MLFLOW_RETRY_ENV}


class SweepTracking:
    """MLflow for one launch; see the module docstring. ``enabled`` is false with
    ``hydra.launcher.mlflow.enabled=false``: then every method does nothing."""

    def __init__(
        self,
        options: MLflowOptions,
        folder: ExperimentFolder,
        report: SweepReport,
        *,
        provider_name: str,
        sweep_dir: str,
        resume: bool = False,
        sweep_overrides: str = "",
    ) -> None:
        self.options = options
        #: the launch resumes the sweep of ``sweep_dir``: it continues that sweep's parent run,
        #: if that run was of the same ``sweep_overrides`` (the command line's, its param)
        self.resume = resume
        self.sweep_overrides = sweep_overrides
        self.folder = folder
        self.report = report
        self.provider_name = provider_name
        self.sweep_dir = sweep_dir
        self.enabled = options.enabled
        self.server: tracking.TrackingServer | None = None
        self.keep_server = False
        #: the store behind everything, and how this process reaches it (the server over loopback)
        self.backend_uri: str | None = None
        self.tracking_uri: str | None = None
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self._own_parent = False
        self._opening: Future | None = None
        self._server_answered = False  # the server answered once (later deaths are restarted)
        self._failure_reported = False
        self._user_env: dict[str, str | None] = {}
        self.offline = OfflineRecords(folder, report, options.experiment)
        self._lock = threading.Lock()

    @property
    def parent_run_file(self) -> Path:
        return self.folder.parent_run_file

    # ------------------------------------------------------------------ the launcher's environment

    @contextmanager
    def launcher_environment(self) -> Iterator[None]:
        """MLflow's settings for the launcher's own client (:data:`LAUNCHER_MLFLOW_ENV`) while
        inside; the user's values are put back after, and given to the jobs."""
        names = (*LAUNCHER_MLFLOW_ENV, MLFLOW_USERNAME_ENV, MLFLOW_PASSWORD_ENV, MLFLOW_TOKEN_ENV)
        self._user_env = {name: os.environ.get(name) for name in names}
        if self.enabled:
            os.environ.update(LAUNCHER_MLFLOW_ENV)
        try:
            yield
        finally:
            for name, value in self._user_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    # ------------------------------------------------------------------ server and parent run

    def start_server(self, jobs: int, parallelism: int, planned_address: Callable[[], str | None]) -> None:
        """Start the sweep's MLflow server early: it loads while hosts are being deployed.

        ``mlflow.server``: ``true`` always, ``false`` never (jobs write the store directly),
        ``null`` (auto) when jobs run in parallel or on other hosts. ``mlflow.keep_server``
        reuses a server kept by an earlier sweep on the same store and keeps this one running.

        It listens on the loopback and, for hosts other than this machine, on the one address at
        which they reach it: ``planned_address()`` (the provider's
        :meth:`~engage.deploy.providers.base.Provider.planned_launcher_address`, called only
        here) when the provider knows it before deploying, else the address :meth:`connect` is
        given after the deployment (the server is then started again there, on the same port).
        ``mlflow.auth`` (auto: with hosts other than this machine) makes it ask for the random
        admin user of :class:`~engage.deploy.tracking.TrackingServer`, which this process and the
        jobs' contracts are given.
        """
        if not self.enabled:
            return
        backend = self.backend_uri = self.options.store()
        if backend.startswith(("http://", "https://")):
            return
        wanted = self.options.server
        parallel = min(parallelism, jobs) > 1
        local_only = self.provider_name == "local"
        if wanted is False or (wanted is None and not parallel and local_only):
            return
        # hosts other than this machine's loopback reach it at one address of this machine
        address = None if local_only else planned_address()
        listen = [address] if address and address not in ("127.0.0.1", "localhost") else []
        auth = self.options.auth if self.options.auth is not None else not local_only
        self.keep_server = self.options.keep_server
        if self.keep_server:
            kept = tracking.TrackingServer.find_kept(backend, listen=listen, auth=auth)
            if kept is not None:
                self.server = kept
                self._use_credentials()
                return
        held = take_held_server(backend, listen, auth)
        if held is not None:  # this process's earlier launch on the store (a batched sweeper's)
            self.server = held
            self._use_credentials()
            return
        artifacts = self.folder.path / "mlflow-artifacts"
        state = tracking.TrackingServer.state_path(backend)
        if self.keep_server and state is not None:
            artifacts = state.parent / "mlartifacts"
        self.server = tracking.TrackingServer(
            backend,
            artifacts,
            listen=listen,
            auth=auth,
            log_path=self.folder.path / "mlflow-server.log",
            start_timeout_s=self.options.server_start_timeout_s,
        )
        self._use_credentials()
        self.server.start(wait=False)

    def _use_credentials(self) -> None:
        """This process's MLflow client sends the server's credentials (put back as the user had
        them when the sweep ends, see :meth:`launcher_environment`)."""
        assert self.server is not None
        os.environ.update(self.server.client_env())

    def open(self) -> None:
        """Open the sweep's experiment and parent run in a background thread (see the module)."""
        if not self.enabled:
            return
        self.parent_run_id = os.environ.get(PARENT_RUN_ENV)
        # this process talks to the server over loopback: the hosts' network may be gone before the end
        self.tracking_uri = self.backend_uri if self.server is None else self.server.local_uri
        self._opening = in_background(self._open, name="engage-mlflow")

    def connect(self, launcher_address: str, remote_hosts: bool) -> None:
        """How the deployed hosts reach the server; with remote hosts, wait until MLflow is open
        (their contracts carry the parent run's id, not a file)."""
        if self._opening is None:
            return
        server = self.server
        if server is not None and not server.serves(launcher_address):
            # the provider told the address only now: listen there too, on the same port
            if server.process is None:
                raise tracking.TrackingError(
                    f"the MLflow server kept on port {server.port} (pid {server.kept_pid}) listens on "
                    f"{', '.join(server.addresses)}, not on {launcher_address} where the hosts reach it; "
                    "stop it or set hydra.launcher.mlflow.keep_server=false"
                )
            self.opened()  # MLflow is opened over the loopback first
            with self._lock:
                server.listen = (*server.listen, launcher_address)
                server.stop()
                server.start()
            self._write_server_state()
        if server is not None:
            server.address = launcher_address
        if remote_hosts:
            self.opened()

    def _open(self) -> None:
        try:
            lookup = None
            if self.server is not None:
                # import MLflow's client while the server starts, not after
                import mlflow.tracking  # noqa: F401

                if self.server.process is not None:
                    self.server.wait_ready()
                self._server_answered = True
                self._write_server_state()
                lookup = self.tracking_uri
            # a new experiment is created in the store itself (not through the server) so its
            # artifact location is a plain folder that `mlflow ui --backend-store-uri ...` and any
            # client can read later; an existing one is found through the server
            self.experiment_id = tracking.experiment_id_for(
                self.backend_uri, self.options.experiment, self.parent_run_id, lookup_uri=lookup
            )
            if not self.parent_run_id:
                from mlflow.tracking import MlflowClient

                client = MlflowClient(self.tracking_uri)
                # a launch that resumes the sweep of its sweep directory continues that sweep's run
                earlier = self.folder.recorded_parent(self.folder.sweep_dir, before=self.folder.path)
                same = (
                    self.resume
                    and earlier is not None
                    and continuable(client, earlier, self.sweep_dir, self.experiment_id, self.sweep_overrides)
                )
                if same:
                    reopen(client, earlier)
                    self.parent_run_id = earlier
                else:
                    run = client.create_run(
                        self.experiment_id,
                        run_name=f"sweep-{self.folder.name}",
                        tags={"engage.kind": "sweep", "engage.sweep_dir": self.sweep_dir},
                    )
                    self.parent_run_id = run.info.run_id
                    client.log_param(self.parent_run_id, "sweep_overrides", self.sweep_overrides)
                self._own_parent = True
        finally:
            # an empty file tells waiting jobs there is no parent run to attach to
            tracking.write_text(self.parent_run_file, self.parent_run_id or "")

    def opened(self, timeout_s: float | None = None) -> bool:
        """Wait for :meth:`open` (at most ``timeout_s``); ``False`` if it is not done by then or
        MLflow could not be opened (reported once: job records are then kept offline)."""
        if self._opening is None:
            return False
        try:
            self._opening.result(timeout=timeout_s)
            return True
        except FutureTimeout:
            return False
        except Exception as exc:
            with self._lock:
                if not self._failure_reported:
                    self._failure_reported = True
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    message = f"MLflow store {self.backend_uri} could not be opened ({first}); job records kept offline"
                    log.warning("engage launcher: %s", message)
                    self.report.warnings.append(message)
            return False

    def _write_server_state(self) -> None:
        assert self.server is not None
        pid = self.server.process.pid if self.server.process is not None else getattr(self.server, "kept_pid", None)
        state = {"pid": pid, "uri": self.server.local_uri, "backend": self.server.backend_uri}
        tracking.write_json(self.folder.path / "mlflow-server.json", state)

    # ------------------------------------------------------------------ jobs

    def contract_for(self, job_folder: Path) -> TrackingContract | None:
        """Where the job in ``job_folder`` logs, as its contract says it."""
        if self.tracking_uri is None:
            return None
        offline = OfflineStore.of(job_folder)
        uri = self.server.uri if self.server is not None else self.tracking_uri
        if self.server is not None:
            credentials = self.server.credentials
            username, password, token = (
                (credentials.username, credentials.password, None) if credentials else (None,) * 3
            )
        elif str(self.tracking_uri).startswith(("http://", "https://")):
            # the user's own server: their credentials, through the 0600 contract (never a job's environment)
            username, password = self._user_env.get(MLFLOW_USERNAME_ENV), self._user_env.get(MLFLOW_PASSWORD_ENV)
            token = self._user_env.get(MLFLOW_TOKEN_ENV)
        else:  # a file or database store asks for no credentials
            username = password = token = None
        # read in this order: the parent's id is set before the opening is done
        opening = self._opening is not None and not self._opening.done()
        parent = self.parent_run_id
        starting = opening and self.server is not None and self.server.process is not None
        return TrackingContract(
            uri=uri,
            experiment=self.options.experiment,
            parent_run_id=parent or None,
            parent_run_file=str(self.parent_run_file) if opening and not parent else None,
            offline_uri=offline.uri,
            offline_artifacts=str(offline.artifacts),
            server_ready_by=self.server.ready_by if starting else None,
            username=username,
            password=password,
            token=token,
            # the job's own MLflow prints as the user's settings say, not as the launcher's
            print_urls=(self._user_env.get(QUIET_URLS_ENV) or "false").lower() != "true",
        )

    def check_server(self) -> bool:
        """Whether jobs can log to the sweep's store now; restarts a dead sweep server, also
        while MLflow is still being opened through it (the parent run's creation retries)."""
        if self.tracking_uri is None or self._opening is None:
            return False
        while not self.opened(timeout_s=1.0):
            if self._opening.done():
                return False  # MLflow could not be opened (said once)
            process = self.server.process if self.server is not None else None
            if self._server_answered and process is not None and process.poll() is not None:
                self._restart_server()
        if self.server is None:
            return not self.tracking_uri.startswith("http") or tracking.http_alive(self.tracking_uri)
        return self._restart_server()

    def watch(self) -> None:
        """Restart the server if it died, once MLflow is open (called every few seconds)."""
        if self.server is not None and self._opening is not None and self._opening.done():
            self.check_server()

    def _restart_server(self) -> bool:
        """Restart the sweep's server unless it answers; whether it answers now."""
        assert self.server is not None
        with self._lock:
            if self.server.alive():
                return True
            log.warning("the sweep's MLflow server stopped answering; restarting it")
            try:
                self.server.restart()
            except tracking.TrackingError as exc:
                log.warning("MLflow server restart failed: %s", exc)
                return False
            self.report.server_restarts = self.server.restarts
            self._write_server_state()
            return True

    def record(self, index: int, record: tracking.JobRecord, offline: bool) -> None:
        """Add the launcher's record of a job attempt to the job's own run (by its id), or to a
        new child run; kept in the job's offline store while the server does not answer."""
        if self.tracking_uri is None:
            return
        if not offline and self.check_server():
            try:
                run_id = tracking.record_job(self.tracking_uri, self.experiment_id, self.parent_run_id, record)
                self.folder.update_result(index, mlflow_run_id=run_id)
                return
            except Exception as exc:  # the server died during the upload: keep the record locally
                log.warning("job %d: MLflow record failed (%s); keeping it offline", index, exc)
        try:
            self.offline.keep(index, record, self.parent_run_id)
        except Exception as exc:  # the job's own folder's store: said, the sweep goes on
            self.report.warnings.append(f"job {index}: its MLflow record could not be kept offline either ({exc})")

    def mark_killed(self, run_ids: Iterable[str]) -> None:
        """After an interrupt: the interrupted jobs' runs (by id) and the sweep's run are KILLED;
        the sweep's run gets the counts and best job a sweep's end gives it, from its jobs' runs
        (``jobs``, the jobs that ran; ``jobs_failed`` and ``jobs_stopped``, those that failed and
        those stopped), and the console the sweep's line."""
        # an interrupt during start-up does not wait long for MLflow to open
        if not (self.tracking_uri and self.opened(timeout_s=10.0) and self.check_server()):
            return
        try:
            tracking.mark_killed(self.tracking_uri, run_ids)
            if self.parent_run_id:
                from mlflow.tracking import MlflowClient

                from engage.core.tracking.sweep import close_sweep

                # also a parent opened by a sweep callback: its end hook never runs on an interrupt;
                # its counts and best job, and the sweep's line, as at a sweep's end
                # the line names the store, not the sweep's own server, which stops with the sweep
                store = self.backend_uri or self.tracking_uri
                close_sweep(MlflowClient(self.tracking_uri), self.parent_run_id, store, status="KILLED")
                self._own_parent = False
        except Exception as exc:  # best effort while going down
            log.warning("could not mark interrupted runs KILLED: %s", exc)

    # ------------------------------------------------------------------ the end

    def finish(self, interrupted: bool = False) -> None:
        """Upload offline records, end the sweep's own run as the report says, stop (or keep)
        the server. A launch that ended early waits for its parent run to exist before ending it
        (one created after would stay RUNNING): as long as the server may take to start, or 10 s
        when ``interrupted`` (Ctrl-C asks for a quick end)."""
        try:
            if self.tracking_uri is None:
                return
            self.opened(timeout_s=10.0 if interrupted else self.options.server_start_timeout_s + 30.0)
            if self.report.offline_jobs:
                self._upload_offline()
            self._log_description()
            if self._own_parent and self.check_server():
                from mlflow.tracking import MlflowClient

                client = MlflowClient(self.tracking_uri)
                if self.report.error:
                    client.set_tag(self.parent_run_id, ERROR_TAG, self.report.error)
                client.set_terminated(self.parent_run_id, status=self.report.parent_status())
        finally:
            if self.server is not None:
                if self.keep_server:
                    self.server.keep()
                    self.server.stop()
                else:
                    hold_server(self.server)

    def _log_description(self) -> None:
        """The sweep's description on its run, under ``sweep/``: the infrastructure asked for and
        deployed, and the placement and serving plans when the launcher made them (the files of
        :data:`DESCRIPTION_FILES` in the experiment folder; never the replicas' key)."""
        files = [self.folder.path / name for name in DESCRIPTION_FILES]
        files = [path for path in files if path.is_file()]
        # an interrupt during start-up does not wait long for MLflow to open
        if not (files and self.opened(timeout_s=10.0) and self.parent_run_id):
            return
        try:
            if not self.check_server():
                raise tracking.TrackingError("the store does not answer")
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.tracking_uri)
            for path in files:
                client.log_artifact(self.parent_run_id, str(path), artifact_path="sweep")
        except Exception as exc:  # the records of the jobs matter more: warned, not fatal
            names = ", ".join(path.name for path in files)
            self.report.warnings.append(f"the sweep's {names} not recorded in MLflow ({exc}); see {self.folder.path}")

    def _upload_offline(self) -> None:
        if not self.check_server():
            self.report.warnings.append(
                f"{len(self.report.offline_jobs)} job records kept offline under {self.folder.path}/jobs/*/offline"
            )
            return
        self.offline.upload(self.tracking_uri, self.experiment_id, self.parent_run_id)

    def where(self) -> str | None:
        """Where the sweep's run is, for the closing line: its page on a server that still runs,
        else the run's id in the store (``mlflow ui --backend-store-uri ...``)."""
        if not (self.parent_run_id and self.experiment_id):
            return None
        uri = self.tracking_uri or ""
        if uri.startswith("http") and (self.server is None or self.keep_server):
            return f"{uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.parent_run_id}"
        return f"run {self.parent_run_id} in {self.backend_uri or uri}"

    def summary(self) -> dict[str, Any]:
        return {
            "tracking_uri": self.tracking_uri,
            "parent_run_id": self.parent_run_id,
            "experiment_id": self.experiment_id,
        }
