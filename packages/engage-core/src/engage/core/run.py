"""``engage run``: compose a Lightning Trainer, model, DataModule, callbacks and strategy from the
config and the installed plugins, train, and record everything in MLflow."""

from __future__ import annotations

import inspect
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from engage.core.checkpoint_io import AtomicCheckpointIO
from engage.core.config.validate import EXIT_CONFIG_ERROR, ConfigError, check_values
from engage.core.events import RunRecord
from engage.core.online.buffer import BufferClosed
from engage.core.online.outcome import EXIT_RUN_FAILED, OnlineRunFailed
from engage.core.plugins import flatten, get_plugin_manager
from engage.core.tracking.environment import environment_record, git_state, pip_freeze
from engage.core.tracking.store import (
    UNAVAILABLE_FIX,
    TrackingUnavailable,
    check_reachable,
    default_tracking_uri,
    parent_run_id,
    resolve_tracking_uri,
)

EXIT_TRACKING_UNAVAILABLE = 3
console = Console(stderr=True, soft_wrap=True)


def _output_dir() -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(tempfile.mkdtemp(prefix="engage-run-"))


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


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


def build_logger(cfg: DictConfig, tracking_uri: str) -> MLFlowLogger:
    tags = {str(k): str(v) for k, v in (cfg.logger.tags or {}).items()}
    parent = parent_run_id()
    if parent:
        tags["mlflow.parentRunId"] = parent
    git = git_state()
    if git.get("commit"):
        tags["mlflow.source.git.commit"] = git["commit"]
    return MLFlowLogger(
        experiment_name=cfg.logger.experiment,
        run_name=cfg.logger.run_name,
        tracking_uri=tracking_uri,
        tags=tags,
        log_model=cfg.logger.log_model,
    )


def build_strategy(cfg: DictConfig) -> Any:
    from_plugin = get_plugin_manager().hook.engage_strategy(cfg=cfg)
    if from_plugin is not None:
        return from_plugin
    node = cfg.strategy
    if isinstance(node, DictConfig) and "_target_" in node:
        return instantiate(node)
    if isinstance(node, DictConfig):
        return node.name
    return str(node)


def build_callbacks(cfg: DictConfig, output_dir: Path) -> list[pl.Callback]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = [instantiate(node) for node in (cfg.callbacks or {}).values() if node and "_target_" in node]
    callbacks += flatten(get_plugin_manager().hook.engage_callbacks(cfg=cfg))
    if cfg.trainer.enable_checkpointing and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
        # one folder per run, with a last.ckpt that `ckpt_path=last` finds
        every = cfg.checkpoint_every_n_steps or None
        callbacks.append(
            ModelCheckpoint(dirpath=str(output_dir / "checkpoints"), save_last=True, every_n_train_steps=every)
        )
    return callbacks


def resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """``cfg.ckpt_path`` as a file: ``last`` is this run folder's newest ``last.ckpt`` (else its
    newest checkpoint). A path that names no checkpoint is a :class:`ConfigError`."""
    value = cfg.ckpt_path
    if value in (None, ""):
        return None
    if str(value) == "last":
        found = sorted(output_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime) or sorted(
            output_dir.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime
        )
        if not found:
            raise ConfigError(
                f"ckpt_path=last: no checkpoint in the run folder {output_dir}; pass hydra.run.dir of the run to "
                "resume, or ckpt_path=PATH"
            )
        return str(found[-1])
    if "://" not in str(value) and not Path(value).is_file():
        raise ConfigError(f"ckpt_path={value}: no such checkpoint file; pass an existing .ckpt or ckpt_path=last")
    return str(value)


