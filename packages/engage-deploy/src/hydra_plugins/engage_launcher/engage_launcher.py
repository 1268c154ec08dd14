"""The ``engage`` Hydra launcher: runs each job of a sweep as a process on the hosts of an
infrastructure (``local``, ``netns``, Grid'5000, Chameleon, Vagrant, SSH), records every job as a
child MLflow run of its sweep and writes a time-stamped experiment folder.

Only light imports here: Hydra imports this module while discovering plugins; the work is in
``_core`` and :mod:`engage.deploy.sweep`.

Example::

    engage run -m hydra/launcher=engage seed=0,1,2
    engage run -m hydra/launcher=engage +infrastructure=netns_edge_cloud hydra.launcher.parallelism=2 seed=0,1
    python my_app.py -m hydra/launcher=engage hydra.launcher.retries=1 lr=0.1,0.01
"""

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


def _local_infrastructure() -> dict[str, Any]:
    return {"provider": "local", "layers": [{"name": "local", "hosts": 1}], "network": [], "options": {}}


@dataclass
class MLflowConf:
    """Where jobs log. ``server`` starts an ``mlflow server`` for the sweep in front of the sweep's
    SQLite store, so parallel writers and other hosts go through it (``null``: when jobs run in
    parallel or on other hosts; ``true``: always; ``false``: never); ``keep_server`` leaves it
    running for the next sweeps on the same store and reuses one left by an earlier sweep;
    ``tracking_uri`` overrides the store (default: the sweep's ``ENGAGE_TRACKING_URI``, else
    ``sqlite:///<cwd>/mlflow.db``); ``experiment`` names the MLflow experiment when the sweep has
    no parent run yet."""

    enabled: bool = True
    server: bool | None = None
    keep_server: bool = False
    tracking_uri: str | None = None
    experiment: str = "engage"
    server_start_timeout_s: float = 120.0


@dataclass
class EngageLauncherConf:
    """``hydra.launcher`` options of the ``engage`` launcher.

    ``parallelism``: jobs running at once (0: one per CPU core of this machine); ``fail_fast``:
    start no new job after one failed; ``retries``: re-run a failed job this many times;
    ``layer``: the layer whose hosts run jobs (default: the first layer); ``resume``: skip jobs
    whose resolved config already completed in this sweep directory; ``monitor_interval_s``:
    system-metric sampling period; ``job_timeout_s``: kill a job running longer (null: no limit);
    ``python``: interpreter on the hosts (default: this one); ``fork_jobs``: on hosts that share
    this machine's files (``local``, ``netns``), start jobs by forking a per-host server that has
    Hydra and the job runner imported, half a CPU second less per job than a new interpreter
    (false: a new interpreter per job); ``placement``: where the workflow's
    services run: ``round_robin`` (jobs on ``layer``, simulations spread over the layer listing a
    ``simulator`` service) or ``optimize`` (the infrastructure's service instances placed on hosts by
    CP-SAT, least traffic over slow links: jobs run on the ``trainer`` instances' hosts and
    simulations on the ``simulator`` instances' hosts); ``infrastructure``: see
    ``engage.deploy.infrastructure`` (select shipped ones with ``+infrastructure=NAME``).
    """

    _target_: str = "hydra_plugins.engage_launcher.engage_launcher.EngageLauncher"
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
    mlflow: MLflowConf = field(default_factory=MLflowConf)
    infrastructure: Any = field(default_factory=_local_infrastructure)


ConfigStore.instance().store(group="hydra/launcher", name="engage", node=EngageLauncherConf, provider="engage-deploy")


class EngageLauncher(Launcher):
    """Hydra ``Launcher`` that runs jobs on infrastructure hosts; see :class:`EngageLauncherConf`."""

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    @classmethod
    def preflight(cls, config: DictConfig) -> str | None:
        """Check ``hydra.launcher`` against the whole config before the sweep exists (its MLflow run,
        folder or hosts): the infrastructure, the jobs' layer, the other options, the placement, and
        the simulations' layer (``data.executor_options.layer`` with ``data.executor=deploy``).
        Raises :class:`ValueError` with one line naming the key; returns the store named by
        ``hydra.launcher.mlflow.tracking_uri``, where the sweep records, if any."""
        from engage.deploy.infrastructure import Infrastructure, InfrastructureError
        from engage.deploy.sweep import SweepOptions

        params = OmegaConf.select(config, "hydra.launcher", default=None) or {}
        try:
            infrastructure = Infrastructure.from_dict(params.get("infrastructure"))
            infrastructure.validate()
            options = SweepOptions.from_params(params)
        except (InfrastructureError, TypeError) as exc:
            raise ValueError(str(exc)) from None
        layers = [layer.name for layer in infrastructure.layers]
        for key, layer in (
            ("hydra.launcher.layer", options.layer),
            ("data.executor_options.layer", _simulation_layer(config)),
        ):
            if layer is not None and layer not in layers:
                raise ValueError(f"{key}: no layer named {layer!r}; layers are {', '.join(layers)}")
        if options.placement == "optimize":
            from engage.deploy.placement.services import ServicePlacementError, place_services

            try:
                place_services(infrastructure)
            except ServicePlacementError as exc:
                raise ValueError(f"hydra.launcher.placement=optimize: {exc}") from None
        mlflow = options.mlflow or {}
        return mlflow.get("tracking_uri") if mlflow.get("enabled", True) else None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context
        # an app without engage run's sweep callback is checked here, before the sweep starts
        from engage.core.tracking.store import TrackingUnavailable, check_reachable

        try:
            store = self.preflight(config)
        except ValueError as exc:
            print(f"engage launcher: {exc}", file=sys.stderr)
            sys.exit(2)
        if store:
            try:
                check_reachable(store)
            except TrackingUnavailable as exc:
                from engage.core.run import EXIT_TRACKING_UNAVAILABLE

                print(f"engage launcher: hydra.launcher.mlflow.tracking_uri: {exc}", file=sys.stderr)
                sys.exit(EXIT_TRACKING_UNAVAILABLE)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from . import _core

        return _core.launch(launcher=self, job_overrides=job_overrides, initial_job_idx=initial_job_idx)


def _simulation_layer(config: DictConfig) -> str | None:
    """The layer asked for the simulations, when the deploy executor runs them."""
    if OmegaConf.select(config, "data.executor", default=None) != "deploy":
        return None
    layer = OmegaConf.select(config, "data.executor_options.layer", default=None)
    return None if layer is None else str(layer)


class EngageDeploySearchPathPlugin(SearchPathPlugin):
    """Makes the shipped ``infrastructure/*.yaml`` configs selectable from any Hydra app."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="engage-deploy", path="pkg://engage.deploy.conf")
