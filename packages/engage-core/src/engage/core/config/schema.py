"""Structured configs (dataclasses) of ``engage run``, registered in Hydra's ConfigStore.

Every field is type-checked when the config is composed; ranges are checked in
``__post_init__`` when the config is turned into objects (:func:`engage.core.config.validate`).
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


class ConfigValueError(ValueError):
    """A config value is out of range; ``key`` is its dotted path inside its group."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


_KINDS: dict[str, tuple[type, ...]] = {
    "int": (numbers.Integral,),  # numpy's integers too
    "float": (numbers.Real,),
    "bool": (bool,),
    "str": (str, os.PathLike),
}
_KIND_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}


def check_types(owner: object) -> None:
    """Each field of the dataclass instance ``owner`` declared ``int``, ``float``, ``bool`` or
    ``str`` (``| None`` where null is allowed) holds a value of that kind, or
    :class:`ConfigValueError` naming it: Python callers pass what they like, and ``2.5``
    simulations, ``"no"`` for a flag (which is true) or ``True`` retries must not go further.
    An interpolation not yet resolved (``${seed}``) is left to the config."""
    from dataclasses import fields

    for f in fields(owner):  # type: ignore[arg-type]
        kinds = [k.strip() for k in str(f.type).split("|")]
        known = [k for k in kinds if k in _KINDS]
        if not known or len(known) + ("None" in kinds) != len(kinds):
            continue  # Any, mappings, lists: the fields' own checks
        value = getattr(owner, f.name)
        if (value is None and "None" in kinds) or (isinstance(value, str) and value.startswith("${")):
            continue
        allowed = tuple(kind for k in known for kind in _KINDS[k])
        if (isinstance(value, bool) and "bool" not in known) or not isinstance(value, allowed):
            wanted = " or ".join(_KIND_WORDS[k] for k in known) + (" or null" if "None" in kinds else "")
            raise ConfigValueError(f.name, f"must be {wanted}, got {value!r}")


def _at_least(owner: object, name: str, minimum: float, *, allow_none: bool = False) -> None:
    value = getattr(owner, name)
    if value is None and allow_none:
        return
    if value < minimum:
        raise ConfigValueError(name, f"must be >= {minimum}, got {value}")


#: ``lightning.Trainer`` arguments ENGAGE builds from its own config groups, and where to set them
TRAINER_ARGUMENTS_OWNED = {
    "logger": "the logger group (logger.uri, logger.experiment, ...)",
    "callbacks": "+callbacks.<name>={_target_: ...} or a plugin's engage_callbacks hook",
    "strategy": "strategy=<option> (engage run --info for the installed ones)",
    "plugins": "checkpoint IO is ENGAGE's atomic writer; precision goes in trainer.precision",
}


@dataclass
class TrainerConfig:
    """Every argument of ``lightning.Trainer`` but those ENGAGE builds itself
    (:data:`TRAINER_ARGUMENTS_OWNED`). The first block holds ENGAGE's defaults; in the second,
    ``None`` leaves Lightning's own default (such values are not passed)."""

    max_epochs: int = 5
    max_steps: int = -1
    max_time: str | None = None
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1
    precision: str = "32-true"
    log_every_n_steps: int = 10
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = 1
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    deterministic: Any = False
    enable_progress_bar: bool = True
    enable_checkpointing: bool = True
    default_root_dir: str | None = None
    # Lightning's defaults
    fast_dev_run: Any = None
    min_epochs: int | None = None
    min_steps: int | None = None
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    overfit_batches: Any = None
    num_sanity_val_steps: int | None = None
    enable_model_summary: bool | None = None
    gradient_clip_algorithm: str | None = None
    benchmark: bool | None = None
    inference_mode: bool | None = None
    use_distributed_sampler: bool | None = None
    #: a profiler by name: simple, advanced, pytorch, xla
    profiler: str | None = None
    detect_anomaly: bool | None = None
    barebones: bool | None = None
    sync_batchnorm: bool | None = None
    reload_dataloaders_every_n_epochs: int | None = None
    enable_autolog_hparams: bool | None = None
    model_registry: str | None = None

    def __post_init__(self) -> None:
        _at_least(self, "max_epochs", -1)
        _at_least(self, "num_nodes", 1)
        _at_least(self, "min_epochs", 0, allow_none=True)
        _at_least(self, "min_steps", 0, allow_none=True)
        _at_least(self, "num_sanity_val_steps", -1, allow_none=True)
        _at_least(self, "reload_dataloaders_every_n_epochs", 0, allow_none=True)
        _at_least(self, "log_every_n_steps", 1)
        _at_least(self, "accumulate_grad_batches", 1)
        _at_least(self, "gradient_clip_val", 0, allow_none=True)
        _at_least(self, "check_val_every_n_epoch", 1, allow_none=True)
        interval = self.val_check_interval
        # numbers must be positive; a duration ("DD:HH:MM:SS", a mapping) is Lightning's to read
        if isinstance(interval, bool) or (isinstance(interval, (int, float)) and interval <= 0):
            raise ConfigValueError(
                "val_check_interval",
                f"must be a number of batches (an integer >= 1), a fraction of an epoch (> 0) or a duration "
                f"DD:HH:MM:SS, got {interval!r}",
            )
        allowed = (
            "32-true",
            "32",
            "16-mixed",
            "bf16-mixed",
            "bf16-true",
            "16-true",
            "64-true",
            "64",
            "transformer-engine",
        )
        if str(self.precision) not in allowed:
            raise ConfigValueError("precision", f"must be one of {', '.join(allowed)}, got {self.precision!r}")


