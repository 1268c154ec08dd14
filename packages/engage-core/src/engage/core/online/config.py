"""Structured config of ``data: online`` (:class:`~engage.core.online.datamodule.OnlineDataModule`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from engage.core.config.schema import ConfigValueError, _at_least, check_types
from engage.core.online.policies import POLICIES
from engage.core.online.protocol import COALESCE_BYTES
from engage.core.online.security import TRANSPORT_SECURITY


@dataclass
class OnlineDataConfig:
    """Train on samples streamed from simulations running alongside training.

    The defaults and ranges of :class:`~engage.core.online.datamodule.OnlineDataModule` too: they
    are declared here once. ``simulator_spec`` defaults to the ``simulator`` group, so simulation
    processes build the same simulator as the trainer.
    """

    _target_: str = "engage.core.online.datamodule.OnlineDataModule"
    _recursive_: bool = False
    simulations: int | None = 96
    #: the offline DataModule's name for ``simulations``; set, it wins (overrides work with both)
    train_simulations: int | None = None
    max_samples: int | None = None
    concurrency: int = 2
    batch_size: int = 64
    batches_per_epoch: int = 100
    capacity: int = 8192
    policy: str = "reservoir"
    watermark: int | None = None
    max_reads: int | None = None
    #: a sample is read on average at most this many times (training waits for new samples
    #: beyond it); None: paced to the simulations (the trainer's planned batches spread over the
    #: samples they will send, at least 1 read each); inf (.inf in YAML): no limit
    rate_limit: float | None = None
    retries: int = 2
    on_failure: str = "fail"
    #: the share of ``simulations`` that must complete (every sample received) for the run to
    #: succeed; failed ones count against it unless ``on_failure: redraw`` replaces them
    min_completed: float = 1.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 30.0
    startup_timeout: float = 120.0
    #: samples a simulation may send ahead of the buffer; None: about 16 MiB worth (8 to 1024)
    credit_window: int | None = None
    #: Python simulations send samples that come < 1 ms apart up to this many bytes to a message; 0: one each
    coalesce_bytes: int = COALESCE_BYTES
    #: simulations on the trainer's host write samples into the buffer's shared memory (Linux /dev/shm)
    shared_memory: bool = True
    #: who may connect: curve (keys the trainer issues to each simulation attempt) or ipc (a socket
    #: file only this OS user can open; local executors only, no encryption cost)
    transport_security: str = "curve"
    executor: str = "local"
    #: keyword arguments of the executor, e.g. ``{layer: edge}`` for ``executor: deploy``
    executor_options: dict[str, Any] = field(default_factory=dict)
    journal: str | None = None
    val_simulations: int = 4
    cache_dir: str | None = None
    workdir: str | None = None
    simulator_spec: Any = "${simulator}"
    seed: int = "${seed}"  # type: ignore[assignment]
    #: torch threads of the training process; None: the cores local simulations leave free (>= 1)
    train_threads: int | None = None

    def __post_init__(self) -> None:
        check_types(self)
        spec = self.simulator_spec
        if spec is not None and not isinstance(spec, str) and not hasattr(spec, "keys") and not is_dataclass(spec):
            raise ConfigValueError(
                "simulator_spec", f"must be a simulator's config (a mapping with _target_) or null, got {spec!r}"
            )
        _at_least(self, "simulations", 1, allow_none=True)
        _at_least(self, "max_samples", 1, allow_none=True)
        for name in ("concurrency", "batch_size", "batches_per_epoch", "capacity"):
            _at_least(self, name, 1)
        _at_least(self, "credit_window", 1, allow_none=True)
        _at_least(self, "coalesce_bytes", 0)
        _at_least(self, "retries", 0)
        _at_least(self, "train_threads", 1, allow_none=True)
        _at_least(self, "val_simulations", 0)
        _at_least(self, "max_reads", 1, allow_none=True)
        if not 0.0 <= self.min_completed <= 1.0:
            raise ConfigValueError("min_completed", f"must be between 0 and 1, got {self.min_completed}")
        for name in ("startup_timeout", "heartbeat_interval"):
            if not getattr(self, name) > 0:
                raise ConfigValueError(name, f"must be > 0 seconds, got {getattr(self, name)}")
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ConfigValueError("rate_limit", f"must be > 0 reads per sample, or null, got {self.rate_limit}")
        if self.policy not in POLICIES:
            raise ConfigValueError("policy", f"must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.policy == "deterministic" and self.max_reads not in (None, 1):
            raise ConfigValueError(
                "max_reads", f"must be 1 with policy deterministic (each sample once), got {self.max_reads}"
            )
        if self.transport_security not in TRANSPORT_SECURITY:
            raise ConfigValueError(
                "transport_security", f"must be one of {', '.join(TRANSPORT_SECURITY)}, got {self.transport_security!r}"
            )
        if self.on_failure not in ("fail", "redraw"):
            raise ConfigValueError("on_failure", f"must be fail or redraw, got {self.on_failure!r}")
        if self.batch_size > self.capacity:
            raise ConfigValueError("batch_size", f"({self.batch_size}) must not exceed capacity ({self.capacity})")
        if self.watermark is not None and not 0 <= self.watermark <= self.capacity:
            raise ConfigValueError("watermark", f"must be between 0 and capacity ({self.capacity})")
        if not 0 < self.heartbeat_interval < self.heartbeat_timeout:
            raise ConfigValueError("heartbeat_timeout", "must exceed heartbeat_interval, both > 0")


def check_settings(values: dict[str, Any]) -> OnlineDataConfig:
    """The one range check of the online settings (:class:`OnlineDataConfig`'s) for Python users
    of the classes that take them (the DataModule, the scheduler): ``ValueError`` worded as
    ``data.<name>: ...``. Settings not given take their defaults; values that are not settings
    (an executor object, a simulator) are ignored. Returns the settings, checked."""
    names = {f.name for f in fields(OnlineDataConfig)} - {"_target_", "_recursive_", "simulator_spec", "executor"}
    try:
        return OnlineDataConfig(**{k: v for k, v in values.items() if k in names})
    except ConfigValueError as exc:
        raise ValueError(f"data.{exc}") from None
