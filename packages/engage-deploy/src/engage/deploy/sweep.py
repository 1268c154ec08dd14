"""One launch of the ``engage`` launcher: deploy, prepare, launch, monitor, finalize, record.

Every launch writes a time-stamped experiment folder of the same shape for every provider::

    <sweep dir>/.engage/<YYYYmmdd-HHMMSS>/
        infrastructure.yaml        the infrastructure asked for, and the hosts deployed
        placement.json             with ``placement: optimize``: the host of every service instance
        sweep.json                 options, counts, MLflow ids, tracking incidents
        mlflow-server.log          the sweep's MLflow server output (when it starts one)
        hosts/<host>/metrics.csv   system metrics sampled every monitor_interval_s
        jobs/<idx>/                stdout.log, stderr.log, config.yaml, overrides.yaml,
                                   result.json (+ job.pkl/result.pkl exchanged with the runner)

Jobs whose resolved config completed in an earlier launch into the same sweep directory are
not run again when ``resume`` is on: their recorded result is returned instead.

Example (what ``hydra/launcher=engage`` does; the class is driven by the Hydra plugin)::

    python my_app.py -m hydra/launcher=engage hydra.sweep.dir=multirun/exp1 lr=0.1,0.01
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from engage.core.tracking.store import PARENT_RUN_ENV, PARENT_RUN_FILE_ENV, TRACKING_URI_ENV
from engage.deploy import tracking
from engage.deploy.forkserver import ForkedProcess, ForkServer, ForkServerError
from engage.deploy.infrastructure import Infrastructure
from engage.deploy.monitor import HostMonitor
from engage.deploy.progress import SweepProgress
from engage.deploy.providers import Host, Provider, get_provider

log = logging.getLogger(__name__)

#: while the sweep's server starts, a job waits for it until this time (epoch seconds) before going offline
SERVER_READY_BY_ENV = "ENGAGE_DEPLOY_SERVER_READY_BY"
#: where a job logs when the sweep's server does not answer at its start
OFFLINE_URI_ENV = "ENGAGE_DEPLOY_OFFLINE_URI"
OFFLINE_ARTIFACTS_ENV = "ENGAGE_DEPLOY_OFFLINE_ARTIFACTS"
EXPERIMENT_ENV = "ENGAGE_DEPLOY_EXPERIMENT"
HOST_ENV = "ENGAGE_DEPLOY_HOST"
JOB_DIR_ENV = "ENGAGE_DEPLOY_JOB_DIR"
#: the deployed hosts, as JSON, for the deploy executor inside jobs
HOSTS_ENV = "ENGAGE_DEPLOY_HOSTS"
#: with ``placement: optimize``, service instance -> host (``{"simulator#1": "fog-1", ...}``)
PLACEMENT_ENV = "ENGAGE_DEPLOY_PLACEMENT"
#: MLflow's switch for the run and experiment links it prints when a run ends over HTTP
QUIET_URLS_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
#: MLflow retries for the launcher's client and the jobs': the defaults back off for minutes,
#: far longer than the launcher takes to restart a dead sweep server
MLFLOW_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
#: MLflow settings of the launcher's own client during a sweep. MLflow prints two links for each
#: run it ends over HTTP (fetching the run to do so): the launcher ends one per job and prints the
#: sweep's own link at the end.
LAUNCHER_MLFLOW_ENV = {QUIET_URLS_ENV: "true", **MLFLOW_RETRY_ENV}
PLACEMENTS = ("round_robin", "optimize")


def hosts_description(provider: Provider) -> str:
    """JSON of the deployed hosts (name, layer, address, command prefix, services)."""
    services = {layer.name: [s.name for s in layer.services] for layer in provider.infrastructure.layers}
    return json.dumps(
        [
            {
                "name": h.name,
                "layer": h.layer,
                "address": h.address,
                "exec_prefix": list(h.exec_prefix),
                "remote": h.remote,
                "services": services.get(h.layer, []),
            }
            for h in provider.hosts
        ]
    )


class SweepInterrupted(KeyboardInterrupt):
    """The launcher received SIGTERM (or Ctrl-C): running jobs are stopped and marked KILLED."""


def source_file(task_function: Any) -> str | None:
    """The file the task function is defined in, if it has one (its job's tracebacks name it)."""
    try:
        return inspect.getsourcefile(task_function)
    except TypeError:  # a builtin or a callable object
        return None


def task_identity(task_function: Any) -> str:
    """Module, name and code of the task function: a job of another app never counts as done."""
    module = getattr(task_function, "__module__", "")
    name = getattr(task_function, "__qualname__", repr(task_function))
    try:
        code = inspect.getsource(task_function)
    except (OSError, TypeError):
        code_object = getattr(task_function, "__code__", None)
        code = repr((code_object.co_code, code_object.co_consts)) if code_object else ""
    return f"{module}:{name}:{hashlib.sha256(code.encode()).hexdigest()}"


def config_hash(cfg: DictConfig, task: str = "") -> str:
    """SHA-256 of a job's resolved config without the ``hydra`` node, and of its task (what resume
    matches on)."""
    container: Any
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
    try:
        container = OmegaConf.to_container(plain, resolve=True)
    except Exception:  # an interpolation only the job can resolve: hash the unresolved form
        container = OmegaConf.to_container(plain, resolve=False)
    text = json.dumps({"config": container, "task": task}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class SweepOptions:
    """``hydra.launcher`` options, checked (see ``EngageLauncherConf`` for their meaning)."""

    parallelism: int = 0
    fail_fast: bool = False
    retries: int = 0
    layer: str | None = None
    resume: bool = True
    monitor_interval_s: float = 1.0
    job_timeout_s: float | None = None
    python: str | None = None
    fork_jobs: bool = True
    placement: str = "round_robin"
    mlflow: dict[str, Any] = field(default_factory=dict)
    infrastructure: Any = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SweepOptions:
        values = {k: v for k, v in params.items() if not k.startswith("_")}
        values = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in values.items()
        }
        options = cls(**values)
        if options.parallelism < 0:
            raise ValueError(f"hydra.launcher.parallelism is {options.parallelism}; use 0 (one per core) or more")
        if options.retries < 0:
            raise ValueError(f"hydra.launcher.retries is {options.retries}; use 0 or more")
        if options.monitor_interval_s <= 0:
            raise ValueError(f"hydra.launcher.monitor_interval_s is {options.monitor_interval_s}; use a value > 0")
        if options.placement not in PLACEMENTS:
            raise ValueError(f"hydra.launcher.placement is {options.placement!r}; use {' or '.join(PLACEMENTS)}")
        return options


@dataclass
class JobSpec:
    index: int
    overrides: list[str]
    config: DictConfig
    config_hash: str
    folder: Path


@dataclass
class SweepReport:
    """Counts and incidents of one launch (also in ``sweep.json``)."""

    completed: int = 0
    failed: int = 0
    skipped: int = 0
    resumed: int = 0
    retried: int = 0
    killed: int = 0
    server_restarts: int = 0
    offline_jobs: list[int] = field(default_factory=list)
    uploaded_runs: int = 0
    warnings: list[str] = field(default_factory=list)


class Sweep:
    """Runs a batch of Hydra jobs on the hosts of an infrastructure; see the module docstring."""

    def __init__(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
        options: Mapping[str, Any],
    ) -> None:
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config
        self.options = SweepOptions.from_params(options)
        self.infrastructure = Infrastructure.from_dict(self.options.infrastructure)
        self.infrastructure.validate()
        self.report = SweepReport()
        self.task_id = task_identity(task_function)
        self.command = app_command(task_function)
        self._lock = threading.Lock()
        self._running: dict[int, subprocess.Popen | ForkedProcess] = {}
        self._stop_new = threading.Event()
        self._host_load: dict[str, int] = {}
        self._placement: dict[str, str] = {}
        self._killed_indices: list[int] = []
        # job index -> (attempt, output folder) of each of its records kept offline
        self._offline_records: dict[int, list[tuple[int, str | None]]] = {}
        self._job_overrides: list[tuple[int, list[str]]] = []  # (index, overrides) of every job
        self._jobs: list[JobSpec] = []  # those composed so far
        self._fork_servers: dict[str, ForkServer | None] = {}  # host name -> its server, None: none
        self.server: tracking.TrackingServer | None = None
        self.tracking_uri: str | None = None
        self.backend_uri: str | None = None
        self.keep_server = False
        self.experiment_name = "engage"
        self.parent_run_id: str | None = None
        self.own_parent = False
        self.experiment_id: str | None = None
        self._tracking_opening: Future | None = None
        self._server_answered = False  # the sweep's server answered once (later deaths are restarted)
        self._user_mlflow_env: dict[str, str | None] = {}
        self._tracking_failure_reported = False

    # ------------------------------------------------------------------ entry point

    def run(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self.folder = self._new_experiment_folder(sweep_dir.resolve())
        singleton_state = Singleton.get_state()
        results: dict[int, JobReturn] = {}
        previous_handler = self._install_sigterm()
        self._user_mlflow_env = {name: os.environ.get(name) for name in LAUNCHER_MLFLOW_ENV}
        if (self.options.mlflow or {}).get("enabled", True):
            # jobs get the user's values back (_tracking_env)
            os.environ.update(LAUNCHER_MLFLOW_ENV)
        monitors: dict[str, HostMonitor] = {}
        try:
            # MLflow first: its server and the sweep's parent run get ready while hosts are
            # deployed and jobs composed and started (seconds of imports and start-up)
            self._start_server(len(job_overrides))
            self._open_tracking_in_background()
            self._job_overrides = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
            done = self._completed_results(sweep_dir) if self.options.resume else {}
            provider_cls = get_provider(self.infrastructure.provider)
            provider = provider_cls(self.infrastructure, self.folder / "provider")
            log.info(
                "engage launcher: %d jobs on %s (%s), experiment folder %s",
                len(job_overrides),
                self.infrastructure.provider,
                ", ".join(self.infrastructure.host_names()),
                self.folder,
            )
            for index, overrides in self._job_overrides:
                log.info("\t#%d : %s", index, " ".join(filter_overrides(overrides)))
            with provider:
                self.report.warnings += list(getattr(provider, "warnings", []))
                self._write_infrastructure(provider)
                self._place_services()
                hosts = self._job_hosts(provider)
                self._hosts_json = hosts_description(provider)
                for host in provider.hosts:
                    monitor = HostMonitor(
                        host.name, self.folder / "hosts" / host.name / "metrics.csv", self.options.monitor_interval_s
                    )
                    monitor.start()
                    monitors[host.name] = monitor
                self._connect_tracking(provider, hosts)
                payload_base = {
                    "hydra_context": self.hydra_context,
                    "task_function": self.task_function,
                    "task_file": source_file(self.task_function),
                    "singleton_state": singleton_state,
                }
                results.update(self._execute(provider, hosts, monitors, done, payload_base))
        except KeyboardInterrupt:
            self._interrupt()
            raise
        finally:
            for monitor in monitors.values():
                monitor.stop()
            self._finish_tracking()
            self._restore_sigterm(previous_handler)
            for name, value in self._user_mlflow_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self._write_summary()
        self._print_summary()
        return [results[job.index] for job in self._jobs]

    # ------------------------------------------------------------------ preparation

    def _new_experiment_folder(self, sweep_dir: Path) -> Path:
        base = sweep_dir / ".engage"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder, n = base / stamp, 1
        while folder.exists():  # two launches in one second (tests, batched sweepers)
            n += 1
            folder = base / f"{stamp}-{n}"
        (folder / "jobs").mkdir(parents=True)
        return folder

    def _compose(self, index: int, overrides: list[str]) -> JobSpec:
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{index}"
            sweep_config.hydra.job.num = index
        HydraConfig.instance().set_config(sweep_config)
        folder = self.folder / "jobs" / str(index)
        folder.mkdir(parents=True, exist_ok=True)
        digest = config_hash(sweep_config, self.task_id)
        plain = OmegaConf.masked_copy(sweep_config, [k for k in sweep_config if k != "hydra"])
        try:
            text = OmegaConf.to_yaml(plain, resolve=True)
        except Exception:  # interpolations that only resolve inside the job
            text = OmegaConf.to_yaml(plain)
        (folder / "config.yaml").write_text(text)
        (folder / "overrides.yaml").write_text(yaml.safe_dump(list(overrides), default_flow_style=False))
        return JobSpec(index, overrides, sweep_config, digest, folder)

    def _completed_results(self, sweep_dir: Path) -> dict[str, Path]:
        """Config hash -> job folder of every job that completed in an earlier launch here."""
        found: dict[str, Path] = {}
        for result in sorted((sweep_dir.resolve() / ".engage").glob("*/jobs/*/result.json")):
            if result.parent.parent.parent == self.folder:
                continue
            try:
                data = json.loads(result.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if data.get("status") == "COMPLETED" and (result.parent / "result.pkl").is_file():
                found[data["config_hash"]] = result.parent
        return found

    def _resumed(self, job: JobSpec, previous: Path) -> JobReturn:
        ret: JobReturn = cloudpickle.loads((previous / "result.pkl").read_bytes())
        data = json.loads((previous / "result.json").read_text())
        data.update(index=job.index, resumed_from=str(previous))
        tracking.write_json(job.folder / "result.json", data)
        shutil.copy(previous / "result.pkl", job.folder / "result.pkl")
        self.report.resumed += 1
        log.info("\t#%d : already completed in %s, not run again", job.index, previous)
        return ret

    def _write_infrastructure(self, provider: Provider) -> None:
        description = {"infrastructure": self.infrastructure.to_dict(), "deployed": provider.describe()}
        (self.folder / "infrastructure.yaml").write_text(yaml.safe_dump(description, sort_keys=False))

    def _place_services(self) -> None:
        """``placement: optimize``: the service instances' hosts, in ``placement.json`` and for the jobs."""
        if self.options.placement != "optimize":
            return
        from engage.deploy.placement.services import place_services

        plan = place_services(self.infrastructure)
        self._placement = plan.assignment
        tracking.write_json(self.folder / "placement.json", plan.__dict__)
        log.info("engage launcher: services placed (%s): %s", plan.status, plan.assignment)

    def _job_hosts(self, provider: Provider) -> list[Host]:
        trainers = sorted({host for name, host in self._placement.items() if name.startswith("trainer#")})
        if trainers and self.options.layer is None:
            hosts = [h for h in provider.hosts if h.name in trainers]
            self._host_load = {h.name: 0 for h in hosts}
            return hosts
        layer = self.options.layer or self.infrastructure.layers[0].name
        hosts = provider.hosts_of(layer)
        if not hosts:
            known = ", ".join(lay.name for lay in self.infrastructure.layers)
            raise ValueError(f"hydra.launcher.layer: no hosts in layer {layer!r}; layers are {known}")
        self._host_load = {h.name: 0 for h in hosts}
        return hosts

    # ------------------------------------------------------------------ MLflow

    def _start_server(self, jobs: int) -> None:
        """Start the sweep's MLflow server early: it loads while hosts are being deployed.

        ``mlflow.server``: ``true`` always, ``false`` never (jobs write the store directly),
        ``null`` (auto) when jobs run in parallel or on other hosts. ``mlflow.keep_server``
        reuses a server kept by an earlier sweep on the same store and keeps this one running.
        """
        settings = self.options.mlflow or {}
        if not settings.get("enabled", True):
            return
        backend = settings.get("tracking_uri") or os.environ.get(TRACKING_URI_ENV)
        if not backend:
            backend = f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"
        self.backend_uri = backend
        if backend.startswith(("http://", "https://")):
            return
        wanted = settings.get("server")
        parallel = min(self.options.parallelism or os.cpu_count() or 1, jobs) > 1
        local_only = self.infrastructure.provider == "local"
        if wanted is False or (wanted is None and not parallel and local_only):
            return
        # hosts other than this machine's loopback must reach it: listen on every interface then
        bind = "127.0.0.1" if local_only else "0.0.0.0"
        self.keep_server = bool(settings.get("keep_server", False))
        if self.keep_server:
            kept = tracking.TrackingServer.find_kept(backend, bind)
            if kept is not None:
                self.server = kept
                return
        artifacts = self.folder / "mlflow-artifacts"
        if self.keep_server and tracking.TrackingServer.state_path(backend) is not None:
            artifacts = tracking.TrackingServer.state_path(backend).parent / "mlartifacts"
        self.server = tracking.TrackingServer(
            backend,
            artifacts,
            bind=bind,
            log_path=self.folder / "mlflow-server.log",
            start_timeout_s=float(settings.get("server_start_timeout_s", 120.0)),
        )
        self.server.start(wait=False)

    def _open_tracking_in_background(self) -> None:
        """Open the sweep's MLflow side (:meth:`_open_tracking`) while the sweep goes on.

        Importing MLflow, waiting for a starting server and creating the parent run take seconds.
        Jobs on hosts that share this machine's files do not wait for them: they read the parent
        run's id from a file when they need it and wait for a starting server themselves. Jobs
        on remote hosts get the id in their environment (:meth:`_connect_tracking` waits).
        """
        settings = self.options.mlflow or {}
        if not settings.get("enabled", True):
            return
        self.parent_run_id = os.environ.get(PARENT_RUN_ENV)
        # this process talks to the server over loopback: the hosts' network may be gone before the end
        self.tracking_uri = self.backend_uri if self.server is None else self.server.local_uri
        self.experiment_name = str(settings.get("experiment", "engage"))
        self._tracking_opening = _in_background(self._open_tracking, name="engage-mlflow")

    def _connect_tracking(self, provider: Provider, hosts: list[Host]) -> None:
        """How the deployed hosts reach the sweep's server; remote ones start once MLflow is open."""
        if self._tracking_opening is None:
            return
        if self.server is not None:
            self.server.address = provider.launcher_address()
        if any(host.remote for host in hosts):
            self._tracking_opened()

    def _open_tracking(self) -> None:
        """The MLflow work of :meth:`_open_tracking_in_background`, in a background thread."""
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
                self.backend_uri, self.experiment_name, self.parent_run_id, lookup_uri=lookup
            )
            if not self.parent_run_id:
                from mlflow.tracking import MlflowClient

                run = MlflowClient(self.tracking_uri).create_run(
                    self.experiment_id,
                    run_name=f"sweep-{self.folder.name}",
                    tags={"engage.kind": "sweep", "engage.sweep_dir": str(self.config.hydra.sweep.dir)},
                )
                self.parent_run_id = run.info.run_id
                self.own_parent = True
        finally:
            # an empty file tells waiting jobs there is no parent run to attach to
            tracking.write_text(self._parent_run_file, self.parent_run_id or "")

    @property
    def _parent_run_file(self) -> Path:
        return self.folder / "parent-run-id"

    def _tracking_opened(self, timeout_s: float | None = None) -> bool:
        """Wait for :meth:`_open_tracking` (at most ``timeout_s``); ``False`` if it is not done by
        then or MLflow could not be opened (reported once: job records are then kept offline)."""
        if self._tracking_opening is None:
            return False
        try:
            self._tracking_opening.result(timeout=timeout_s)
            return True
        except FutureTimeout:
            return False
        except Exception as exc:
            with self._lock:
                if not self._tracking_failure_reported:
                    self._tracking_failure_reported = True
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    message = f"MLflow store {self.backend_uri} could not be opened ({first}); job records kept offline"
                    log.warning("engage launcher: %s", message)
                    self.report.warnings.append(message)
            return False

    def _write_server_state(self) -> None:
        assert self.server is not None
        pid = self.server.process.pid if self.server.process is not None else getattr(self.server, "kept_pid", None)
        state = {"pid": pid, "uri": self.server.local_uri, "backend": self.server.backend_uri}
        tracking.write_json(self.folder / "mlflow-server.json", state)

    def _tracking_env(self, job: JobSpec) -> dict[str, str]:
        if self.tracking_uri is None:
            return {}
        offline = job.folder / "offline"
        uri = self.server.uri if self.server is not None else self.tracking_uri
        # read in this order: the parent's id is set before the opening is done
        opening = self._tracking_opening is not None and not self._tracking_opening.done()
        parent = self.parent_run_id
        env = {
            TRACKING_URI_ENV: uri,
            "MLFLOW_TRACKING_URI": uri,
            PARENT_RUN_ENV: parent or "",
            OFFLINE_URI_ENV: f"sqlite:///{offline / 'mlflow.db'}",
            OFFLINE_ARTIFACTS_ENV: str(offline / "artifacts"),
            EXPERIMENT_ENV: self.experiment_name,
            **MLFLOW_RETRY_ENV,
            "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
            # the job's own MLflow prints as the user's settings say, not as the launcher's
            QUIET_URLS_ENV: self._user_mlflow_env.get(QUIET_URLS_ENV) or "false",
        }
        if opening and not parent:
            env[PARENT_RUN_FILE_ENV] = str(self._parent_run_file)
        if opening and self.server is not None and self.server.process is not None:
            env[SERVER_READY_BY_ENV] = str(self.server.ready_by)
        return env

    def _server_ok(self) -> bool:
        """Whether jobs can log to the sweep's store now; restarts a dead sweep server, also
        while MLflow is still being opened through it (the parent run's creation retries)."""
        if self.tracking_uri is None or self._tracking_opening is None:
            return False
        while not self._tracking_opened(timeout_s=1.0):
            if self._tracking_opening.done():
                return False  # MLflow could not be opened (said once)
            process = self.server.process if self.server is not None else None
            if self._server_answered and process is not None and process.poll() is not None:
                self._restart_server()
        if self.server is None:
            return not self.tracking_uri.startswith("http") or tracking.http_alive(self.tracking_uri)
        return self._restart_server()

    def _restart_server(self) -> bool:
        """Restart the sweep's server unless it answers; whether it answers now."""
        assert self.server is not None
        with self._lock:
            if self.server.alive():
                return True
            message = "the sweep's MLflow server stopped answering; restarting it"
            log.warning(message)
            try:
                self.server.restart()
            except tracking.TrackingError as exc:
                log.warning("MLflow server restart failed: %s", exc)
                return False
            self.report.server_restarts = self.server.restarts
            self._write_server_state()
            return True

    def _record(self, job: JobSpec, record: tracking.JobRecord, offline: bool) -> None:
        if self.tracking_uri is None:
            return
        if not offline and self._server_ok():
            try:
                run_id = tracking.record_job(self.tracking_uri, self.experiment_id, self.parent_run_id, record)
                self._update_result(job, mlflow_run_id=run_id)
                return
            except Exception as exc:  # the server died during the upload: keep the record locally
                log.warning("job %d: MLflow record failed (%s); keeping it offline", job.index, exc)
        offline_uri = f"sqlite:///{job.folder / 'offline' / 'mlflow.db'}"
        (job.folder / "offline").mkdir(exist_ok=True)
        experiment_id = tracking.offline_experiment(
            offline_uri, self.experiment_name, job.folder / "offline" / "artifacts"
        )
        tracking.record_job(offline_uri, experiment_id, self.parent_run_id, record)
        with self._lock:
            self._offline_records.setdefault(job.index, []).append((record.attempt, record.output_dir))
            # a job, not a record: its attempts share one offline store
            self.report.offline_jobs = sorted(self._offline_records)
        self._update_result(job, offline_store=offline_uri)

    def _finish_tracking(self) -> None:
        try:
            if self.tracking_uri is None:
                return
            if self.report.offline_jobs:
                if self._server_ok():
                    for index, records in sorted(self._offline_records.items()):
                        # what reached the server before it died is replaced, not joined, by the record
                        for attempt, output_dir in records:
                            tracking.delete_record_runs(
                                self.tracking_uri, self.experiment_id, self.parent_run_id, index, attempt, output_dir
                            )
                        folder = self.folder / "jobs" / str(index)
                        source = f"sqlite:///{folder / 'offline' / 'mlflow.db'}"
                        ids = tracking.upload_store(source, self.tracking_uri, self.experiment_id)
                        self.report.uploaded_runs += len(ids)
                        self._update_result_at(folder, uploaded_run_ids=ids)
                else:
                    self.report.warnings.append(
                        f"{len(self.report.offline_jobs)} job records kept offline under {self.folder}/jobs/*/offline"
                    )
            if self.own_parent and self._server_ok():
                from mlflow.tracking import MlflowClient

                status = "FAILED" if self.report.failed else ("KILLED" if self.report.killed else "FINISHED")
                MlflowClient(self.tracking_uri).set_terminated(self.parent_run_id, status=status)
        finally:
            if self.server is not None:
                if self.keep_server:
                    self.server.keep()
                self.server.stop()

    # ------------------------------------------------------------------ execution

    def _execute(
        self,
        provider: Provider,
        hosts: list[Host],
        monitors: dict[str, HostMonitor],
        done: dict[str, Path],
        payload_base: dict[str, Any],
    ) -> dict[int, JobReturn]:
        """Compose each job, then start it (or take its earlier result when resuming): the first
        jobs run while later ones are composed, which costs a tenth of a second or more each."""
        parallelism = self.options.parallelism or os.cpu_count() or 1
        workers = max(1, min(parallelism, len(self._job_overrides)))
        results: dict[int, JobReturn] = {}
        futures: dict[Future, JobSpec] = {}
        remaining: set[Future] = set()
        last_check = time.monotonic()

        progress = SweepProgress(total=len(self._job_overrides))

        def collect(timeout: float) -> None:
            nonlocal remaining, last_check
            finished, remaining = wait(remaining, timeout=timeout, return_when=FIRST_COMPLETED)
            for future in finished:
                ret = results[futures[future].index] = future.result()
                progress.ended(futures[future].index, ret.status.name)
            opened = self._tracking_opening is not None and self._tracking_opening.done()
            if self.server is not None and opened and time.monotonic() - last_check > 2.0:
                last_check = time.monotonic()
                self._server_ok()

        with progress, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="engage-job") as pool:
            # the main thread waits in short slices so Ctrl-C and SIGTERM reach it promptly
            try:
                for index, overrides in self._job_overrides:
                    job = self._compose(index, overrides)
                    self._jobs.append(job)
                    previous = done.get(job.config_hash)
                    if previous is not None:
                        results[job.index] = self._resumed(job, previous)
                        progress.ended(job.index, results[job.index].status.name)
                        continue
                    payload = {**payload_base, "config": job.config}
                    (job.folder / "job.pkl").write_bytes(cloudpickle.dumps(payload))
                    future = pool.submit(self._shown_job, progress, provider, hosts, monitors, job)
                    futures[future] = job
                    remaining.add(future)
                    collect(0)
                while remaining:
                    collect(0.5)
            except KeyboardInterrupt:
                # start nothing more; stop what runs; the job threads then record them KILLED
                self._stop_new.set()
                pool.shutdown(wait=False, cancel_futures=True)
                with self._lock:
                    running = dict(self._running)
                self.report.killed = len(running)
                self._killed_indices = sorted(running)
                for process in running.values():
                    _terminate(process)
                raise
            finally:
                self._close_fork_servers()
        return results

    def _shown_job(self, progress: SweepProgress, *job_args: Any) -> JobReturn:
        """:meth:`_run_job`, counted by ``progress`` from the moment it runs."""
        progress.started(job_args[-1].index)
        return self._run_job(*job_args)

    def _pick_host(self, hosts: list[Host]) -> Host:
        with self._lock:
            host = min(hosts, key=lambda h: self._host_load[h.name])
            self._host_load[host.name] += 1
            return host

    def _release_host(self, host: Host) -> None:
        with self._lock:
            self._host_load[host.name] -= 1

    def _run_job(
        self, provider: Provider, hosts: list[Host], monitors: dict[str, HostMonitor], job: JobSpec
    ) -> JobReturn:
        if self._stop_new.is_set():
            return self._not_run(job, "not started: an earlier job failed and hydra.launcher.fail_fast is set")
        attempts = self.options.retries + 1
        for attempt in range(1, attempts + 1):
            host = self._pick_host(hosts)
            try:
                ret, summary = self._attempt(provider, host, monitors[host.name], job, attempt)
            finally:
                self._release_host(host)
            if ret.status == JobStatus.COMPLETED or summary.get("status") == "KILLED":
                break
            if attempt < attempts and not self._stop_new.is_set():
                with self._lock:
                    self.report.retried += 1
                log.warning(
                    "job %d failed (attempt %d/%d), retrying: %s", job.index, attempt, attempts, summary["error"]
                )
        with self._lock:
            if ret.status == JobStatus.COMPLETED:
                self.report.completed += 1
            else:
                self.report.failed += 1
                if self.options.fail_fast:
                    self._stop_new.set()
        return ret

    def _not_run(self, job: JobSpec, reason: str) -> JobReturn:
        ret = JobReturn(overrides=job.overrides, cfg=job.config, hydra_cfg=job.config, status=JobStatus.FAILED)
        ret._return_value = RuntimeError(reason)
        ret.task_name = str(job.config.hydra.job.name)
        tracking.write_json(
            job.folder / "result.json",
            {"index": job.index, "status": "SKIPPED", "error": reason, "config_hash": job.config_hash},
        )
        with self._lock:
            self.report.skipped += 1
        return ret

    def _attempt(
        self, provider: Provider, host: Host, monitor: HostMonitor, job: JobSpec, attempt: int
    ) -> tuple[JobReturn, dict[str, Any]]:
        python = self.options.python or sys.executable
        for name in ("result.pkl", "runner.json"):
            (job.folder / name).unlink(missing_ok=True)
        env = {
            **self._tracking_env(job),
            HOST_ENV: host.name,
            HOSTS_ENV: self._hosts_json,
            PLACEMENT_ENV: json.dumps(self._placement),
            JOB_DIR_ENV: str(job.folder),
            "PYTHONPATH": os.pathsep.join(p for p in [_script_dir(), os.environ.get("PYTHONPATH", "")] if p),
        }
        with (job.folder / "stdout.log").open("ab") as out:
            out.write(f"--- attempt {attempt} on {host.name} at {time.strftime('%H:%M:%S')}\n".encode())
        started = time.time()
        job_dir, cwd = str(job.folder), str(self.config.hydra.runtime.cwd)
        if host.remote:
            # prepare: ship the job folder to the host (fsspec SFTP); finalize brings it back below
            workdir = getattr(provider, "remote_workdir", lambda h: "/tmp/engage")(host)
            job_dir = f"{workdir}/{self.folder.name}/jobs/{job.index}"
            cwd = workdir
            env[JOB_DIR_ENV] = job_dir
            provider.put(host, job.folder, job_dir)
        process = self._start_job(provider, host, python, job_dir, env, cwd, job.folder)
        with self._lock:
            self._running[job.index] = process
        key = f"{job.index}"
        monitor.track(key, process.pid)
        killed = False
        try:
            process.wait(timeout=self.options.job_timeout_s)
        except subprocess.TimeoutExpired:
            _terminate(process)
            killed = True
        finally:
            monitor.untrack(key)
            with self._lock:
                self._running.pop(job.index, None)
        ended = time.time()
        if host.remote:
            for name in ("result.pkl", "runner.json"):
                try:
                    provider.get(host, f"{job_dir}/{name}", job.folder / name)
                except OSError as exc:
                    log.warning("job %d: could not fetch %s from %s: %s", job.index, name, host.name, exc)
        runner = _read_json(job.folder / "runner.json")
        if (job.folder / "result.pkl").is_file():
            ret: JobReturn = cloudpickle.loads((job.folder / "result.pkl").read_bytes())
            ret.hydra_cfg = job.config
        else:
            ret = JobReturn(overrides=job.overrides, cfg=job.config, hydra_cfg=job.config, status=JobStatus.FAILED)
            ret.task_name = str(job.config.hydra.job.name)
            tail = _tail(job.folder / "stderr.log")
            reason = (
                f"killed after hydra.launcher.job_timeout_s={self.options.job_timeout_s}"
                if killed
                else f"job process exited with code {process.returncode}"
            )
            ret._return_value = RuntimeError(f"{reason}; stderr: {job.folder / 'stderr.log'}\n{tail}")
            runner = {"status": "FAILED", "error": reason}
        status = "KILLED" if killed or process.returncode in (-signal.SIGTERM, -signal.SIGKILL) else runner["status"]
        if status == "KILLED" and ret.status == JobStatus.COMPLETED:
            status = "COMPLETED"
        summary = {
            "index": job.index,
            "status": status,
            "attempt": attempt,
            "host": host.name,
            "config_hash": job.config_hash,
            "overrides": job.overrides,
            "return_value": runner.get("return_value"),
            "error": runner.get("error"),
            "exit_code": process.returncode,
            "started": started,
            "finished": ended,
            "duration_s": ended - started,
            "job_duration_s": runner.get("duration_s"),
            "output_dir": runner.get("output_dir"),
            "offline": bool(runner.get("offline")),
        }
        tracking.write_json(job.folder / "result.json", summary)
        if ret.status != JobStatus.COMPLETED:
            log.error("job %d failed on %s: %s (logs in %s)", job.index, host.name, summary["error"], job.folder)
        (job.folder / "system.json").write_text(json.dumps(monitor.job_samples_dicts(key)))
        record = tracking.JobRecord(
            index=job.index,
            run_name=f"job-{job.index}",
            status={"COMPLETED": "FINISHED"}.get(status, status if status == "KILLED" else "FAILED"),
            start_time=started,
            end_time=ended,
            host=host.name,
            overrides=job.overrides,
            config_hash=job.config_hash,
            output_dir=summary["output_dir"],
            attempt=attempt,
            tags={
                "engage.provider": self.infrastructure.provider,
                "engage.experiment_folder": str(self.folder),
                "engage.command": json.dumps(self.command),
                "engage.cwd": str(self.config.hydra.runtime.cwd),
            },
            artifacts={
                "engage": str(job.folder),
                "engage/infrastructure": str(self.folder / "infrastructure.yaml"),
                **({"engage/placement": str(self.folder / "placement.json")} if self._placement else {}),
            },
            system=monitor.job_samples_dicts(key),
            job_used_mlflow=bool(runner.get("used_mlflow", True)),
        )
        self._record(job, record, offline=summary["offline"])
        return ret, summary

    def _start_job(
        self, provider: Provider, host: Host, python: str, job_dir: str, env: dict[str, str], cwd: str, folder: Path
    ) -> subprocess.Popen | ForkedProcess:
        """The job's process: forked by the host's fork server where there is one, else a new
        ``python -m engage.deploy.runner JOB_DIR`` (remote hosts, ``fork_jobs=false``, or a
        server that failed, which is said once)."""
        stdout, stderr = folder / "stdout.log", folder / "stderr.log"
        server = self._fork_server(provider, host, python, cwd) if not host.remote else None
        if server is not None:
            try:
                return server.start(job_dir, {**os.environ, **env}, cwd, str(stdout), str(stderr))
            except ForkServerError as exc:
                with self._lock:
                    first = self._fork_servers.get(host.name) is server  # jobs starting at once fail together
                    self._fork_servers[host.name] = None
                if first:
                    detail = server.log_tail().strip().splitlines()[-1:] or [""]
                    message = f"{host.name}: jobs start as new interpreters from now on: {exc} {detail[0]}".strip()
                    log.warning("engage launcher: %s", message)
                    self.report.warnings.append(message)
        command = [python, "-m", "engage.deploy.runner", job_dir]
        return provider.run(host, command, env=env, cwd=cwd, log_path=stdout, stderr_path=stderr)

    def _fork_server(self, provider: Provider, host: Host, python: str, cwd: str) -> ForkServer | None:
        with self._lock:
            if host.name not in self._fork_servers:
                server = None
                if self.options.fork_jobs and not self._stop_new.is_set():
                    command = provider.command_for(host, [python, "-m", "engage.deploy.forkserver"])
                    path = os.pathsep.join(p for p in [_script_dir(), os.environ.get("PYTHONPATH", "")] if p)
                    try:
                        log_path = self.folder / "hosts" / host.name / "forkserver.log"
                        log_path.parent.mkdir(parents=True, exist_ok=True)
                        env = {**os.environ, "PYTHONPATH": path}
                        server = ForkServer(command, env=env, cwd=cwd, log_path=log_path)
                    except OSError as exc:
                        log.warning("engage launcher: no fork server on %s (%s)", host.name, exc)
                self._fork_servers[host.name] = server
            return self._fork_servers[host.name]

    def _close_fork_servers(self) -> None:
        with self._lock:
            servers = [server for server in self._fork_servers.values() if server is not None]
            self._fork_servers = {name: None for name in self._fork_servers}
        for server in servers:
            server.close()

    def _update_result(self, job: JobSpec, **values: Any) -> None:
        self._update_result_at(job.folder, **values)

    def _update_result_at(self, folder: Path, **values: Any) -> None:
        data = _read_json(folder / "result.json")
        data.update(values)
        tracking.write_json(folder / "result.json", data)

    # ------------------------------------------------------------------ interruption

    def _install_sigterm(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            raise SweepInterrupted(f"signal {signum}")

        return signal.signal(signal.SIGTERM, handler)

    def _restore_sigterm(self, previous: Any) -> None:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    def _interrupt(self) -> None:
        """Stop every running job and mark its MLflow run (and the sweep's) KILLED."""
        self._stop_new.set()
        with self._lock:
            running = dict(self._running)
        for process in running.values():
            _terminate(process)
        indices = sorted(set(running) | set(self._killed_indices))
        self.report.killed = len(indices)
        output_dirs = []
        for index in indices:
            folder = self.folder / "jobs" / str(index)
            data = _read_json(folder / "result.json")
            data.update(index=index, status="KILLED", error="interrupted")
            tracking.write_json(folder / "result.json", data)
            runner = _read_json(folder / "runner.json")
            if runner.get("output_dir"):
                output_dirs.append(runner["output_dir"])
        # an interrupt during start-up does not wait long for MLflow to open
        if self.tracking_uri and self._tracking_opened(timeout_s=10.0) and self._server_ok():
            try:
                tracking.mark_killed(self.tracking_uri, self.experiment_id, self.parent_run_id, output_dirs)
                if self.parent_run_id:
                    from mlflow.tracking import MlflowClient

                    # also a parent opened by a sweep callback: its end hook never runs on an interrupt
                    MlflowClient(self.tracking_uri).set_terminated(self.parent_run_id, status="KILLED")
                    self.own_parent = False
            except Exception as exc:  # best effort while going down
                log.warning("could not mark interrupted runs KILLED: %s", exc)
        composed = {job.index: job for job in self._jobs}
        for index, overrides in self._job_overrides:
            job = composed.get(index)
            folder = self.folder / "jobs" / str(index)
            if job is None:  # interrupted before this job was even composed
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "overrides.yaml").write_text(yaml.safe_dump(overrides, default_flow_style=False))
            if not (folder / "result.json").exists():
                record = {"index": index, "status": "NOT_STARTED"}
                if job is not None:
                    record["config_hash"] = job.config_hash
                tracking.write_json(folder / "result.json", record)
        log.warning("sweep interrupted: %d running jobs stopped and marked KILLED", len(indices))

    # ------------------------------------------------------------------ reporting

    def _write_summary(self) -> None:
        summary = {
            "folder": str(self.folder),
            "provider": self.infrastructure.provider,
            "tracking_uri": self.tracking_uri,
            "parent_run_id": self.parent_run_id,
            "experiment_id": self.experiment_id,
            "options": {k: v for k, v in self.options.__dict__.items() if k != "infrastructure"},
            "report": self.report.__dict__,
        }
        tracking.write_json(self.folder / "sweep.json", summary)

    def _print_summary(self) -> None:
        r = self.report
        parts = [f"{r.completed} completed", f"{r.failed} failed"]
        if r.resumed:
            parts.append(f"{r.resumed} already done (resumed)")
        if r.skipped:
            parts.append(f"{r.skipped} not started (fail_fast)")
        if r.retried:
            parts.append(f"{r.retried} retries")
        log.info("engage launcher: %s; experiment folder %s", ", ".join(parts), self.folder)
        if self.parent_run_id and self.experiment_id:
            uri = self.tracking_uri or ""
            if uri.startswith("http") and (self.server is None or self.keep_server):
                where = f"{uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.parent_run_id}"
            else:  # the sweep's own server has stopped: name the store (`mlflow ui --backend-store-uri ...`)
                where = f"run {self.parent_run_id} in {self.backend_uri or uri}"
            log.info("engage launcher: MLflow %s", where)
        if r.server_restarts:
            log.warning(
                "engage launcher: the MLflow server died %d time(s) and was restarted; %d job record(s) kept "
                "offline meanwhile, %d run(s) uploaded",
                r.server_restarts,
                len(r.offline_jobs),
                r.uploaded_runs,
            )
        for warning in r.warnings:
            log.warning("engage launcher: %s", warning)


def app_command(task_function: Any) -> list[str]:
    """The command that runs this Hydra app again (``engage replay`` appends the overrides)."""
    if f"{getattr(task_function, '__module__', '')}.{getattr(task_function, '__name__', '')}" == "engage.core.run.task":
        script = Path(sys.executable).parent / "engage"
        return [str(script) if script.exists() else "engage", "run"]
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path:
        return [sys.executable, str(Path(path).resolve())]
    return [sys.executable, "-m", str(getattr(task_function, "__module__", ""))]


def _script_dir() -> str:
    # the directory of the Hydra app's script, so a task function pickled by reference imports
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return str(Path(path).resolve().parent) if path else ""


def _terminate(process: subprocess.Popen | ForkedProcess, grace_s: float = 5.0) -> None:
    """SIGTERM the job's process group, then SIGKILL it after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _in_background(function: Any, name: str) -> Future:
    """Run ``function()`` in a daemon thread; its result or exception lands in the returned future."""
    future: Future = Future()

    def target() -> None:
        try:
            future.set_result(function())
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
