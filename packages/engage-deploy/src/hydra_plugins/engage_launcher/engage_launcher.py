"""The ``engage`` Hydra launcher: runs each job of a sweep as a process on the hosts of an
infrastructure (``local``, ``netns``, Grid'5000, Chameleon, Vagrant, SSH), records every job as a
child MLflow run of its sweep and writes a time-stamped experiment folder.

Only light imports here: Hydra imports this module while discovering plugins; the options are
:class:`engage.deploy.options.LauncherOptions` (standard library only), the work is in ``_core``
and :mod:`engage.deploy.sweep`.

Example::

    engage run -m hydra/launcher=engage seed=0,1,2
    engage run -m hydra/launcher=engage +infrastructure=netns_edge_cloud hydra.launcher.parallelism=2 seed=0,1
    python my_app.py -m hydra/launcher=engage hydra.launcher.retries=1 lr=0.1,0.01
"""

import json
import sys
from collections.abc import Sequence
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.search_path_plugin import SearchPathPlugin
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from engage.deploy.options import SERVING, LauncherOptions

ConfigStore.instance().store(group="hydra/launcher", name="engage", node=LauncherOptions, provider="engage-deploy")


class EngageLauncher(Launcher):
    """Hydra ``Launcher`` that runs jobs on infrastructure hosts; its options are
    :class:`engage.deploy.options.LauncherOptions`, checked once in :meth:`setup`."""

    def __init__(self, **params: Any) -> None:
        self.params = params
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self.options: LauncherOptions | None = None
        self.infrastructure: Any = None
        self.placement: Any = None  # the services' plan with placement: optimize, made once in setup

    @staticmethod
    def check(config: DictConfig) -> tuple[LauncherOptions, Any, Any]:
        """``hydra.launcher`` checked against the whole config before the sweep exists (its MLflow
        run, folder or hosts): the options, the infrastructure, the jobs' layer, the placement,
        and the simulations' layer (``data.executor_options.layer`` with ``data.executor=deploy``).
        Returns the options, the infrastructure and the services' placement plan (``None``
        unless ``placement: optimize``); raises :class:`ValueError` with one line naming the key."""
        from engage.deploy.infrastructure import Infrastructure, InfrastructureError
        from engage.deploy.providers import get_provider

        params = OmegaConf.select(config, "hydra.launcher", default=None) or {}
        try:
            options = LauncherOptions.checked(params)
            infrastructure = Infrastructure.from_dict(options.infrastructure)
            infrastructure.validate()
            get_provider(infrastructure.provider).check(infrastructure)
            if infrastructure.provider == "slurm":
                from engage.deploy.providers.slurm import check_ranks

                check_ranks(infrastructure, config)
        except (InfrastructureError, TypeError) as exc:
            raise ValueError(str(exc)) from None
        if infrastructure.provider == "slurm" and OmegaConf.select(config, "data.executor", default=None) == "deploy":
            raise ValueError(
                "data.executor=deploy: the slurm provider's hosts are job slots, not machines to start simulations "
                "on; use data.executor=slurm to run them as Slurm jobs"
            )
        layers = [layer.name for layer in infrastructure.layers]
        for key, layer in (
            ("hydra.launcher.layer", options.layer),
            ("data.executor_options.layer", _simulation_layer(config)),
        ):
            if layer is not None and layer not in layers:
                raise ValueError(f"{key}: no layer named {layer!r}; layers are {', '.join(layers)}")
        plan = None
        if options.placement == "optimize":
            from engage.deploy.placement.workflow import ServicePlacementError

            try:
                plan = _services_plan(infrastructure)
            except ServicePlacementError as exc:
                raise ValueError(f"hydra.launcher.placement=optimize: {exc}") from None
        if options.serving.enabled:
            _check_serving(options, infrastructure, config)
        if options.mlflow.enabled:
            _check_experiment(options.mlflow)
        return options, infrastructure, plan

    @classmethod
    def preflight(cls, config: DictConfig) -> str | None:
        """:meth:`check` for a sweep callback that runs before the launcher exists: raises
        :class:`ValueError` with one line naming the key; returns the store named by
        ``hydra.launcher.mlflow.tracking_uri``, where the sweep records, if any (the local fallback
        store where it does not answer and ``fallback_local`` allows it)."""
        options, _, _ = cls.check(config)
        mlflow = options.mlflow
        if not (mlflow.enabled and mlflow.tracking_uri):
            return None
        # without fallback_local, the callback checks the store itself, and stops where it does not answer
        return _reachable_store(mlflow.tracking_uri, True, keep=True) if mlflow.fallback_local else mlflow.tracking_uri

    @classmethod
    def resumed_parent(cls, config: DictConfig) -> str | None:
        """With ``hydra.launcher.resume``, the MLflow run the last launch into the sweep
        directory recorded under (the sweep's parent run continues it), else ``None``."""
        from pathlib import Path

        from engage.deploy.experiment import ExperimentFolder

        params = OmegaConf.select(config, "hydra.launcher", default=None) or {}
        if not LauncherOptions.checked(params).resume:
            return None
        return ExperimentFolder.recorded_parent(Path(str(config.hydra.sweep.dir)))

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context
        # an app without engage run's sweep callback is checked here, before the sweep starts
        from engage.core.tracking.store import TrackingUnavailable

        try:
            self.options, self.infrastructure, self.placement = self.check(config)
        except ValueError as exc:
            print(f"engage launcher: {exc}", file=sys.stderr)
            sys.exit(2)
        mlflow = self.options.mlflow
        if mlflow.enabled and mlflow.tracking_uri:
            try:
                mlflow.tracking_uri = _reachable_store(mlflow.tracking_uri, mlflow.fallback_local)
            except TrackingUnavailable as exc:
                from engage.core.run import EXIT_TRACKING_UNAVAILABLE

                print(f"engage launcher: hydra.launcher.mlflow.tracking_uri: {exc}", file=sys.stderr)
                sys.exit(EXIT_TRACKING_UNAVAILABLE)
        if mlflow.enabled:
            from engage.deploy.mlflow_process import import_mlflow_early

            # a kept server is asked over HTTP; otherwise this process writes the SQLite store
            import_mlflow_early(sql_store=mlflow.store().startswith("sqlite:") and not mlflow.keep_server)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from . import _core

        return _core.launch(launcher=self, job_overrides=job_overrides, initial_job_idx=initial_job_idx)


