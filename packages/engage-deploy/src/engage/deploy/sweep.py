"""One launch of the ``engage`` launcher: deploy the hosts, run the jobs, record them, report.

:class:`Sweep` only puts its collaborators together, each with one job:

* :mod:`engage.deploy.experiment`: the experiment folder (layout, resume, ``result.json``);
* :mod:`engage.deploy.sweep_tracking`: MLflow (the sweep's server, parent run, job records);
* :mod:`engage.deploy.execution`: the jobs on the hosts (pool, retries, fork servers, transfers);
* :mod:`engage.deploy.report`: SIGTERM and the launch's report;
* :mod:`engage.deploy.job`: the contract each job's process reads.

Jobs whose resolved config completed in an earlier launch into the same sweep directory are
not run again when ``resume`` is on: their recorded result is returned instead.

Example (what ``hydra/launcher=engage`` does; the class is driven by the Hydra plugin)::

    python my_app.py -m hydra/launcher=engage hydra.sweep.dir=multirun/exp1 lr=0.1,0.01
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from engage.core.files import write_private
from engage.core.tracking.sweep import sweep_overrides_param, swept_overrides
from engage.deploy.execution import JobExecution, Recording
from engage.deploy.experiment import ExperimentFolder, SweepJob, task_identity
from engage.deploy.infrastructure import Infrastructure
from engage.deploy.job import HostRecord, read_run_id
from engage.deploy.monitor import HostMonitor
from engage.deploy.options import LauncherOptions
from engage.deploy.providers import Host, Provider, get_provider
from engage.deploy.report import SweepInterrupted, SweepReport, sigterm_interrupts
from engage.deploy.serving import ServingPlan
from engage.deploy.sweep_tracking import SweepTracking
from engage.deploy.tracking import write_json

if TYPE_CHECKING:
    from engage.deploy.placement.plan import PlacementPlan

__all__ = ["Sweep", "SweepInterrupted", "app_command", "host_records"]

log = logging.getLogger(__name__)

#: the inference replicas' API key, in the experiment folder while the sweep runs
SERVING_KEY_FILE = "serve.key"


def host_records(provider: Provider) -> tuple[HostRecord, ...]:
    """The deployed hosts as jobs see them (name, layer, address, command prefix, services)."""
    services = {layer.name: tuple(s.name for s in layer.services) for layer in provider.infrastructure.layers}
    return tuple(
        HostRecord(h.name, h.layer, h.address, tuple(h.exec_prefix), bool(h.remote), services.get(h.layer, ()))
        for h in provider.hosts
    )


class Sweep:
    """Runs a batch of Hydra jobs on the hosts of an infrastructure; see the module docstring.

    ``options`` and ``infrastructure`` come checked from the launcher's ``setup``."""

    def __init__(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
        options: LauncherOptions,
        infrastructure: Infrastructure,
        placement: PlacementPlan | None = None,
    ) -> None:
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.config = config
        self.options = options
        self.infrastructure = infrastructure
        self.report = SweepReport()
        self.task_id = task_identity(task_function)
        self.jobs: list[SweepJob] = []  # those composed so far
        self.folder: ExperimentFolder | None = None
        self.tracking: SweepTracking | None = None
        self.execution: JobExecution | None = None
        self.plan = placement  # the services' plan the launcher made with placement: optimize
        self.placement: dict[str, str] = {}

    def run(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        folder = self.folder = ExperimentFolder.create(sweep_dir)
        tracking = self.tracking = SweepTracking(
            self.options.mlflow,
            folder,
            self.report,
            provider_name=self.infrastructure.provider,
            sweep_dir=str(self.config.hydra.sweep.dir),
            resume=self.options.resume,
            sweep_overrides=sweep_overrides_param(swept_overrides(self.config)),
        )
        overrides = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        results: dict[int, JobReturn] = {}
        monitors: dict[str, HostMonitor] = {}
        interrupted = False
        with sigterm_interrupts(), tracking.launcher_environment():
            try:
                # MLflow first: its server and the sweep's parent run get ready while hosts are
                # deployed and jobs composed and started (seconds of imports and start-up)
                parallelism = self.options.parallelism or os.cpu_count() or 1
                provider = get_provider(self.infrastructure.provider)(self.infrastructure, folder.path / "provider")
                tracking.start_server(len(overrides), parallelism, provider.planned_launcher_address)
                tracking.open()
                done = folder.completed() if self.options.resume else {}
                log.info(
                    "engage launcher: %d jobs on %s (%s), experiment folder %s",
                    len(overrides),
                    self.infrastructure.provider,
                    ", ".join(self.infrastructure.host_names()),
                    folder.path,
                )
                for index, job in overrides:
                    log.info("\t#%d : %s", index, " ".join(filter_overrides(job)))
                with provider:
                    self.report.warnings += list(getattr(provider, "warnings", []))
                    folder.write_infrastructure(self.infrastructure.to_dict(), provider.describe())
                    self._place_services()
                    serving = self._plan_serving(provider)
                    hosts = self._job_hosts(provider)
                    for host in provider.hosts:
                        if host.remote or not provider.local_processes:
                            # another machine (a batch system's node, a testbed's host): this one's
                            # psutil would measure the launcher's machine under its name; its jobs
                            # record their own system metrics in their MLflow runs
                            continue
                        monitor = HostMonitor(
                            host.name, folder.host_folder(host.name) / "metrics.csv", self.options.monitor_interval_s
                        )
                        monitor.start()
                        monitors[host.name] = monitor
                    tracking.connect(provider.launcher_address(), any(host.remote for host in hosts))
                    self.execution = JobExecution(
                        self.options,
                        folder,
                        tracking,
                        self.report,
                        provider,
                        hosts,
                        monitors,
                        host_records(provider),
                        self.placement,
                        Recording(
                            provider=self.infrastructure.provider,
                            experiment_folder=folder.path,
                            command=app_command(self.task_function),
                            cwd=str(self.config.hydra.runtime.cwd),
                            placement_file=folder.path / "placement.json" if self.placement else None,
                        ),
                        serving,
                    )
                    payload = {
                        "hydra_context": self.hydra_context,
                        "task_function": self.task_function,
                        "task_file": source_file(self.task_function),
                        "singleton_state": Singleton.get_state(),
                    }
                    results.update(self.execution.run(overrides, self._compose, done, payload, self.jobs.append))
            except KeyboardInterrupt:
                interrupted = True
                self._interrupt(overrides)
                raise
            except BaseException as exc:  # the launch itself failed: its run does not end FINISHED
                self.report.error = " ".join(f"{type(exc).__name__}: {exc}".split())[:1000]
                raise
            finally:
                (folder.path / SERVING_KEY_FILE).unlink(missing_ok=True)  # the replicas' key lives as long as the sweep
                for monitor in monitors.values():
                    monitor.stop()
                tracking.finish(interrupted=interrupted)
                folder.write_summary({
                    "provider": self.infrastructure.provider,
                    **tracking.summary(),
                    "options": self.options.summary(),
                    "report": dataclasses.asdict(self.report),
                })  # fmt: skip
        self.report.log(folder.path, tracking.where())
        return [results[job.index] for job in self.jobs]

    def _compose(self, index: int, overrides: list[str]) -> SweepJob:
        assert self.folder is not None
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{index}"
            sweep_config.hydra.job.num = index
        HydraConfig.instance().set_config(sweep_config)
        return self.folder.add_job(index, overrides, sweep_config, self.task_id)

    def _place_services(self) -> None:
        """``placement: optimize``: the service instances' hosts, in ``placement.json`` and for the jobs."""
        if self.options.placement != "optimize":
            return
        from engage.deploy.placement.workflow import solve_workflow, workflow_problem

        assert self.folder is not None
        # the launcher's setup checked the infrastructure (and usually placed it: self.plan)
        plan = self.plan or solve_workflow(self.infrastructure, workflow_problem(self.infrastructure))
        self.placement = dict(plan.assignment)
        self.folder.write_placement(plan.to_dict())
        log.info("engage launcher: services placed (%s): %s", plan.status, plan.assignment)

    def _plan_serving(self, provider: Provider) -> ServingPlan | None:
        """``serving``: the replicas' hosts and each source's route from the placement engine, in
        ``serving.json`` and for the jobs, with a key for the replicas (0600, deleted at the end)."""
        if not self.options.serving.enabled:
            return None
        from engage.deploy.serve.placing import plan_serving

        assert self.folder is not None
        key = write_private(self.folder.path / SERVING_KEY_FILE, secrets.token_urlsafe(32))
        addresses = {host.name: host.address for host in provider.hosts}
        plan = plan_serving(self.options.serving, self.infrastructure, addresses, str(key))
        write_json(self.folder.path / "serving.json", plan.to_dict())
        log.info(
            "engage launcher: replicas on %s (%s); routes %s",
            ", ".join(r.name for r in plan.replicas),
            plan.solver,
            ", ".join(f"{r.label} {r.predicted_s * 1000:.1f} ms" for r in plan.routes),
        )
        return plan

    def _job_hosts(self, provider: Provider) -> list[Host]:
        trainers = sorted({host for name, host in self.placement.items() if name.startswith("trainer#")})
        if trainers and self.options.layer is None:
            return [h for h in provider.hosts if h.name in trainers]
        layer = self.options.layer or self.infrastructure.layers[0].name
        hosts = provider.hosts_of(layer)
        if not hosts:
            known = ", ".join(lay.name for lay in self.infrastructure.layers)
            raise ValueError(f"hydra.launcher.layer: no hosts in layer {layer!r}; layers are {known}")
        return hosts

    def _interrupt(self, overrides: Sequence[tuple[int, list[str]]]) -> None:
        """Stop every running job; mark it (its folder, its MLflow run) and the sweep's run KILLED."""
        assert self.folder is not None and self.tracking is not None
        stopped = self.execution.stop() if self.execution is not None else []
        # a job whose task completed as it was stopped recorded itself COMPLETED (its thread has
        # ended by now): it is done, not killed, and a later launch takes its result
        killed = [index for index in stopped if self.folder.read_result(index).get("status") != "COMPLETED"]
        self.report.killed = len(killed)
        self.folder.mark_interrupted(killed, overrides, {job.index: job.config_hash for job in self.jobs})
        run_ids = [run_id for index in killed if (run_id := read_run_id(self.folder.job_folder(index)))]
        self.tracking.mark_killed(run_ids)
        log.warning("sweep interrupted: %d running jobs stopped and marked KILLED", len(killed))


def source_file(task_function: Any) -> str | None:
    """The file the task function is defined in, if it has one (its job's tracebacks name it)."""
    try:
        return inspect.getsourcefile(task_function)
    except TypeError:  # a builtin or a callable object
        return None


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
