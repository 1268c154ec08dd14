"""What ``engage run`` does once its config passed its checks: compose a Lightning Trainer,
model, DataModule, callbacks and strategy from the config and the installed plugins, train, and
record everything in MLflow. Imported by :func:`engage.core.run.task` only then, so that bad
input, ``--cfg``, ``--help`` and shell completion answer without importing Lightning and PyTorch."""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from engage.core.checkpoint_io import AtomicCheckpointIO
from engage.core.config.validate import ConfigError, explain
from engage.core.console import quiet_lightning, quiet_other_ranks
from engage.core.events import RunRecord
from engage.core.files import write_private
from engage.core.online.buffer import BufferClosed
from engage.core.online.datamodule import OnlineDataModule
from engage.core.online.outcome import OnlineRunFailed
from engage.core.online.rank_failures import other_ranks, peer_lost
from engage.core.online.run_check import OnlineRunCheck
from engage.core.online.timeline import SimulationTimeline
from engage.core.plugins import DISABLE_ENV, PluginError, PluginHookError, call_each, get_plugin_manager, per_plugin
from engage.core.rank_env import LOCAL_RANK_ENV, MASTER_ADDR_ENV, NODE_RANK_ENV
from engage.core.run import (
    DISTRIBUTED_ENV,
    RANK_STARTER_ENV,
    Requeued,
    Terminated,
    console,
    sigterm_raises_terminated,
)
from engage.core.tracking.mlflow_run import MLflowRun
from engage.core.tracking.naming import PARAM_MAX_CHARS, SIMULATOR_SPACE_PARAM
from engage.core.tracking.store import (
    ERROR_TAG,
    UNAVAILABLE_FIX,
    TrackingUnavailable,
    bound_http_requests,
    check_reachable,
    default_tracking_uri,
    lost_server,
    resolve_tracking_uri,
)
from engage.core.tracking.uninterrupted import ctrl_c_deferred

#: in a run's output folder: its MLflow run (id and store), which a requeued incarnation takes on
RUN_FILE = "engage-mlflow-run.json"


def _output_dir() -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(tempfile.mkdtemp(prefix="engage-run-"))


def choose_tracking_uri(cfg: DictConfig, output_dir: Path) -> str:
    """The tracking URI to log to; checks it answers (or falls back to a local store if allowed)."""
    uri = resolve_tracking_uri(cfg.logger.uri)
    try:
        check_reachable(uri, cfg.logger.timeout_s)
    except TrackingUnavailable as exc:
        if not cfg.logger.fallback_local:
            raise TrackingUnavailable(f"{exc}; {UNAVAILABLE_FIX}") from None
        local = default_tracking_uri(output_dir)
        console.print(f"[yellow]{exc}; logging locally to {local}[/yellow]")
        return local
    return uri


def plugin_callbacks(cfg: DictConfig) -> list[Any]:
    """The Lightning callbacks plugins add to a run (``engage_callbacks``); a plugin that returns
    something else than a list of callbacks is a :class:`PluginError` naming it."""
    from lightning.pytorch.callbacks import Callback

    callbacks: list[Any] = []
    manager = get_plugin_manager()
    for plugin, added in per_plugin(manager, manager.hook.engage_callbacks, cfg=cfg):
        items = list(added) if isinstance(added, (list, tuple)) else None
        if items is None or not all(isinstance(c, Callback) for c in items):
            got = type(added).__name__ if items is None else ", ".join(sorted({type(c).__name__ for c in items}))
            raise PluginError(
                f"plugin {plugin!r}: engage_callbacks must return a list of Lightning callbacks, got {got}; "
                f"fix it, or set {DISABLE_ENV}={plugin}"
            )
        callbacks.extend(items)
    return callbacks


def build_strategy(cfg: DictConfig) -> Any:
    manager = get_plugin_manager()
    # the first plugin's answer wins (pluggy's firstresult: the plugins after it are not asked)
    from_plugin = next(iter(call_each(manager, manager.hook.engage_strategy, cfg=cfg)), None)
    if from_plugin is not None:
        return from_plugin
    node = cfg.strategy
    if isinstance(node, DictConfig) and "_target_" in node:
        return instantiate(node)
    if isinstance(node, DictConfig):
        return node.name
    return str(node)