@dataclass
class HeatSimulatorConfig:
    """The 2D heat equation (:class:`engage.core.simulators.HeatEquation`)."""

    _target_: str = "engage.core.simulators.heat.HeatEquation"
    grid: int = 64
    steps: int = 100
    dt: float = 0.002
    alpha: float = 1.0
    low: float = 100.0
    high: float = 500.0

    def __post_init__(self) -> None:
        _at_least(self, "grid", 3)
        _at_least(self, "steps", 1)
        if not self.dt > 0:
            raise ConfigValueError("dt", f"must be > 0, got {self.dt}")
        if not self.alpha > 0:
            raise ConfigValueError("alpha", f"must be > 0, got {self.alpha}")
        if not self.low < self.high:
            raise ConfigValueError("low", f"must be < high ({self.high}), got {self.low}")


@dataclass
class RenderSimulatorConfig:
    """A ray-marched shaded shape (:class:`engage.core.simulators.render.ImageRenderer`), one image per run."""

    _target_: str = "engage.core.simulators.render.ImageRenderer"
    size: int = 32
    max_steps: int = 48

    def __post_init__(self) -> None:
        _at_least(self, "size", 4)
        _at_least(self, "max_steps", 1)


def _travelling_wave(key: str) -> Any:
    from engage.core.simulators.executable import travelling_wave_arguments

    return travelling_wave_arguments()[key]


@dataclass
class CommandSimulatorConfig:
    """A program in any language that speaks the wire protocol
    (:class:`engage.core.simulators.ExecutableSimulator`); by default the example damped wave that
    ships with ENGAGE. ``argv`` is its command line, in which ``{address}``, ``{simulation_id}``
    and ``{attempt}`` are filled in for each simulation; ``parameters`` its parameter space
    (``{name: {low: ..., high: ...}}``); every run sends ``samples_per_run`` samples of
    ``sample_shape`` and ``dtype``. The program is looked up and every field checked when the
    config is composed, before anything starts."""

    _target_: str = "engage.core.simulators.executable.ExecutableSimulator"
    #: the wave's last word, its number of steps, follows ``samples_per_run``
    argv: list[str] = field(default_factory=lambda: [*_travelling_wave("argv")[:-1], "${..samples_per_run}"])
    #: empty: the example wave's (frequency, damping), for the example wave only; your program
    #: declares its own, whole (what is given here is never merged with the wave's)
    parameters: dict[str, Any] = field(default_factory=dict)
    sample_shape: list[int] = field(default_factory=lambda: _travelling_wave("sample_shape"))
    samples_per_run: int | None = field(default_factory=lambda: _travelling_wave("samples_per_run"))
    dtype: str = field(default_factory=lambda: _travelling_wave("dtype"))
    value_range: list[float] | None = field(default_factory=lambda: _travelling_wave("value_range"))
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None

    def __post_init__(self) -> None:
        from engage.core.simulators.executable import ExecutableSimulatorError, check_arguments

        try:
            check_arguments(
                self.argv, self.parameters, self.sample_shape, self.samples_per_run, self.dtype, self.value_range,
                self.env, self.cwd,
            )  # fmt: skip
        except ExecutableSimulatorError as exc:
            raise ConfigValueError(exc.field, exc.reason) from None


