"""``OnlineDataModule``: train on samples streamed from simulations running alongside training."""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset

from engage.core.data.simulated import VALIDATION_SEED_OFFSET, SimulationDataset, cached_simulations
from engage.core.executors import Executor
from engage.core.online import protocol
from engage.core.online.buffer import TrainingBuffer
from engage.core.online.journal import Journal
from engage.core.online.scheduler import SimulationScheduler
from engage.core.samplers.base import Sampler
from engage.core.samplers.uniform import UniformSampler
from engage.core.simulators.base import Simulator

log = logging.getLogger("engage.online")


def _check_buffer_memory(simulator: Simulator, capacity: int) -> None:
    """Refuse a buffer that cannot fit in memory when full, and warn when it would take most of it:
    otherwise the run fails hours in, when the buffer fills (samples are read into it, or kept, as
    they arrive)."""
    shape, dtype = getattr(simulator, "sample_shape", None), getattr(simulator, "dtype", None)
    if shape is None or dtype is None:
        return
    import psutil

    per_sample = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
    need, available = capacity * per_sample, psutil.virtual_memory().available
    if need <= available // 2:
        return
    gib = 2**30
    what = (
        f"data.capacity: a full buffer of {capacity} samples of {tuple(shape)} {np.dtype(dtype)} takes "
        f"{need / gib:.1f} GiB, and {available / gib:.1f} GiB of memory is available"
    )
    fits = available // 2 // per_sample
    if need > available and fits == 0:
        raise ValueError(f"{what}; one sample takes {per_sample / gib:.1f} GiB: the samples must be smaller")
    if need > available:
        raise ValueError(f"{what}; lower data.capacity to {fits} or less")
    log.warning("%s; the model and batches need room too: consider data.capacity=%d", what, max(1, fits))


class BufferStream(IterableDataset):
    """Batches drawn from the training buffer; one pass is one epoch of ``batches_per_epoch``.

    Under distributed training every rank draws from its own buffer, fed by its own share of the
    simulations, and all ranks agree after each batch whether every one of them still has data,
    so the end of one rank's stream ends the epoch everywhere instead of hanging a collective.
    """

    def __init__(self, datamodule: OnlineDataModule):
        self.dm = datamodule

    def __len__(self) -> int:
        return self.dm.batches_per_epoch

    def __iter__(self):
        dm = self.dm
        dm.start_streaming()
        for _ in range(dm.batches_per_epoch):
            batch = dm.buffer.get_batch(dm.batch_size)  # type: ignore[union-attr]
            if not dm.all_ranks_have(batch is not None):
                return
            yield {
                "parameters": torch.from_numpy(batch["parameters"]),  # type: ignore[index]
                "time": torch.from_numpy(batch["time"]),  # type: ignore[index]
                "target": torch.from_numpy(batch["target"]),  # type: ignore[index]
                "simulation_id": torch.from_numpy(batch["simulation_id"]),  # type: ignore[index]
            }


