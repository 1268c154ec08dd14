"""The MLflow run of one ``engage run``: named, recorded once, watched, and closed with its status.

:class:`MLflowRun` creates the run (in the experiment and store the user chose, under a sweep's
parent run when there is one, with a name that says what it is), hands Lightning an
``MLFlowLogger`` bound to it (whose calls Ctrl-C lets finish: :mod:`.uninterrupted`), logs each
config value once under its config path with what a replay needs (config, overrides, command,
environment), runs MLflow's own system-metrics monitor on it (GPU metrics too where
``nvidia-ml-py`` is installed), logs the last and best checkpoints as artifacts, and ends it
``FINISHED``, ``FAILED`` or ``KILLED`` (``FAILED`` by a :mod:`.run_guard` when the process is
killed outright).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from omegaconf import DictConfig, OmegaConf

from engage.core.tracking.environment import environment_record, git_state, pip_freeze
from engage.core.tracking.naming import PARAM_MAX_CHARS, job_run_name, single_run_name, sweep_overrides_of
from engage.core.tracking.run_guard import RunGuard
from engage.core.tracking.store import MLFLOW_TRACKING_URI, launch_folder, parent_run_id, resolve_experiment
from engage.core.tracking.uninterrupted import UninterruptedClient, ctrl_c_deferred, uninterrupted_client

#: a config value that only repeats another node (``${simulator}``, ``${seed}``): logged at its source
_REFERENCE = re.compile(r"^\$\{[A-Za-z_][\w.]*\}$")


def flat_params(cfg: DictConfig) -> dict[str, Any]:
    """Each config value once, under its dotted config path (``model.width``); values that only
    reference another node (``data.simulator_spec: ${simulator}``) and Hydra's own are left out.

    Example::

        >>> from omegaconf import OmegaConf
        >>> flat_params(OmegaConf.create({"seed": 1, "simulator": {"grid": 8},
        ...                               "data": {"simulator_spec": "${simulator}", "seed": "${seed}"}}))
        {'seed': 1, 'simulator.grid': 8}
    """
    raw = OmegaConf.to_container(cfg, resolve=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    params: dict[str, Any] = {}

    def walk(prefix: str, node: Any, value: Any) -> None:
        if isinstance(node, str) and _REFERENCE.match(node):
            return
        if isinstance(node, dict):
            for key in node:
                walk(f"{prefix}.{key}" if prefix else str(key), node[key], value[key])
        else:
            params[prefix] = value

    for key in raw:  # type: ignore[union-attr]
        if key != "hydra":
            walk(str(key), raw[key], resolved[key])  # type: ignore[index]
    return params


def _new_experiment(client: Any, tracking_uri: str, name: str) -> str:
    """Create experiment ``name``. A local SQLite store's keeps its artifacts where MLflow puts
    them for a client started in the launch folder (``./mlruns/<id>`` beside the store), also
    when ``hydra.job.chdir`` made the run's folder the working directory."""
    launch = launch_folder().resolve()
    if tracking_uri.startswith("sqlite:///") and launch != Path.cwd().resolve():
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        return SqlAlchemyStore(tracking_uri, str(launch / "mlruns")).create_experiment(name)
    return client.create_experiment(name)


def _hydra_job() -> tuple[list[str], int | None, str | None]:
    """This job's overrides, its number in a multirun (else None) and the ``experiment`` option."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return [], None, None
    hc = HydraConfig.get()
    number = hc.job.num if hc.mode == RunMode.MULTIRUN else None
    return list(hc.overrides.task), number, hc.runtime.choices.get("experiment")


class RunLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger`` whose ``experiment`` (the ``MlflowClient`` every one of its
    calls goes through, and :class:`MLflowRun`'s) lets each call finish before a Ctrl-C is raised
    (:mod:`.uninterrupted`)."""

    @property
    def experiment(self) -> Any:
        held = self.__dict__.get("_uninterrupted")
        if held is None:  # the first access (on each copy) creates the client and reads the run
            with ctrl_c_deferred():
                held = self._uninterrupted = UninterruptedClient(super().experiment)
        return held

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_uninterrupted", None)  # made again from the client on first use
        return state