@dataclass
class UniformSamplerConfig:
    """Independent random draws (:class:`engage.core.samplers.UniformSampler`)."""

    _target_: str = "engage.core.samplers.uniform.UniformSampler"
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class HeatSurrogateConfig:
    """An MLP from (parameters, time) to coefficients of a learned basis of the temperature field."""

    _target_: str = "engage.core.models.heat_surrogate.HeatSurrogate"
    width: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    #: basis size (None: 4 * width)
    rank: int | None = None
    #: channels of an optional 3x3 convolutional refinement of the field (0: none)
    refine: int = 0

    def __post_init__(self) -> None:
        _at_least(self, "width", 4)
        _at_least(self, "rank", 1, allow_none=True)
        _at_least(self, "refine", 0)
        if not self.lr > 0:
            raise ConfigValueError("lr", f"must be > 0, got {self.lr}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ConfigValueError("lr_schedule", f"must be cosine or constant, got {self.lr_schedule!r}")


@dataclass
class SimulatedDatasetConfig:
    """Run a fixed number of simulations first, then train on them in epochs (offline)."""

    _target_: str = "engage.core.data.simulated.SimulatedDataModule"
    train_simulations: int = 24
    val_simulations: int = 4
    batch_size: int = 32
    num_workers: int = 0
    cache_dir: str | None = None
    seed: int = "${seed}"  # type: ignore[assignment]

    def __post_init__(self) -> None:
        _at_least(self, "train_simulations", 1)
        _at_least(self, "val_simulations", 1)
        _at_least(self, "batch_size", 1)
        _at_least(self, "num_workers", 0)


@dataclass
class LightningStrategyConfig:
    """One of Lightning's own strategies by name (``auto``, ``ddp``, ``ddp_spawn``, ``fsdp``...)."""

    name: str = "auto"


@dataclass
class MLflowLoggerConfig:
    """Where and how results are recorded in MLflow (Lightning's ``MLFlowLogger``).

    ``uri`` empty means ``MLFLOW_TRACKING_URI``, else a SQLite database ``mlflow.db`` in the
    directory ``engage run`` was started from; ``experiment`` empty means
    ``MLFLOW_EXPERIMENT_NAME``, else ``engage``. When the server cannot be reached, the run stops
    before training unless ``fallback_local`` is true: then it logs to a SQLite file in the run's
    output directory and says so. Runs are named by what they are (``heat_quick-3fa2c1``; a
    sweep's job ``sweep-1203-1005-a3f1#1 model.lr=0.003``) unless ``run_name`` is set.
    """

    uri: str = ""
    experiment: str = ""
    run_name: str | None = None
    fallback_local: bool = False
    timeout_s: float = 10.0
    #: MLflow's system metrics (CPU, memory, disk, network; GPU with the nvidia-ml-py extra)
    system_metrics: bool = True
    system_metrics_interval_s: float = 10.0
    #: the last and best checkpoints are logged as artifacts up to this size each; 0: none
    checkpoint_max_mb: float = 1024.0
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.system_metrics_interval_s > 0:
            raise ConfigValueError(
                "system_metrics_interval_s", f"must be > 0 seconds, got {self.system_metrics_interval_s}"
            )
        _at_least(self, "checkpoint_max_mb", 0)
        _at_least(self, "timeout_s", 0)


@dataclass
class EngageConfig:
    """The top-level config of ``engage run``; group options fill ``data`` ... ``strategy``."""

    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    simulator: Any = MISSING
    sampler: Any = MISSING
    data: Any = MISSING
    model: Any = MISSING
    strategy: Any = MISSING
    callbacks: dict[str, Any] = field(default_factory=dict)
    logger: MLflowLoggerConfig = field(default_factory=MLflowLoggerConfig)
    seed: int = 0
    task: str = "fit"
    test_after_fit: bool = True
    #: resume: a checkpoint's path, or ``last`` (the newest checkpoint of this run folder)
    ckpt_path: str | None = None
    #: also write ``checkpoints/steps-*.ckpt`` every this many training steps, beside ``last.ckpt``
    #: at epoch ends (0: at epoch ends only); ``ckpt_path=last`` resumes from the newest
    checkpoint_every_n_steps: int = 0

    def __post_init__(self) -> None:
        if self.task not in ("fit", "validate"):
            raise ConfigValueError("task", f"must be fit or validate, got {self.task!r}")
        _at_least(self, "checkpoint_every_n_steps", 0)