def build_callbacks(cfg: DictConfig, output_dir: Path) -> list[pl.Callback]:
    from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar

    from engage.core.callbacks import EngageProgressBar, LastValidation, TrainedCheckpoint

    callbacks = [instantiate(node) for node in (cfg.callbacks or {}).values() if node and "_target_" in node]
    callbacks += plugin_callbacks(cfg)
    if cfg.trainer.enable_progress_bar is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(EngageProgressBar())
    if cfg.trainer.enable_checkpointing and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        # one folder per run: at each epoch's end its checkpoint, with last.ckpt a link to it (a
        # checkpoint holds the buffer's samples: no second copy of them) and, with
        # checkpoint_every_n_steps, steps-*.ckpt every so many steps as well (Lightning takes one
        # or the other from one callback, so two, whose files are named apart since each deletes
        # its own older one); `ckpt_path=last` resumes from the newest
        folder = str(output_dir / "checkpoints")
        callbacks.append(TrainedCheckpoint(dirpath=folder, save_last="link"))
        if cfg.checkpoint_every_n_steps:
            callbacks.append(
                TrainedCheckpoint(
                    dirpath=folder, filename="steps-{epoch}-{step}", every_n_train_steps=cfg.checkpoint_every_n_steps
                )
            )
    callbacks.append(LastValidation())
    return callbacks


def requeued_run(trainer: pl.Trainer, output_dir: Path, tracking_uri: str) -> str | None:
    """The MLflow run of this run's earlier incarnation, when this one continues it: Lightning
    resumes a fit inside a Slurm job from the HPC checkpoint a requeue left in
    ``default_root_dir`` (``hpc_ckpt_N.ckpt``), and that incarnation named its run in
    ``output_dir``'s :data:`RUN_FILE` (for the same tracking store)."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect() or not list(Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt")):
        return None
    try:
        earlier = json.loads((output_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return earlier.get("run_id") if earlier.get("tracking_uri") == tracking_uri else None


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest checkpoint under a run folder (``last.ckpt`` of an epoch's end, or a
    ``steps-*.ckpt`` of ``checkpoint_every_n_steps`` written since), if any: the file itself,
    not ``last.ckpt``'s link to it, so that the fit resumed from it keeps it (Lightning never
    removes the checkpoint a fit resumed from) and ``engage replay`` finds it later."""
    found = sorted(output_dir.rglob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name == "last.ckpt"))
    return os.path.realpath(found[-1]) if found else None


def resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """``cfg.ckpt_path`` as a file: ``last`` is :func:`last_checkpoint` of this run folder. A
    path that names no checkpoint is a :class:`ConfigError`, and so is ``last`` without one,
    except in a job of a sweep some other job of which left a checkpoint: a job the interrupted
    sweep had not started (or that had written none) starts from the beginning, said in a line."""
    value = cfg.ckpt_path
    if value in (None, ""):
        return None
    if str(value) == "last":
        from hydra.types import RunMode

        found = last_checkpoint(output_dir)
        sweep = HydraConfig.get() if HydraConfig.initialized() else None
        # a job of a resumed sweep (some job of it left a checkpoint) that left none starts anew
        resumed_sweep = (
            sweep is not None and sweep.mode == RunMode.MULTIRUN and any(Path(str(sweep.sweep.dir)).rglob("*.ckpt"))
        )
        if found is None and resumed_sweep:
            console.print(
                f"[yellow]engage run: ckpt_path=last: no checkpoint in this job's folder {output_dir}; it starts "
                "from the beginning[/yellow]",
                highlight=False,
            )
            return None
        if found is None:
            raise ConfigError(
                f"ckpt_path=last: no checkpoint in the run folder {output_dir}; pass hydra.run.dir of the run to "
                "resume, or ckpt_path=PATH"
            )
        return found
    if "://" in str(value):
        return str(value)
    if not Path(value).is_file():
        raise ConfigError(f"ckpt_path={value}: no such checkpoint file; pass an existing .ckpt or ckpt_path=last")
    return os.path.realpath(value)  # the file itself, as for last