class OnlineDataModule(pl.LightningDataModule):
    """Streams training samples from simulations that run while the model trains.

    A drop-in replacement for an offline DataModule: batches are the same mappings
    (``parameters`` unit-normalised ``(B, d)``, ``time`` ``(B, 1)``, ``target`` ``(B, *shape)``,
    ``simulation_id`` ``(B,)``). ``simulations`` processes are run, ``concurrency`` at a time,
    with parameters from ``sampler``; their samples fill a :class:`TrainingBuffer`
    (``policy``, ``capacity``, ``watermark``, ``max_reads``, ``rate_limit``). Validation uses
    ``val_simulations`` held-out runs, computed once and cached under ``cache_dir`` (any fsspec
    URL). Every simulation is journaled to ``journal`` (any fsspec URL; default: in the run's
    directory) and a resumed run continues where the checkpoint and the journal left off.

    Example::

        >>> from engage.core.simulators import HeatEquation
        >>> from engage.core.samplers import UniformSampler
        >>> sim = HeatEquation(grid=8, steps=4)
        >>> dm = OnlineDataModule(sim, UniformSampler(sim.space), simulations=2, val_simulations=0,
        ...                       batch_size=4, batches_per_epoch=2, capacity=16)
        >>> dm.setup("fit")
        >>> [b["target"].shape for b in dm.train_dataloader()]
        [torch.Size([4, 8, 8]), torch.Size([4, 8, 8])]
        >>> dm.teardown("fit")
    """

    def __init__(
        self,
        simulator: Simulator,
        sampler: Sampler,
        simulations: int | None = 64,
        max_samples: int | None = None,
        concurrency: int = 2,
        batch_size: int = 32,
        batches_per_epoch: int = 100,
        capacity: int = 2048,
        policy: str = "firo",
        watermark: int | None = None,
        max_reads: int | None = None,
        rate_limit: float | None = None,
        retries: int = 2,
        on_failure: str = "fail",
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 30.0,
        startup_timeout: float = 120.0,
        credit_window: int | None = None,
        coalesce_bytes: int = protocol.COALESCE_BYTES,
        shared_memory: bool = True,
        executor: str | Executor = "local",
        executor_options: dict[str, Any] | None = None,
        journal: str | None = None,
        val_simulations: int = 4,
        cache_dir: str | None = None,
        workdir: str | None = None,
        simulator_spec: dict[str, Any] | None = None,
        seed: int = 0,
        train_simulations: int | None = None,
        train_threads: int | None = None,
    ):
        super().__init__()
        if train_simulations is not None:
            simulations = train_simulations
        for name, value, minimum in (
            ("batch_size", batch_size, 1),
            ("batches_per_epoch", batches_per_epoch, 1),
            ("capacity", capacity, 1),
            ("concurrency", concurrency, 1),
            ("retries", retries, 0),
            ("val_simulations", val_simulations, 0),
            ("coalesce_bytes", coalesce_bytes, 0),
        ):
            if value < minimum:
                raise ValueError(f"data.{name} must be >= {minimum}, got {value}")
        if batch_size > capacity:
            raise ValueError(f"data.batch_size ({batch_size}) exceeds data.capacity ({capacity}); raise the capacity")
        _check_buffer_memory(simulator, capacity)
        self.simulator, self.sampler = simulator, sampler
        self.simulations, self.max_samples, self.concurrency = simulations, max_samples, concurrency
        self.batch_size, self.batches_per_epoch = batch_size, batches_per_epoch
        self.capacity, self.policy, self.max_reads, self.rate_limit = capacity, policy, max_reads, rate_limit
        self.watermark = min(capacity, 4 * batch_size) if watermark is None else watermark
        self.retries, self.on_failure = retries, on_failure
        self.heartbeat_interval, self.heartbeat_timeout = heartbeat_interval, heartbeat_timeout
        self.startup_timeout, self.credit_window = startup_timeout, credit_window
        self.coalesce_bytes, self.shared_memory = coalesce_bytes, shared_memory
        self.executor, self.journal_url = executor, journal
        self.executor_options = dict(executor_options or {})
        self.val_simulations, self.cache_dir, self.seed = val_simulations, cache_dir, seed
        self.workdir = workdir
        self.train_threads = train_threads
        self.simulator_spec = _plain(simulator_spec)
        self.buffer = TrainingBuffer(capacity, policy, self.watermark, max_reads, rate_limit, seed=seed)
        self.scheduler: SimulationScheduler | None = None
        self.val_dataset: SimulationDataset | None = None
        self.rank, self.world_size = 0, 1
        self._group: Any = None
        self._restored: dict[str, Any] | None = None

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
            if self._group is None and self.world_size > 1:
                # a CPU group for the end-of-stream agreement, whatever the training backend
                self._group = dist.new_group(backend="gloo")
        if self.val_dataset is None and self.val_simulations > 0:
            held_out = UniformSampler(self.simulator.space, seed=self.seed + VALIDATION_SEED_OFFSET)
            points = held_out.ask(self.val_simulations)
            fields = self._cached(points, "val")
            self.val_dataset = SimulationDataset(self.simulator.space.to_unit(points), fields)
        if stage in (None, "fit") and self.scheduler is None:
            self.scheduler = self._new_scheduler()
            self._limit_threads()
        trainer = getattr(self, "trainer", None)
        if trainer is not None and stage in (None, "fit"):
            from engage.core.online.progress import OnlineProgress

            if not any(isinstance(cb, OnlineProgress) for cb in trainer.callbacks):
                trainer.callbacks.append(OnlineProgress())

    def _limit_threads(self) -> None:
        # Local simulations share the machine with training: a trainer with as many torch threads
        # as cores makes its OpenMP threads wait on busy cores, which on small machines costs far
        # more than the threads gain (a 20x slower step was measured on 2 cores).
        threads = self.train_threads
        if threads is None:
            if self.executor != "local":
                return
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            threads = max(1, cores - self.concurrency)
        if threads < torch.get_num_threads() or self.train_threads is not None:
            torch.set_num_threads(threads)

    def _workdir(self) -> str:
        if self.workdir is None:
            trainer = getattr(self, "trainer", None)
            root = trainer.default_root_dir if trainer is not None else tempfile.mkdtemp(prefix="engage-online-")
            self.workdir = os.path.join(root, "online")
        path = os.path.join(self.workdir, f"rank{self.rank}") if self.world_size > 1 else self.workdir
        os.makedirs(path, exist_ok=True)
        return path

    def _new_scheduler(self) -> SimulationScheduler:
        from engage.core.executors import LocalExecutor
        from engage.core.plugins import PluginError, executors, get_plugin_manager

        workdir = self._workdir()
        executor = self.executor
        if isinstance(executor, str):
            known = {"local": LocalExecutor} if executor == "local" else executors()
            if executor not in known:
                raise ValueError(f"data.executor {executor!r} is unknown; installed: {', '.join(sorted(known))}")
            options = {"log_dir": os.path.join(workdir, "logs"), **self.executor_options}
            try:
                executor = known[executor](**options)
            except TypeError as exc:
                raise ValueError(
                    f"data.executor_options do not fit the {executor!r} executor ({exc}); "
                    f"given: {sorted(self.executor_options)}"
                ) from None
        try:
            hooks = get_plugin_manager().hook
        except PluginError as exc:
            log.warning("simulation events will not reach plugins: %s", exc)
            hooks = None
        url = self.journal_url or os.path.join(workdir, "journal.jsonl")
        if self.world_size > 1 and self.journal_url:
            url = f"{self.journal_url.removesuffix('.jsonl')}-rank{self.rank}.jsonl"
        return SimulationScheduler(
            self.simulator,
            self.sampler,
            self.buffer,
            simulations=self.simulations,
            max_samples=self.max_samples,
            concurrency=self.concurrency,
            retries=self.retries,
            on_failure=self.on_failure,
            executor=executor,
            journal=Journal(url),
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            startup_timeout=self.startup_timeout,
            credit_window=self.credit_window,
            coalesce_bytes=self.coalesce_bytes,
            shared_memory=self.shared_memory,
            simulator_spec=self.simulator_spec,
            workdir=workdir,
            rank=self.rank,
            world_size=self.world_size,
            hooks=hooks,
        )

    def _cached(self, points: np.ndarray, name: str) -> np.ndarray:
        return cached_simulations(self.simulator, points, name, self.cache_dir)

    # ------------------------------------------------------------------ streaming
    def start_streaming(self) -> None:
        """Start the simulations (first training batch; after a checkpoint was restored)."""
        if self.scheduler is None:
            self.scheduler = self._new_scheduler()
        if self.scheduler._thread is None:
            if self._restored is not None:
                self.scheduler.load_state_dict(self._restored["scheduler"])
            self.scheduler.start()

    def all_ranks_have(self, have: bool) -> bool:
        """Whether every rank has a batch (``have`` on one process)."""
        if self._group is None:
            return have
        flag = torch.tensor([1 if have else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self._group)
        return bool(flag.item())

    def train_dataloader(self) -> DataLoader:
        return DataLoader(BufferStream(self), batch_size=None, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        if self.val_dataset is None:
            self.setup("validate")
        return DataLoader(self.val_dataset, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def teardown(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.scheduler is not None:
            self.scheduler.stop()

    def stats(self) -> dict[str, float]:
        """Buffer and simulation counters of this rank."""
        out = {f"buffer_{k}": v for k, v in self.buffer.stats().items()}
        if self.scheduler is not None:
            out.update(self.scheduler.stats())
        return out

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        local = {
            "sampler": self.sampler.state_dict(),
            "buffer": self.buffer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
        }
        if self._group is None:
            return {"world_size": 1, "ranks": [local]}
        # the checkpoint is written by rank 0: gather every rank's state into it
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, local, group=self._group)
        return {"world_size": self.world_size, "ranks": gathered}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks")
        if ranks is None:  # a checkpoint of the offline DataModule: only the sampler carries over
            self.sampler.load_state_dict(state_dict["sampler"])
            return
        if len(ranks) != self.world_size:
            raise ValueError(
                f"the checkpoint holds the data state of {len(ranks)} ranks; resume with the same number of "
                f"devices ({len(ranks)}), not {self.world_size}"
            )
        local = ranks[self.rank]
        self.sampler.load_state_dict(local["sampler"])
        self.buffer.load_state_dict(local["buffer"])
        if local.get("scheduler") is not None:
            self._restored = local
            if self.scheduler is not None and self.scheduler._thread is not None:
                log.warning("data state loaded after simulations started; it applies to the next run")


def _plain(spec: Any) -> dict[str, Any] | None:
    """A Hydra node of the simulator (``_target_`` and arguments) as ``{"target", "kwargs"}``."""
    if spec is None:
        return None
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(spec, DictConfig):
            spec = OmegaConf.to_container(spec, resolve=True)
    except ImportError:
        pass
    spec = dict(spec)
    if "target" in spec or "pickle" in spec:
        return spec
    target = spec.pop("_target_", None)
    if not target:
        raise ValueError("data.simulator_spec needs a '_target_' (or 'target') naming the simulator class")
    return {"target": target, "kwargs": spec}