@dataclass
class MLflowRun:
    """An open MLflow run and its Lightning logger; :meth:`open` creates it."""

    tracking_uri: str
    run_id: str
    name: str
    logger: RunLogger
    overrides: list[str] = field(default_factory=list)
    #: an earlier incarnation's run taken on (recorded then; not again)
    continued: bool = False
    _monitor: Any = None
    _environment_uri: str | None = None
    #: ends the run FAILED if this process dies without ending it (:mod:`.run_guard`)
    _guard: RunGuard | None = None

    @classmethod
    def open(cls, cfg: DictConfig, tracking_uri: str, continued: str | None = None) -> MLflowRun:
        """Create the run in ``cfg.logger.experiment`` (or ``MLFLOW_EXPERIMENT_NAME``) of
        ``tracking_uri``, named by :mod:`.naming` unless ``logger.run_name`` is set, as a child of
        the sweep's parent run when there is one, and start MLflow's system metrics on it.
        ``continued``: the id of this run's earlier incarnation's MLflow run (a requeued batch
        job's), which is set RUNNING again and taken on instead if it is ``SCHEDULED`` (an
        incarnation that failed, or a run deleted since, is not continued: a new run is made)."""
        client = uninterrupted_client(tracking_uri)
        if continued is not None:
            taken = cls._continue(cfg, client, tracking_uri, continued)
            if taken is not None:
                return taken
        experiment_name = resolve_experiment(cfg.logger.experiment)
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            experiment_id = _new_experiment(client, tracking_uri, experiment_name)
        else:
            experiment_id = experiment.experiment_id
        overrides, job_number, experiment_option = _hydra_job()
        tags = {str(k): str(v) for k, v in (cfg.logger.tags or {}).items()}
        if experiment_option:  # experiment=heat_quick, to filter runs on (its values are params)
            tags["engage.experiment"] = experiment_option
        parent = parent_run_id()
        name = cfg.logger.run_name
        if parent:
            tags["mlflow.parentRunId"] = parent
            if not (name and OmegaConf.is_interpolation(cfg.logger, "run_name")):
                # a job's run: its sweep's name (logger.run_name as written names the sweep), its
                # number and its values, so that no two jobs' runs share a name; a run_name that
                # interpolates (lr_${model.lr}) is the job's own, resolved for it
                sweep = client.get_run(parent)
                sweep_overrides = sweep_overrides_of(sweep)
                number = job_number if job_number is not None else 0
                name = job_run_name(name or sweep.info.run_name or parent[:8], number, overrides, sweep_overrides)
        if not name:
            name = single_run_name(experiment_option or experiment_name)
        git = git_state()
        if git.get("commit"):
            tags["mlflow.source.git.commit"] = git["commit"]
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        logger = RunLogger(
            experiment_name=experiment_name, tracking_uri=tracking_uri, run_id=run.info.run_id, log_model=False
        )
        return cls(tracking_uri, run.info.run_id, name, logger, overrides)._started(cfg)

    @classmethod
    def _continue(cls, cfg: DictConfig, client: Any, tracking_uri: str, run_id: str) -> MLflowRun | None:
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.status != "SCHEDULED":
            return None
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "engage.incarnations", str(int(run.data.tags.get("engage.incarnations", "1")) + 1))
        from engage.core.tracking.store import ERROR_TAG

        if ERROR_TAG in run.data.tags:  # the requeue's line: this incarnation says how the run ends
            client.delete_tag(run_id, ERROR_TAG)
        experiment = client.get_experiment(run.info.experiment_id)
        logger = RunLogger(experiment_name=experiment.name, tracking_uri=tracking_uri, run_id=run_id, log_model=False)
        return cls(tracking_uri, run_id, run.info.run_name, logger, _hydra_job()[0], continued=True)._started(cfg)

    def _started(self, cfg: DictConfig) -> MLflowRun:
        # the logger sets MLflow's global store, which writes MLFLOW_TRACKING_URI into this
        # process's environment: a later run of this process (a sweep's next job) would take it
        # for the user's; it is put back when the run closes
        self._environment_uri = os.environ.get(MLFLOW_TRACKING_URI)
        self._guard = RunGuard(self.tracking_uri, self.run_id)
        self._guard.start()
        self.logger.experiment  # noqa: B018 (connects now)
        if cfg.logger.system_metrics:
            self._start_system_metrics(float(cfg.logger.system_metrics_interval_s))
        return self

    @property
    def client(self) -> Any:
        return self.logger.experiment

    def _start_system_metrics(self, interval_s: float) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # its start and stop are not news on the console
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        self._monitor = SystemMetricsMonitor(
            self.run_id, sampling_interval=interval_s, samples_before_logging=1, tracking_uri=self.tracking_uri
        )
        self._monitor.start()

    def record(self, cfg: DictConfig, output_dir: Path) -> None:
        """Each config value once (:func:`flat_params`); the resolved config, overrides, command,
        environment, pip freeze and git diff as artifacts under ``run/``; versions as tags."""
        client, run_id = self.client, self.run_id
        self.logger.log_hyperparams(flat_params(cfg))
        env = environment_record()
        git = git_state()
        files = {
            "config.yaml": OmegaConf.to_yaml(cfg, resolve=True),
            "overrides.json": json.dumps(self.overrides, indent=1),
            "command.json": json.dumps({"argv": sys.argv, "cwd": str(Path.cwd())}, indent=1),
            "environment.json": json.dumps(env, indent=1, default=str),
            "requirements.txt": pip_freeze(),
        }
        if git.get("diff"):
            files["git.diff"] = git["diff"]
        folder = output_dir / "engage-record"
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text)
        client.log_artifacts(run_id, str(folder), artifact_path="run")
        client.log_param(run_id, "overrides", " ".join(self.overrides)[:PARAM_MAX_CHARS] or "(none)")
        for name, value in env["packages"].items():  # type: ignore[union-attr]
            client.set_tag(run_id, f"version.{name}", value)
        client.set_tag(run_id, "engage.kind", "run")
        client.set_tag(run_id, "engage.output_dir", str(output_dir))
        client.set_tag(run_id, "engage.cwd", str(Path.cwd()))
        if git.get("commit"):
            client.set_tag(run_id, "engage.git_dirty", str(bool(git.get("diff"))))

    def log_checkpoints(self, trainer: Any, max_mb: float) -> list[str]:
        """The last and best checkpoints of the trainer's ``ModelCheckpoint`` callbacks as
        artifacts under ``checkpoints/``, each if at most ``max_mb`` MiB (0: none); returns one
        line for each one left out, to be shown to the user."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        skipped: list[str] = []
        if max_mb <= 0:
            return skipped
        paths: list[str] = []
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                # without a monitored metric there is no best: the newest is the last
                best = callback.best_model_path if callback.monitor is not None else ""
                paths += [p for p in (callback.last_model_path, best) if p and p not in paths]
        for path in paths:
            file = Path(path)
            if not file.is_file():
                continue
            size_mb = file.stat().st_size / 2**20
            if size_mb > max_mb:
                skipped.append(
                    f"checkpoint {file} ({size_mb:.0f} MiB) is larger than logger.checkpoint_max_mb={max_mb:g}: "
                    "not logged to MLflow; raise logger.checkpoint_max_mb to log it"
                )
                continue
            self.client.log_artifact(self.run_id, str(file), artifact_path="checkpoints")
        return skipped

    def close(self, status: str, reachable: bool = True) -> None:
        """Stop the system metrics and end the run ``FINISHED``, ``FAILED`` or ``KILLED``
        (``SCHEDULED``: a requeued job's incarnation, which the next continues). Not
        ``reachable``: the store stopped answering, so nothing more is sent to it (the run
        stays as the store last heard of it)."""
        if self._monitor is not None:
            if reachable:
                with ctrl_c_deferred():  # its last samples are written from this thread
                    self._monitor.finish()
            else:
                # its daemon thread ends without a last write; a request it has under way says no
                # more than the run's own line did
                self._monitor._shutdown_event.set()
                logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)
            self._monitor = None
        try:
            if reachable:
                self.client.set_terminated(self.run_id, status=status)
        finally:
            if self._guard is not None:
                # ended, or left RUNNING on purpose (a store that stopped answering: resumed
                # later), or its end failed, which the run's own line says
                self._guard.stop()
                self._guard = None
            if self._environment_uri is None:
                os.environ.pop(MLFLOW_TRACKING_URI, None)
            else:
                os.environ[MLFLOW_TRACKING_URI] = self._environment_uri
