"""A Hydra callback that checks every value of a sweep before its first job starts, and a single
run's values and checkpoint before Hydra makes its output folder."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class SweepValuesCheck(Callback):
    """Before a multirun launches anything, compose the config of every sweep value (with
    Hydra's own loader, so ``-cd``, ``-cp`` and ``-cn`` count) and run its checks: a bad value in
    the last job stops the sweep, in one line with exit code 2, before the first one runs.

    Enabled by default in ``engage run``'s config (before the MLflow sweep callback, so that a
    refused sweep leaves no parent run)::

        hydra:
          callbacks:
            sweep_values:
              _target_: engage.core.config.sweep_check.SweepValuesCheck
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A single run: its values, and the checkpoint it resumes from, checked before Hydra
        makes the run's output folder (the task checks them again, for apps without this
        callback)."""
        from engage.core.config.validate import (
            EXIT_CONFIG_ERROR,
            ConfigError,
            check_accelerator,
            check_store,
            check_values,
        )

        try:
            check_values(config)
            check_accelerator(config)
            check_writable(Path(config.hydra.run.dir), "hydra.run.dir")
            check_store(config)
            if OmegaConf.select(config, "ckpt_path", default=None) not in (None, ""):
                from engage.core.training import resolve_ckpt_path

                resolve_ckpt_path(config, Path(config.hydra.run.dir))
        except ConfigError as exc:
            print(f"engage run: {' '.join(str(exc).split())}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG_ERROR) from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.global_hydra import GlobalHydra
        from hydra.errors import HydraException
        from hydra.types import RunMode
        from omegaconf.errors import OmegaConfBaseException

        from engage.core.config.validate import (
            EXIT_CONFIG_ERROR,
            ConfigError,
            check_store,
            check_values,
            explain,
            last_per_key,
            single_run_overrides,
            sweeper_params,
        )

        hydra = GlobalHydra.instance().hydra
        if hydra is None:
            return
        overrides = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
        # the sweep's own Hydra overrides (its launcher and that launcher's options) go with each
        own = list(OmegaConf.select(config, "hydra.overrides.hydra", default=[]) or [])
        name = OmegaConf.select(config, "hydra.job.config_name")
        try:
            resumes = False
            # the engage launcher gives its jobs its own store, which it checks itself
            own_store = str(OmegaConf.select(config, "hydra.launcher._target_", default="")).endswith("EngageLauncher")
            swept = last_per_key(sweeper_params(config, hydra.config_loader) + overrides)
            for variant in single_run_overrides(swept, hydra.config_loader):
                cfg = hydra.compose_config(name, own + variant, run_mode=RunMode.RUN)
                check_values(cfg)
                if not own_store:
                    check_store(cfg)
                resumes = resumes or OmegaConf.select(cfg, "ckpt_path", default=None) not in (None, "")
            if resumes and _jobs_run_here(config):
                _check_checkpoints(hydra, name, own, overrides, config)
            check_writable(Path(str(OmegaConf.select(config, "hydra.sweep.dir", default="."))), "hydra.sweep.dir")
        except ConfigError as exc:
            line = str(exc)
        except (HydraException, OmegaConfBaseException) as exc:
            line = explain(exc, hydra.compose_config(name, own, run_mode=RunMode.RUN))
        else:
            return
        # Hydra turns a callback's exceptions into warnings and goes on: leave before any job
        print(f"engage run: {' '.join(line.split())}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR)


#: the engage launcher's providers whose hosts share this machine's file system, where a job's
#: folder and checkpoint can be looked at before it starts
_LOCAL_PROVIDERS = ("local", "netns")


def _jobs_run_here(config: DictConfig) -> bool:
    """Whether Hydra's basic sweeper makes the sweep's jobs and they run on this file system."""
    sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
    if not sweeper.endswith("BasicSweeper"):
        return False
    if launcher.endswith("EngageLauncher"):
        provider = OmegaConf.select(config, "hydra.launcher.infrastructure.provider", default="local")
        return provider in _LOCAL_PROVIDERS
    from engage.core.tracking.sweep import LOCAL_PROCESS_LAUNCHERS

    return launcher.endswith(LOCAL_PROCESS_LAUNCHERS)


def _check_checkpoints(hydra: Any, name: str | None, own: list[str], overrides: list[str], config: DictConfig) -> None:
    """The checkpoint each job of the sweep resumes from exists: ``ckpt_path=PATH`` a file,
    ``ckpt_path=last`` one in that job's own folder (``hydra.sweep.dir``/``subdir``, as Hydra's
    launchers name it), so that no job fails for want of it after others have started. The jobs
    are those Hydra's basic sweeper makes: its ``params`` first, then the command line's.

    With ``ckpt_path=last``, the jobs that left no checkpoint (those the interrupted sweep never
    started, or stopped before their first checkpoint) start from the beginning, said in one line,
    as long as some job of the sweep has one; none having one is a sweep directory of another
    sweep, or none: refused."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import open_dict

    from engage.core.config.validate import ConfigError, sweeper_params
    from engage.core.training import last_checkpoint, resolve_ckpt_path

    swept = sweeper_params(config, hydra.config_loader) + list(overrides)
    parsed = OverridesParser.create(config_loader=hydra.config_loader).parse_overrides(swept)
    (jobs,) = BasicSweeper.split_arguments(parsed, None)
    found, fresh = 0, []
    for num, job in enumerate(jobs):
        cfg = hydra.compose_config(name, own + job, run_mode=RunMode.MULTIRUN)
        if OmegaConf.select(cfg, "ckpt_path", default=None) in (None, ""):
            continue
        with open_dict(cfg):
            cfg.hydra.job.num = cfg.hydra.job.id = num
        folder = Path(cfg.hydra.sweep.dir) / str(cfg.hydra.sweep.subdir)
        if str(cfg.ckpt_path) != "last":
            resolve_ckpt_path(cfg, folder)
        elif last_checkpoint(folder) is None:
            fresh.append(num)
        else:
            found += 1
    if fresh and not found:
        # said of the sweep, where the run's line speaks of hydra.run.dir
        sweep_dir = OmegaConf.select(config, "hydra.sweep.dir", default=".")
        raise ConfigError(
            f"ckpt_path=last: no job of the sweep has a checkpoint in its folder under {sweep_dir}; pass "
            "hydra.sweep.dir of the sweep to resume, or ckpt_path=PATH"
        )
    if fresh:
        said = (
            f"job {fresh[0]} has no checkpoint in its folder; it starts"
            if len(fresh) == 1
            else f"jobs {', '.join(map(str, fresh))} have no checkpoint in their folders; they start"
        )
        print(f"engage run: ckpt_path=last: {said} from the beginning")


def check_writable(folder: Path, key: str) -> None:
    """``folder`` can be made or written to (Hydra makes it, then writes its log there): the
    nearest folder of it that exists takes new entries. :class:`ConfigError` naming ``key``."""
    import os

    from engage.core.config.validate import ConfigError

    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}: {existing} is a file, not a folder; choose another {key}")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        why = "a read-only file system" if read_only else "no permission to write"
        raise ConfigError(f"{key}: cannot write under {existing} ({why}); choose another {key}")