def check_checkpoint(path: str, datamodule: Any) -> None:
    """Refuse, before anything starts, a checkpoint whose data state is of another simulator,
    parameter space or sampler (one line, :class:`ConfigError`)."""
    import fsspec
    import torch

    from engage.core.online.datamodule import check_resumable

    try:
        with fsspec.open(path, "rb") as f:
            checkpoint = torch.load(f, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ConfigError(f"ckpt_path={path}: cannot be read as a checkpoint ({type(exc).__name__}: {exc})") from None
    state = checkpoint.get(type(datamodule).__qualname__)
    if state is None or not hasattr(datamodule, "sampler"):
        return
    try:
        check_resumable(state, datamodule.simulator, datamodule.sampler)
    except ValueError as exc:
        raise ConfigError(f"ckpt_path={path}: {exc}") from None


def record_run(logger: MLFlowLogger, cfg: DictConfig, output_dir: Path) -> None:
    """Resolved config, overrides, seed, versions, git state and pip freeze, as params/artifacts."""
    client, run_id = logger.experiment, logger.run_id
    overrides = _overrides()
    env = environment_record()
    git = git_state()
    files = {
        "config.yaml": OmegaConf.to_yaml(cfg, resolve=True),
        "overrides.json": json.dumps(overrides, indent=1),
        "environment.json": json.dumps(env, indent=1, default=str),
        "requirements.txt": pip_freeze(),
    }
    if git.get("diff"):
        files["git.diff"] = git["diff"]
    folder = output_dir / "engage-record"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
        client.log_artifact(run_id, str(folder / name), artifact_path="run")
    client.log_param(run_id, "overrides", " ".join(overrides)[:6000] or "(none)")
    client.log_param(run_id, "seed", cfg.seed)
    for name, value in env["packages"].items():  # type: ignore[union-attr]
        client.set_tag(run_id, f"version.{name}", value)
    client.set_tag(run_id, "engage.output_dir", str(output_dir))
    if git.get("commit"):
        client.set_tag(run_id, "engage.git_dirty", str(bool(git.get("diff"))))


def flat_params(cfg: DictConfig) -> dict[str, Any]:
    container = OmegaConf.to_container(cfg, resolve=True)
    params: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            params[prefix] = node

    walk("", {k: v for k, v in container.items() if k != "hydra"})  # type: ignore[union-attr]
    return params


def train(cfg: DictConfig) -> dict[str, float]:
    """Build everything from ``cfg``, fit, and return the final metrics."""
    check_values(cfg)
    output_dir = _output_dir()
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    manager = get_plugin_manager()
    # what is built from the config comes first: a value found wrong here leaves no store behind
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
    if ckpt_path is not None:
        check_checkpoint(ckpt_path, datamodule)
    model = instantiate(
        cfg.model,
        num_parameters=simulator.space.dim,
        sample_shape=list(simulator.sample_shape),
        value_range=list(simulator.value_range) if simulator.value_range else None,
        samples_per_run=simulator.samples_per_run,
    )
    trainer_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if v is not None}
    trainer_kwargs.setdefault("default_root_dir", str(output_dir))
    trainer_kwargs.setdefault("plugins", [AtomicCheckpointIO()])
    callbacks, strategy = build_callbacks(cfg, output_dir), build_strategy(cfg)
    try:
        # the logger comes once Lightning accepted its own arguments: a refused Trainer records nothing
        trainer = pl.Trainer(**trainer_kwargs, logger=False, callbacks=callbacks, strategy=strategy)
    except (MisconfigurationException, ValueError, TypeError, ImportError) as exc:
        # Lightning's own checks of its arguments (trainer.accelerator=tpu, trainer.devices=0): one
        # line, as the config's own checks
        raise ConfigError(f"trainer: {' '.join(str(exc).split())}") from None
    tracking_uri = choose_tracking_uri(cfg, output_dir)
    logger = build_logger(cfg, tracking_uri)
    trainer.logger = logger
    logger.log_hyperparams(flat_params(cfg))
    record_run(logger, cfg, output_dir)
    if ckpt_path is not None:
        logger.experiment.set_tag(logger.run_id, "engage.resumed_from", ckpt_path)

    status, error = "FINISHED", None
    started = time.perf_counter()
    try:
        if cfg.task == "fit":
            # a checkpoint of a run holds its config (OmegaConf nodes) and data state: it is loaded
            # whole, as the user's own file (weights_only=False), never from an unknown source
            whole = {"weights_only": False} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **whole)
            online_run = getattr(datamodule, "run_id", None)
            if online_run and trainer.is_global_zero:
                logger.experiment.set_tag(logger.run_id, "engage.online_run_id", online_run)
            if cfg.test_after_fit:
                trainer.validate(model, datamodule=datamodule, verbose=False)
        else:
            trainer.validate(model, datamodule=datamodule)
    except KeyboardInterrupt:
        status, error = "KILLED", "interrupted"
        raise
    except BaseException as exc:
        status, error = "FAILED", f"{type(exc).__name__}: {exc}"
        raise
    finally:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        if trainer.is_global_zero:
            logger.experiment.log_metric(logger.run_id, "run/wall_time_s", time.perf_counter() - started)
            logger.finalize("success" if status == "FINISHED" else "failed" if status == "FAILED" else "killed")
            if status != "FINISHED":
                logger.experiment.set_terminated(logger.run_id, status=status)
            record = RunRecord(logger.run_id, status, tracking_uri, str(output_dir), metrics, error)
            manager.hook.engage_run_finished(record=record)
    if trainer.is_global_zero:
        where = tracking_uri.removeprefix("sqlite:///")
        outcome = datamodule.outcome().line() + "\n" if hasattr(datamodule, "outcome") else ""
        console.print(
            f"[green]run {logger.run_id} finished[/green]: "
            + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if k.startswith("val"))
            + f"\n{outcome}MLflow: mlflow ui --backend-store-uri {tracking_uri}  (store: {where})",
            highlight=False,
        )
    return metrics


def task(cfg: DictConfig) -> float | None:
    """The Hydra task function; returns ``val/rel_l2`` (or ``val/loss``) for sweepers."""
    try:
        metrics = train(cfg)
    except ConfigError as exc:
        console.print(f"engage run: {exc}", highlight=False)
        sys.exit(EXIT_CONFIG_ERROR)
    except TrackingUnavailable as exc:
        console.print(f"engage run: {exc}", highlight=False)
        sys.exit(EXIT_TRACKING_UNAVAILABLE)
    except (OnlineRunFailed, BufferClosed) as exc:
        # the MLflow run is FAILED already; one line names the cause
        console.print(f"engage run: {' '.join(str(exc).split())}", highlight=False, markup=False)
        sys.exit(EXIT_RUN_FAILED)
    return metrics.get("val/rel_l2", metrics.get("val/loss"))