def check_ranks(trainer: pl.Trainer, datamodule: Any, ckpt_path: str | None, saved_ranks: int | None) -> None:
    """Refuse, before anything starts, what several ranks cannot run (one line,
    :class:`ConfigError`): nodes no cluster starts, fewer online simulations than ranks (a rank
    without any would train nothing), and a checkpoint of another number of ranks."""
    from lightning.fabric.plugins.environments import LightningEnvironment

    ranks = trainer.world_size
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if (
        trainer.num_nodes > 1
        and isinstance(environment, LightningEnvironment)
        and not {MASTER_ADDR_ENV, NODE_RANK_ENV} & set(os.environ)
    ):
        # Lightning would start this node's ranks and wait for the others' for ever
        raise ConfigError(
            f"trainer.num_nodes={trainer.num_nodes}: nothing starts the other nodes' ranks here (no Slurm job, no "
            "torchrun, no NODE_RANK and MASTER_ADDR); run it inside a Slurm allocation or under torchrun, or set "
            "trainer.num_nodes=1"
        )
    check_slurm_shape(trainer, environment)
    simulations = getattr(getattr(datamodule, "settings", None), "simulations", None)
    if isinstance(datamodule, OnlineDataModule) and simulations is not None and simulations < ranks:
        raise ConfigError(
            f"data.simulations={simulations}: fewer than the {ranks} ranks (trainer.devices x trainer.num_nodes), and "
            f"each rank trains on simulations of its own; raise data.simulations to {ranks} or more, or train on "
            "fewer devices"
        )
    if saved_ranks is not None and saved_ranks != ranks:
        raise ConfigError(f"ckpt_path={ckpt_path}: {other_ranks(saved_ranks, ranks)}")


def check_slurm_shape(trainer: pl.Trainer, environment: Any) -> None:
    """Inside a Slurm job, the trainer's ranks are the job's tasks: ``trainer.num_nodes`` its
    nodes and ``trainer.devices`` its tasks a node. Lightning checks it only as the fit starts, a
    traceback on every rank after the MLflow run was opened; refused here in one line."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not isinstance(environment, SLURMEnvironment):
        return
    nodes, per_node = os.environ.get("SLURM_NNODES"), os.environ.get("SLURM_NTASKS_PER_NODE")
    devices = trainer.num_devices
    if nodes is not None and nodes.isdigit() and int(nodes) != trainer.num_nodes:
        raise ConfigError(
            f"trainer.num_nodes={trainer.num_nodes}: this Slurm job has {nodes} node(s) (--nodes={nodes}); set "
            f"trainer.num_nodes={nodes}, or run in an allocation of {trainer.num_nodes} nodes"
        )
    if per_node is not None and per_node.isdigit() and int(per_node) != devices:
        raise ConfigError(
            f"trainer.devices={devices}: this Slurm job runs {per_node} task(s) a node (--ntasks-per-node={per_node}), "
            f"one a rank; set trainer.devices={per_node}, or start {devices} tasks a node (srun --ntasks-per-node)"
        )


def check_checkpoint(path: str, datamodule: Any, model: Any, trainer: DictConfig | None = None) -> int | None:
    """Refuse, before anything starts, a checkpoint whose weights do not fit ``model`` (another
    width, say), whose data state is of another simulator, parameter space or sampler, or, to
    fit with ``trainer`` (its config), that has trained as long as asked already (one line,
    :class:`ConfigError`). Returns the number of ranks whose online data state it holds, if any
    (see :func:`check_ranks`)."""
    import fsspec
    import torch

    from engage.core.online.datamodule import check_resumable

    try:
        with fsspec.open(path, "rb") as f:
            checkpoint = torch.load(f, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(f"ckpt_path={path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from None
    saved, now = checkpoint.get("state_dict") or {}, model.state_dict()
    # weights both know by name (a strategy may wrap modules, renaming others) must agree in shape
    unlike = [
        f"{name}: saved {tuple(saved[name].shape)}, now {tuple(value.shape)}"
        for name, value in now.items()
        if name in saved and hasattr(saved[name], "shape") and tuple(saved[name].shape) != tuple(value.shape)
    ]
    if unlike:
        raise ConfigError(
            f"ckpt_path={path}: the checkpoint's weights do not fit this model ({'; '.join(unlike[:2])}"
            f"{f'; {len(unlike) - 2} more' if len(unlike) > 2 else ''}); resume with the model settings it was "
            "trained with"
        )
    if trainer is not None:
        _check_training_left(path, checkpoint, trainer)
    state = checkpoint.get(type(datamodule).__qualname__)
    if state is None or not hasattr(datamodule, "sampler"):
        return None
    try:
        settings = getattr(getattr(datamodule, "settings", None), "simulator_spec", None)
        check_resumable(state, datamodule.simulator, datamodule.sampler, settings)
        ranks = [rank for rank in state.get("ranks") or [] if isinstance(rank, dict)]
        buffer = getattr(datamodule, "buffer", None)
        for rank in ranks:
            if buffer is not None and "buffer" in rank:
                buffer.check_loadable(rank["buffer"])
        # a budget below what the checkpoint's run completed can be neither met nor undone
        budget = getattr(getattr(datamodule, "settings", None), "simulations", None)
        done = sum(int((rank.get("scheduler") or {}).get("finished", 0)) for rank in ranks)
        if budget is not None and done > budget:
            raise ValueError(
                f"data.simulations: the checkpoint's run completed {done} simulations already, more than the "
                f"{budget} this run asks; resume with data.simulations={done} or more"
            )
    except ValueError as exc:
        raise ConfigError(f"ckpt_path={path}: {exc}") from None
    ranks = state.get("ranks")
    return len(ranks) if isinstance(ranks, list) else None


def _check_training_left(path: str, checkpoint: dict[str, Any], trainer: DictConfig) -> None:
    """A fit from a checkpoint that reached ``trainer.max_epochs`` or ``trainer.max_steps`` would
    train nothing and end as if it had: refused, saying what to raise."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    # a checkpoint of the last epoch's end counts it processed, not yet completed (as Lightning reads it)
    epochs = max(int(progress.get("processed", 0)), int(progress.get("completed", 0)))
    steps = int(checkpoint.get("global_step", 0))
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps")
    if max_steps is not None and max_steps > 0 and steps >= max_steps:
        reached = f"trainer.max_steps={max_steps} ({steps} steps trained)"
    elif max_epochs is not None and max_epochs >= 0 and epochs >= max_epochs:  # whichever comes first, as Lightning
        reached = f"trainer.max_epochs={max_epochs} ({epochs} epochs trained)"
    else:
        return
    name = reached.split("=", 1)[0]
    raise ConfigError(f"ckpt_path={path}: nothing left to train, the checkpoint reached {reached}; raise {name}")