#: store named by hydra.launcher.mlflow.tracking_uri -> the one the sweep records in, as the sweep
#: callback's preflight found it, until the launcher's setup takes it (each sweep checks anew)
_STORES: dict[tuple[str, bool], str] = {}


def _reachable_store(uri: str, fallback_local: bool, keep: bool = False) -> str:
    """``uri`` if it answers; else, with ``fallback_local``, the local fallback store (said in
    one warning line), else :class:`~engage.core.tracking.store.TrackingUnavailable`. ``keep``
    (the sweep callback's preflight): the answer waits for the launcher's setup, which takes it."""
    from engage.core.tracking.store import TrackingUnavailable, check_reachable, fallback_tracking_uri

    key = (uri, fallback_local)
    if key in _STORES:  # the sweep callback's preflight checked it for this sweep: the setup takes it
        return _STORES.pop(key)
    try:
        check_reachable(uri)
        found = uri
    except TrackingUnavailable as exc:
        if not fallback_local:
            raise
        found = fallback_tracking_uri()
        print(
            f"engage launcher: warning: hydra.launcher.mlflow.tracking_uri: {exc}; recording the sweep "
            f"locally to {found}",
            file=sys.stderr,
        )
    if keep:
        _STORES[key] = found
    return found


def _check_experiment(mlflow: Any) -> None:
    """An experiment whose artifacts the user's own MLflow server keeps is used through it."""
    from engage.core.tracking.sqlite_store import artifacts_behind_a_server

    line = artifacts_behind_a_server(
        mlflow.store(), mlflow.experiment, "hydra.launcher.mlflow.tracking_uri", "hydra.launcher.mlflow.experiment"
    )
    if line is not None:
        raise ValueError(line)


#: services' plans made in this process, by infrastructure (``to_dict()`` as sorted JSON)
_PLANS: dict[str, Any] = {}


def _services_plan(infrastructure: Any) -> Any:
    """The services' plan of ``infrastructure``, solved once a process: ``engage run`` checks the
    launcher before the sweep exists (:meth:`EngageLauncher.preflight`) and the launcher checks
    again in ``setup``; both get this one plan, which the sweep then deploys."""
    from engage.deploy.placement.workflow import solve_workflow, workflow_problem

    key = json.dumps(infrastructure.to_dict(), sort_keys=True, default=str)
    if key not in _PLANS:
        if len(_PLANS) >= 8:
            _PLANS.clear()
        _PLANS[key] = solve_workflow(infrastructure, workflow_problem(infrastructure))  # checked by the caller
    return _PLANS[key]


def _simulation_layer(config: DictConfig) -> str | None:
    """The layer asked for the simulations, when the deploy executor runs them."""
    if OmegaConf.select(config, "data.executor", default=None) != "deploy":
        return None
    layer = OmegaConf.select(config, "data.executor_options.layer", default=None)
    return None if layer is None else str(layer)


class EngageDeploySearchPathPlugin(SearchPathPlugin):
    """Makes the shipped ``infrastructure/*.yaml`` configs selectable from any Hydra app."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if "pkg://engage.deploy.conf" not in {element.path for element in search_path.get_path()}:
            search_path.append(provider="engage-deploy", path="pkg://engage.deploy.conf")


def _check_serving(options: LauncherOptions, infrastructure: Any, config: DictConfig) -> None:
    """``hydra.launcher.serving`` against the infrastructure: the plan is made once with the
    hosts' names (their addresses come with the deployment); :class:`ValueError`, one line."""
    import importlib.util

    from engage.deploy.serve.placing import ServingPlanError, plan_serving, root_layer

    where = SERVING
    if infrastructure.provider != "netns":
        raise ValueError(
            f"{where}: replicas need hosts with an address of their own that share this machine's files; "
            f"the {infrastructure.provider} provider's do not: serve on a netns infrastructure"
        )
    if options.placement == "optimize":
        raise ValueError(
            f"{where}: the trainer runs on the root of the serving tree; use hydra.launcher.placement=round_robin"
        )
    if OmegaConf.select(config, "data.val_simulations", default=1) == 0:
        raise ValueError(f"{where}: answers are checked against held-out simulations; give data.val_simulations >= 1")
    if options.parallelism != 1:
        raise ValueError(f"{where}: set hydra.launcher.parallelism=1 (each job's replicas use the same ports)")
    if importlib.util.find_spec("litserve") is None:
        raise ValueError(f"{where} needs LitServe: pip install 'engage-deploy[serve]'")
    try:
        root = root_layer(options.serving, infrastructure)
        plan_serving(options.serving, infrastructure, dict.fromkeys(infrastructure.host_names(), ""), "")
    except ServingPlanError as exc:
        raise ValueError(str(exc)) from None
    trainers = options.layer or infrastructure.layers[0].name
    if root != trainers:
        raise ValueError(
            f"{where}.tree ends at {root}, but jobs run on {trainers}; the trainer publishes from the root: "
            f"set hydra.launcher.layer={root} or end the tree at {trainers}"
        )
