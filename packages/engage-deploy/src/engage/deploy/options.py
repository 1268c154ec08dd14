"""The ``hydra.launcher`` options of the ``engage`` launcher: one dataclass, stored in Hydra's
ConfigStore as ``hydra/launcher=engage``, checked once (:meth:`LauncherOptions.checked`) when the
launcher is set up.

Only the standard library here: Hydra imports this module while discovering plugins.

Example::

    >>> options = LauncherOptions.checked({"parallelism": 2, "retries": 1})
    >>> options.parallelism, options.retries, options.mlflow.experiment
    (2, 1, 'engage')
    >>> LauncherOptions.checked({"paralelism": 2})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: hydra.launcher.paralelism is not an option of the engage launcher; options are ...
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: where the serving options are, in a Hydra config
SERVING = "hydra.launcher.serving"
#: where the launcher places the workflow's services
PLACEMENTS = ("round_robin", "optimize")


def _local_infrastructure() -> dict[str, Any]:
    return {"provider": "local", "layers": [{"name": "local", "hosts": 1}], "network": [], "options": {}}


@dataclass
class MLflowOptions:
    """Where jobs log. ``server`` starts an ``mlflow server`` for the sweep in front of the sweep's
    SQLite store, so parallel writers and other hosts go through it (``null``: when jobs run in
    parallel or on other hosts; ``true``: always; ``false``: never); ``keep_server`` leaves it
    running for the next sweeps on the same store and reuses one left by an earlier sweep;
    ``tracking_uri`` overrides the store (default: the sweep's ``ENGAGE_TRACKING_URI``, else
    ``sqlite:///<cwd>/mlflow.db``); ``experiment`` names the MLflow experiment when the sweep has
    no parent run yet; ``server_start_timeout_s``: how long the server may take to answer;
    ``auth``: the server serves MLflow's basic-auth application with a random admin user that
    only the sweep's jobs are given (``null``: when the hosts are not all this machine, i.e. any
    provider but ``local``; ``true``: always; ``false``: never); ``fallback_local``: when
    ``tracking_uri`` does not answer as the sweep starts, record the sweep in
    ``mlflow-fallback.db`` of the working folder (one warning line) instead of stopping with exit
    code 3, as ``logger.fallback_local`` does for a run."""

    enabled: bool = True
    server: bool | None = None
    keep_server: bool = False
    auth: bool | None = None
    tracking_uri: str | None = None
    experiment: str = "engage"
    server_start_timeout_s: float = 120.0
    fallback_local: bool = False

    def store(self) -> str:
        """The store the sweep records in: ``tracking_uri``, else the store of the sweep it runs
        inside (``ENGAGE_TRACKING_URI``), else ``mlflow.db`` in the working folder."""
        from pathlib import Path

        from engage.core.tracking.store import TRACKING_URI_ENV

        configured = self.tracking_uri or os.environ.get(TRACKING_URI_ENV)
        return configured or f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


@dataclass
class ServingOptions:
    """Inference replicas of the model each job trains, served while it trains
    (``engage-deploy[serve]``; see ``docs/serve.md``). ``sources``: layer -> what each of its hosts
    sends (:mod:`engage.deploy.serve.demand`: requests per second, a schedule
    ``[[from_s, rate], ...]``, or either per served model; empty: no serving); ``tree``: layer ->
    the next layer towards the root (the trainer's layer), the path requests travel; the placement
    engine (``solver``, one of ``engage place --solver``) puts replicas on hosts of the path with
    the memory for one (``model_size``: what a replica process takes) and routes each source to
    one, from the model's ``gflop`` per request and ``input`` bytes, and each host's compute (its
    layer's ``cpu`` x ``gflops_per_cpu``); ``models``: other models served beside the one being
    trained, name -> ``{checkpoint: a Lightning checkpoint of the trained model's class,
    model_size: ..., gflop: ...}`` (sizes and GFLOP default to the trained model's);
    ``compare_root``: each source also sends to the root's replica, the placement to compare
    with (``null``: when the placement is fixed, ``slot_s: 0``); ``slot_s``: when > 0, the
    placement is solved again every ``slot_s`` seconds from the request rates the sources
    measured in the last slot (``solver=online`` keeps its state from slot to slot), replicas
    started and stopped and sources re-routed accordingly, at most
    ``max_moves`` new replicas a slot (``null``: no limit); ``every_n_steps``: the trainer
    publishes its weights to every replica of the model being trained this often (and at the
    end); ``port``: where replicas listen on their host (the n-th served model at ``port + n``);
    ``seed``: the requests' arrivals and inputs; ``drain_s``: seconds requests go on after
    training ends; ``max_failed``: the largest fraction of a route's requests that may fail (no
    answer or an error status, as while a replica restarts) in a run that succeeds (1: no
    limit)."""

    sources: dict[str, Any] = field(default_factory=dict)
    tree: dict[str, str] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    solver: str = "cpsat"
    model_size: str = "600MB"
    gflop: float = 0.001
    gflops_per_cpu: float = 20.0
    input: str = "2KB"
    compare_root: bool | None = None
    slot_s: float = 0.0
    max_moves: float | None = None
    every_n_steps: int = 20
    port: int = 8100
    seed: int = 0
    drain_s: float = 3.0
    max_failed: float = 0.05

    @property
    def enabled(self) -> bool:
        return bool(self.sources)

    @property
    def compared(self) -> bool:
        """Whether each source also sends to the root's replica (``compare_root``, or its default)."""
        return self.slot_s == 0 if self.compare_root is None else bool(self.compare_root)

    def check(self) -> None:
        """:class:`ValueError`, one line naming the key and the fix, for values wrong on their own
        (those that depend on the infrastructure are checked with it when the plan is made)."""
        where = SERVING
        self.demand()
        if self.sources and not self.tree:
            raise ValueError(f"{where}.tree is empty; give each layer's next layer towards the trainer's")
        for name in ("gflop", "gflops_per_cpu"):
            if not 0 < getattr(self, name) < math.inf:  # NaN too
                raise ValueError(f"{where}.{name} is {getattr(self, name)}; use a value > 0")
        if self.every_n_steps < 1:
            raise ValueError(f"{where}.every_n_steps is {self.every_n_steps}; use 1 or more")
        if not 1 <= self.port <= 65535 - len(self.models):
            raise ValueError(
                f"{where}.port is {self.port}; use a port from 1 to {65535 - len(self.models)} "
                "(the n-th served model listens on port + n)"
            )
        if not 0 <= self.drain_s < math.inf:  # NaN too
            raise ValueError(f"{where}.drain_s is {self.drain_s}; use 0 or more seconds")
        if not 0 <= self.slot_s < math.inf:
            raise ValueError(f"{where}.slot_s is {self.slot_s}; use 0 (placement fixed) or seconds > 0")
        if self.max_moves is not None and not 0 <= self.max_moves < math.inf:
            raise ValueError(
                f"{where}.max_moves is {self.max_moves}; use 0 or more new replicas a slot (null: no limit)"
            )
        if 0 < self.slot_s < 0.5:
            raise ValueError(
                f"{where}.slot_s is {self.slot_s}; re-place every 0.5 s or more (senders report every 0.2 s)"
            )
        if self.slot_s == 0 and self.max_moves is not None:
            raise ValueError(f"{where}.max_moves limits moves from slot to slot; set slot_s > 0 or max_moves=null")
        if self.slot_s > 0 and self.compare_root:
            raise ValueError(
                f"{where}.compare_root compares a fixed placement with the root's; "
                "with slot_s > 0 set compare_root=false"
            )
        if self.max_moves is not None and self.solver != "online":
            raise ValueError(f"{where}.max_moves limits the online policy's moves; set solver=online or max_moves=null")
        if not 0 <= self.max_failed <= 1:
            raise ValueError(f"{where}.max_failed is {self.max_failed}; use a fraction from 0 to 1 (1: no limit)")

    def served_models(self) -> dict[str, dict[str, Any]]:
        """Every served model, the trained one (``model``) first: name -> ``{checkpoint,
        model_size, gflop}`` (the trained one's checkpoint ``None``); :class:`ValueError` for an
        entry of ``models`` that names no readable checkpoint or has unknown keys."""
        from engage.deploy.serve.demand import MODEL_NAME, TRAINED

        where = f"{SERVING}.models"
        served = {TRAINED: {"checkpoint": None, "model_size": self.model_size, "gflop": self.gflop}}
        for name, entry in self.models.items():
            if name == TRAINED:
                raise ValueError(f"{where}.{name}: {TRAINED!r} is the model being trained; name the others otherwise")
            if not MODEL_NAME.fullmatch(str(name)):
                raise ValueError(f"{where}.{name}: a served model's name holds letters, digits, _ and - only")
            if not isinstance(entry, Mapping) or not entry.get("checkpoint"):
                raise ValueError(f"{where}.{name} is {entry!r}; give {{checkpoint: PATH}} (a Lightning checkpoint)")
            unknown = sorted(set(entry) - {"checkpoint", "model_size", "gflop"})
            if unknown:
                raise ValueError(f"{where}.{name}.{unknown[0]} is not a key; keys are checkpoint, model_size, gflop")
            checkpoint = os.path.abspath(os.path.expanduser(str(entry["checkpoint"])))
            if not os.path.isfile(checkpoint) or not os.access(checkpoint, os.R_OK):
                raise ValueError(
                    f"{where}.{name}.checkpoint: no readable file {checkpoint}; give a Lightning checkpoint"
                )
            gflop = entry.get("gflop", self.gflop)
            if not isinstance(gflop, (int, float)) or isinstance(gflop, bool) or not 0 < gflop < math.inf:
                raise ValueError(f"{where}.{name}.gflop is {gflop!r}; use a value > 0")
            served[str(name)] = {
                "checkpoint": checkpoint,
                "model_size": str(entry.get("model_size", self.model_size)),
                "gflop": float(gflop),
            }
        return served

    def demand(self) -> dict[tuple[str, str], Any]:
        """``(layer, model) -> RateSchedule`` of :attr:`sources`; :class:`ValueError`, one line."""
        from engage.deploy.serve.demand import parse_sources

        return parse_sources(self.sources, self.served_models(), f"{SERVING}.sources")


@dataclass
class LauncherOptions:
    """``hydra.launcher`` options of the ``engage`` launcher.

    ``parallelism``: jobs running at once (0: one per CPU core of this machine); ``fail_fast``:
    start no new job after one failed; ``retries``: re-run a failed job this many times;
    ``layer``: the layer whose hosts run jobs (default: the first layer); ``resume``: skip jobs
    whose resolved config already completed in this sweep directory; ``monitor_interval_s``:
    system-metric sampling period; ``job_timeout_s``: kill a job running longer (null: no limit);
    ``python``: interpreter on the hosts (default: this one); ``fork_jobs``: on hosts that share
    this machine's files (``local``, ``netns``), start jobs by forking a per-host server that has
    Hydra and the job runner imported, half a CPU second less per job than a new interpreter
    (false: a new interpreter per job); ``placement``: where the workflow's services run:
    ``round_robin`` (jobs on ``layer``, simulations spread over the layer listing a ``simulator``
    service) or ``optimize`` (the infrastructure's service instances placed on hosts by CP-SAT,
    least traffic over slow links: jobs run on the ``trainer`` instances' hosts and simulations on
    the ``simulator`` instances' hosts); ``mlflow``: see :class:`MLflowOptions`;
    ``infrastructure``: see ``engage.deploy.infrastructure`` (select shipped ones with
    ``+infrastructure=NAME``); ``serving``: see :class:`ServingOptions`.
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
    mlflow: MLflowOptions = field(default_factory=MLflowOptions)
    infrastructure: Any = field(default_factory=_local_infrastructure)
    serving: ServingOptions = field(default_factory=ServingOptions)

    @classmethod
    def checked(cls, params: Mapping[str, Any]) -> LauncherOptions:
        """The options in ``params`` (``hydra.launcher``, a mapping or an OmegaConf node), checked:
        raises :class:`ValueError` with one line naming the key and the fix."""
        values = _plain(params)
        options = cls(**_known(values, cls, "hydra.launcher"))
        options.mlflow = MLflowOptions(**_known(_plain(options.mlflow), MLflowOptions, "hydra.launcher.mlflow"))
        options.serving = ServingOptions(**_known(_plain(options.serving), ServingOptions, SERVING))
        options.serving.check()
        if options.parallelism < 0:
            raise ValueError(f"hydra.launcher.parallelism is {options.parallelism}; use 0 (one per core) or more")
        if options.retries < 0:
            raise ValueError(f"hydra.launcher.retries is {options.retries}; use 0 or more")
        if options.monitor_interval_s <= 0:
            raise ValueError(f"hydra.launcher.monitor_interval_s is {options.monitor_interval_s}; use a value > 0")
        if options.job_timeout_s is not None and options.job_timeout_s <= 0:
            raise ValueError(f"hydra.launcher.job_timeout_s is {options.job_timeout_s}; use a value > 0 or null")
        if options.mlflow.server_start_timeout_s <= 0:
            raise ValueError(
                f"hydra.launcher.mlflow.server_start_timeout_s is {options.mlflow.server_start_timeout_s}; "
                "use a value > 0"
            )
        if options.placement not in PLACEMENTS:
            raise ValueError(f"hydra.launcher.placement is {options.placement!r}; use {' or '.join(PLACEMENTS)}")
        return options

    def summary(self) -> dict[str, Any]:
        """The options as plain values, without the infrastructure (recorded in ``sweep.json``)."""
        values = dataclasses.asdict(self)
        values.pop("_target_", None)
        values.pop("infrastructure", None)
        return values


def _plain(params: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    from omegaconf import OmegaConf  # only when options are checked: Hydra has loaded it by then

    if OmegaConf.is_config(params):
        params = OmegaConf.to_container(params, resolve=True)
    return {str(k): v for k, v in dict(params or {}).items()}


def _known(values: Mapping[str, Any], cls: type, where: str) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    for key in values:
        if key not in names and not key.startswith("_"):
            raise ValueError(f"{where}.{key} is not an option of the engage launcher; options are {', '.join(names)}")
    return {k: v for k, v in values.items() if k in names}