def leave_distributed(environment: dict[str, str | None]) -> None:
    """End this process's part in a distributed fit: its process group, and the rank variables
    Lightning set for the fit, back to ``environment``. The next job of a sweep in this process
    then starts its own ranks, on a port of its own, instead of joining the last job's group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextlib.contextmanager
def _building(cfg: DictConfig) -> Iterator[None]:
    """While the run's parts are built from ``cfg``, before anything is recorded: a ``_target_``
    that cannot be imported, or a class that refuses its arguments (``TypeError``,
    ``ValueError``), is bad input (:class:`ConfigError`, one line naming it); any other error
    keeps its traceback."""
    try:
        yield
    except InstantiationException as exc:
        if str(exc).startswith("Error locating target") or isinstance(exc.__cause__, (TypeError, ValueError)):
            raise ConfigError(explain(exc, cfg)) from None
        raise


def _job_logs(output_dir: Path) -> list[Path]:
    """Hydra's log files of this run in its folder: its own (``<job name>.log``) and, under
    distributed training, those of the ranks it started (``<job name>_process_N.log`` as Lightning
    names them); none outside a Hydra app."""
    if not HydraConfig.initialized():
        return []
    return sorted(path for path in output_dir.glob("*.log") if path.is_file())


@contextlib.contextmanager
def _ranks_start_as_engage_run() -> Iterator[None]:
    """While it lasts, Lightning starts a DDP fit's other ranks as ``python -m engage.core.cli run``
    with this run's overrides (it builds their command from ``__main__.__spec__`` and
    ``sys.argv``, adding Hydra's run folder): whatever started this process (the ``engage``
    script, ``python -m engage.core.cli``, a sweep launcher's job runner), and, for a job of a
    sweep, that job's overrides rather than the sweep's."""
    import importlib.util

    from hydra.types import RunMode

    import __main__

    args = sys.argv[1:]
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        args = list(HydraConfig.get().overrides.task)
    saved = sys.argv, getattr(__main__, "__spec__", None)
    spec = importlib.util.find_spec("engage.core.cli")
    sys.argv, __main__.__spec__ = [spec.origin or "engage", "run", *args], spec
    try:
        yield
    finally:
        sys.argv, __main__.__spec__ = saved


def train(cfg: DictConfig) -> dict[str, float]:
    """Build everything from ``cfg`` (checked by :func:`~engage.core.config.validate.check_values`),
    fit, and return the final metrics."""
    quiet_lightning()
    quiet_other_ranks(rank_zero_only.rank)  # each line once on the console, from rank 0
    output_dir = _output_dir()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    manager = get_plugin_manager()
    # what is built from the config comes first: a value found wrong here leaves no store behind
    with _building(cfg):
        try:
            simulator = instantiate(cfg.simulator)
        except InstantiationException as exc:
            # a simulator checks its own arguments (a program that is not there): one line, as the rest
            if isinstance(exc.__cause__, ValueError) and str(exc.__cause__).startswith("simulator."):
                raise ConfigError(str(exc.__cause__)) from None
            raise
        sampler = instantiate(cfg.sampler, space=simulator.space)
        try:
            datamodule = instantiate(cfg.data, simulator=simulator, sampler=sampler)
        except InstantiationException as exc:
            # values that only fail together with the simulator (the buffer's memory for its samples)
            # are the DataModule's to check; its message names the field: one line, like the others
            if isinstance(exc.__cause__, ValueError) and str(exc.__cause__).startswith("data."):
                raise ConfigError(str(exc.__cause__)) from None
            raise
        ckpt_path = resolve_ckpt_path(cfg, output_dir)
        model = instantiate(
            cfg.model,
            num_parameters=simulator.space.dim,
            sample_shape=list(simulator.sample_shape),
            value_range=list(simulator.value_range) if simulator.value_range else None,
            samples_per_run=simulator.samples_per_run,
        )
    saved_ranks = None
    if ckpt_path is not None:
        saved_ranks = check_checkpoint(ckpt_path, datamodule, model, cfg.trainer if cfg.task == "fit" else None)
    trainer_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    trainer_kwargs.setdefault("default_root_dir", str(output_dir))
    trainer_kwargs.setdefault("plugins", [AtomicCheckpointIO()])
    with _building(cfg):
        callbacks, strategy = build_callbacks(cfg, output_dir), build_strategy(cfg)
    try:
        # the logger comes once Lightning accepted its own arguments: a refused Trainer records nothing
        trainer = pl.Trainer(**trainer_kwargs, logger=False, callbacks=callbacks, strategy=strategy)
    except (MisconfigurationException, ValueError, TypeError, ImportError) as exc:
        # Lightning's own checks of its arguments (trainer.accelerator=tpu, trainer.devices=0): one
        # line, as the config's own checks
        raise ConfigError(f"trainer: {' '.join(str(exc).split())}") from None
    check_ranks(trainer, datamodule, ckpt_path, saved_ranks)
    start = getattr(trainer.strategy, "_start_method", None)
    if start in ("spawn", "forkserver") and isinstance(datamodule, OnlineDataModule):
        # a spawned rank is handed the DataModule pickled, and the online one holds its streams
        raise ConfigError(
            f"strategy: ranks started by {start} cannot take the online DataModule (it streams from live "
            "simulations); use strategy=ddp, which starts each rank as a program of its own"
        )
    # one MLflow run, on the process of global rank 0 (Lightning or srun starts the others): they
    # record nothing, so they do not ask whether the store answers either
    tracking_uri = choose_tracking_uri(cfg, output_dir) if rank_zero_only.rank == 0 else ""
    bound_http_requests(tracking_uri)
    tracked = None
    if rank_zero_only.rank == 0:
        continued = requeued_run(trainer, output_dir, tracking_uri) if ckpt_path is None else None
        try:
            tracked = MLflowRun.open(cfg, tracking_uri, continued=continued)
        except Exception as exc:  # it answered the check a moment ago
            lost = lost_server(exc, tracking_uri)
            if lost is None:
                raise
            raise TrackingUnavailable(f"{lost}, before the run started; {UNAVAILABLE_FIX}") from None
        # private: the store's address may carry credentials
        write_private(output_dir / RUN_FILE, json.dumps({"run_id": tracked.run_id, "tracking_uri": tracking_uri}))
    trainer.logger = tracked.logger if tracked is not None else None
    # each config value is logged once, under its config path: not again as the model's or the
    # DataModule's hyperparameters
    model._log_hyperparams = False
    datamodule._log_hyperparams = False

    status, error = "FINISHED", None
    hook_failure: PluginHookError | None = None  # an observer of the run's end that raised
    lost: str | None = None  # the tracking server stopped answering: nothing more is sent to it
    started = time.perf_counter()
    timeline = None
    if tracked is not None:
        # the simulations' timeline, heard through the event hooks, goes to this run when it ends
        # rank 0's process hears its own simulations' events: under distributed training, its share
        share = f" (rank 0's, of {trainer.world_size} ranks)" if trainer.world_size > 1 else ""
        timeline = SimulationTimeline(
            tracked.client.log_figure, tracked.run_id, title=f"simulations of {tracked.name}{share}"
        )
        manager.register(timeline, name=f"engage-run-timeline-{tracked.run_id}")
    distributed_env = {name: os.environ.get(name) for name in DISTRIBUTED_ENV}
    if os.environ.get(LOCAL_RANK_ENV, "0") == "0":
        os.environ[RANK_STARTER_ENV] = str(os.getpid())  # what ranks started from here check
    put_back_sigterm = sigterm_raises_terminated()
    try:
        if tracked is not None:
            opened = RunRecord(tracked.run_id, "RUNNING", tracking_uri, str(output_dir))
            call_each(manager, manager.hook.engage_run_started, record=opened)
            if not tracked.continued:
                tracked.record(cfg, output_dir)
                # the space the simulator declares, units included, whatever the config says of it
                space = simulator.space.describe()[:PARAM_MAX_CHARS]
                tracked.client.log_param(tracked.run_id, SIMULATOR_SPACE_PARAM, space)
            if ckpt_path is not None:
                tracked.client.set_tag(tracked.run_id, "engage.resumed_from", ckpt_path)  # the file itself
        if cfg.task == "fit":
            # a checkpoint of a run holds its config (OmegaConf nodes) and data state: it is loaded
            # whole, as the user's own file (weights_only=False), never from an unknown source
            whole = {"weights_only": False} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
            with _ranks_start_as_engage_run():
                trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **whole)
            from engage.core.callbacks import LastValidation

            if cfg.test_after_fit and not LastValidation.of_final_weights(trainer):
                trainer.validate(model, datamodule=datamodule, verbose=False)
            diverged = _not_finite(trainer)
            if diverged:
                # the model it ends with learnt nothing: a sweeper optimising the metric, or a
                # reader of the run, would take it for a result
                raise OnlineRunFailed(
                    f"training diverged: {', '.join(diverged)} not finite at step {trainer.global_step}; lower "
                    "model.lr, or look at the data (values outside the simulator's value_range are warned above)",
                    said_elsewhere=trainer.global_rank != 0,  # every rank sees it; rank 0 says it
                )
        else:
            trainer.validate(model, datamodule=datamodule)
    except KeyboardInterrupt:
        status, error = "KILLED", "interrupted"
        raise
    except Requeued as exc:
        status, error = "SCHEDULED", str(exc)  # the next incarnation takes the run on
        raise
    except Terminated as exc:
        status, error = "KILLED", str(exc)  # outside a fit (which stops at its next step)
        raise
    except BaseException as exc:
        if isinstance(exc, SystemExit) and getattr(trainer, "interrupted", False):
            status = "KILLED"
            if getattr(trainer, "received_sigterm", False):
                # Lightning stops a fit at the step after a SIGTERM with SIGTERMException
                error = "terminated (SIGTERM)"
                raise Terminated(signal.SIGTERM) from None
            # Lightning ends a fit that Ctrl-C interrupted with exit(1), after its own shutdown
            error = "interrupted"
            raise KeyboardInterrupt from None
        # the line engage run prints for a run that fell short, else the exception's type and text
        status, error = "FAILED", str(exc) if isinstance(exc, OnlineRunFailed) else f"{type(exc).__name__}: {exc}"
        lost_peer = isinstance(datamodule, OnlineDataModule) and isinstance(exc, Exception) and peer_lost(exc)
        peer = datamodule.peer_failure(trainer) if lost_peer else None
        if peer is not None:
            # another rank failed (or died): its cause, not the connection this rank lost to it
            error = f"online run failed: {peer}"
            raise OnlineRunFailed(error, said_elsewhere=trainer.global_rank != 0) from None
        if trainer.world_size > 1 and isinstance(exc, BufferClosed):
            # this rank's own simulations failed: its counts ("1 of 4 simulations") are its share
            error = f"online run failed: rank {trainer.global_rank} of {trainer.world_size} failed: {exc}"
            short = OnlineRunFailed(error)
            short.left_to_rank_zero = getattr(exc, "left_to_rank_zero", False)  # type: ignore[attr-defined]
            raise short from None
        lost = lost_server(exc, tracking_uri)
        if lost is not None:
            step = getattr(trainer, "global_step", 0)
            raise TrackingUnavailable(
                f"{lost}: training stopped at step {step}, and its MLflow run {tracked.run_id if tracked else ''} "
                f"stays RUNNING there; once it answers, resume with hydra.run.dir={output_dir} ckpt_path=last"
            ) from None
        raise
    finally:
        # the run's record is completed and closed whole: a signal meanwhile is raised after it
        with ctrl_c_deferred():
            try:
                metrics = {
                    k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1
                }
                if tracked is not None and lost is not None:
                    manager.unregister(timeline)
                    tracked.close(status, reachable=False)
                elif tracked is not None:
                    try:
                        # the id naming the online run's own journal, caches and folder, failed runs' too
                        online_run = getattr(datamodule, "run_id", None)
                        if online_run:
                            tracked.client.set_tag(tracked.run_id, "engage.online_run_id", online_run)
                        tracked.client.log_metric(tracked.run_id, "run/wall_time_s", time.perf_counter() - started)
                        if error is not None:  # why it did not finish, on the run itself
                            tracked.client.set_tag(tracked.run_id, ERROR_TAG, " ".join(error.split())[:5000])
                        for log_file in _job_logs(output_dir):  # the run's consoles, as its folder keeps them
                            tracked.client.log_artifact(tracked.run_id, str(log_file), "run")
                        if status not in ("KILLED", "SCHEDULED"):  # Ctrl-C does not wait for uploads, nor a requeue
                            for line in tracked.log_checkpoints(trainer, float(cfg.logger.checkpoint_max_mb)):
                                console.print(f"engage run: {line}", highlight=False, markup=False)
                        # observers add their records while the run is still open
                        record = RunRecord(tracked.run_id, status, tracking_uri, str(output_dir), metrics, error)
                        try:
                            call_each(manager, manager.hook.engage_run_finished, record=record)
                        except PluginHookError as exc:  # the run did not end as it should: never FINISHED
                            hook_failure = exc
                            if status == "FINISHED":
                                status = "FAILED"
                                tracked.client.set_tag(tracked.run_id, ERROR_TAG, " ".join(str(exc).split())[:5000])
                    except Exception as exc:  # the server stopped answering as the run ended
                        lost = lost_server(exc, tracking_uri)
                        if lost is None:
                            raise
                    finally:
                        manager.unregister(timeline)
                        tracked.close(status, reachable=lost is None)
            finally:
                leave_distributed(distributed_env)
                put_back_sigterm()
    if hook_failure is not None:
        raise hook_failure
    if lost is not None and tracked is not None:
        raise TrackingUnavailable(
            f"{lost}, as it ended: training ended at step {trainer.global_step}, but MLflow run {tracked.run_id} "
            f"lacks its last records and stays RUNNING there; its checkpoints are in {output_dir / 'checkpoints'}"
        )
    if tracked is not None:
        where = tracking_uri.removeprefix("sqlite:///")
        # the counts MLflow holds: recorded when training ended (simulations without a budget go on
        # finishing until the DataModule's teardown)
        checks = [c for c in trainer.callbacks if isinstance(c, OnlineRunCheck) and c.recorded is not None]
        recorded = checks[0].recorded if checks else datamodule.outcome() if hasattr(datamodule, "outcome") else None
        outcome = recorded.line() + "\n" if recorded is not None else ""
        console.print(
            f"[green]run {tracked.name} ({tracked.run_id}) finished[/green]: "
            + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k.startswith("val"))
            + f"\n{outcome}MLflow: mlflow ui --backend-store-uri {tracking_uri}  (store: {where})",
            highlight=False,
        )
    return metrics


def _not_finite(trainer: pl.Trainer) -> list[str]:
    """The run's ``train/`` and ``val/`` metrics that are NaN or infinite as it ends."""
    values = {k: v for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    return sorted(k for k, v in values.items() if k.startswith(("train/", "val/")) and not math.isfinite(float(v)))
