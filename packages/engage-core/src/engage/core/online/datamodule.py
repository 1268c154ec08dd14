"""``OnlineDataModule``: train on samples streamed from simulations running alongside training."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset

from engage.core.data.simulated import VALIDATION_SEED_OFFSET, SimulationDataset
from engage.core.executors import Executor, LocalExecutor
from engage.core.online.buffer import TrainingBuffer
from engage.core.online.config import OnlineDataConfig, check_settings
from engage.core.online.journal import Journal
from engage.core.online.ledger import TrainingLedger
from engage.core.online.outcome import OnlineOutcome, OnlineRunFailed
from engage.core.online.rank_failures import RankFailures, other_ranks
from engage.core.online.scheduler import SimulationScheduler
from engage.core.online.wiring import make_executor, new_scheduler, paced_rate, planned_batches, unfed_plan
from engage.core.samplers.base import Sampler
from engage.core.samplers.uniform import UniformSampler
from engage.core.simulators.base import Simulator

log = logging.getLogger("engage.online")

#: the defaults of every setting, declared once (those ``engage run`` users get)
_D = OnlineDataConfig


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


def _check_pair(simulator: Any, sampler: Any) -> None:
    """``ValueError`` in one line naming the argument, before anything starts: a simulator class
    where an instance is due, something that is no sampler, or a sampler of another space (each
    failed only inside the simulation processes, after their retries)."""
    if isinstance(simulator, type):
        raise ValueError(
            f"simulator is the class {simulator.__name__}, not a simulator; pass {simulator.__name__}(...)"
        )
    if not isinstance(simulator, Simulator):
        raise ValueError(f"simulator is {type(simulator).__name__}, not a Simulator (engage.core.simulators)")
    if isinstance(sampler, type) or not isinstance(sampler, Sampler):
        what = f"the class {sampler.__name__}" if isinstance(sampler, type) else type(sampler).__name__
        raise ValueError(f"sampler is {what}, not a Sampler; pass one made on the simulator's space, e.g. "
                         f"UniformSampler(simulator.space)")  # fmt: skip
    if list(sampler.space.names) != list(simulator.space.names):
        raise ValueError(
            f"sampler draws ({', '.join(sampler.space.names)}) but {type(simulator).__name__} takes "
            f"({', '.join(simulator.space.names)}); make the sampler on simulator.space"
        )


def check_finite(batch: dict[str, np.ndarray]) -> None:
    """:class:`OnlineRunFailed` naming the simulations whose samples in ``batch`` hold NaN or
    infinite values: a model trained on them learns nothing, and the run would report success.
    One sum of the batch decides (NaN and infinities survive it); only then are rows looked at."""
    target = batch["target"]
    if target.dtype.kind != "f" or np.isfinite(target.sum()):
        return
    broken = ~np.isfinite(target.reshape(len(target), -1)).all(axis=1)
    if broken.any():  # else the sum itself overflowed: every value is finite
        simulations = sorted({int(i) for i in batch["simulation_id"][broken]})
        raise OnlineRunFailed(
            f"simulation {', '.join(map(str, simulations))} sent samples with NaN or infinite values "
            f"({int(broken.sum())} of a batch of {len(target)}); the simulator produced them, fix it there"
        )


def out_of_range(batch: dict[str, np.ndarray], value_range: tuple[float, float] | None) -> str | None:
    """What ``batch`` holds outside the simulator's declared ``value_range`` (which normalises
    the targets), or ``None``: a simulator that breaks its declaration, or declares a range too
    narrow. Two reductions of the batch decide; only then are rows looked at."""
    target = batch["target"]
    if value_range is None or target.dtype.kind not in "fiu" or not len(target):
        return None
    low, high = value_range
    slack = 1e-6 * (high - low)  # rounding of values computed at the range's ends
    smallest, largest = float(target.min()), float(target.max())
    if smallest >= low - slack and largest <= high + slack:
        return None
    rows = target.reshape(len(target), -1)
    lows, highs = rows.min(axis=1), rows.max(axis=1)
    outside = (lows < low - slack) | (highs > high + slack)
    simulations = sorted({int(i) for i in batch["simulation_id"][outside]})
    which = "simulation" if len(simulations) == 1 else "simulations"
    return (
        f"{which} {', '.join(map(str, simulations))} sent values from {float(lows[outside].min()):.6g} to "
        f"{float(highs[outside].max()):.6g}, outside the simulator's declared value_range [{low:g}, {high:g}], "
        "which scales the targets; declare the range its samples take"
    )


class BufferStream(IterableDataset):
    """Batches drawn from the training buffer; one pass is one epoch of ``batches_per_epoch``.

    Under distributed training every rank draws from its own buffer, fed by its own share of the
    simulations, and all ranks agree after each batch whether every one of them still has data,
    so the end of one rank's stream ends the epoch everywhere instead of hanging a collective.
    """

    def __init__(self, datamodule: OnlineDataModule):
        self.dm = datamodule

    def __len__(self) -> int:
        return self.dm.settings.batches_per_epoch

    def __iter__(self):
        dm = self.dm
        dm.start_streaming()
        for _ in range(dm.settings.batches_per_epoch):
            batch = dm.next_batch()
            if not dm.all_ranks_have(batch is not None):
                # the stream ended: no later epoch has a batch either, so training stops here
                # (with max_steps and no max_epochs, Lightning would start empty epochs forever)
                trainer = getattr(dm, "trainer", None)
                if trainer is not None:
                    trainer.should_stop = True
                return
            # it left the buffer: counted untrained until its step, also when refused below
            dm.ledger.handed_out(batch)  # type: ignore[arg-type]
            check_finite(batch)  # type: ignore[arg-type]
            if not dm.range_warned:
                outside = out_of_range(batch, getattr(dm.simulator, "value_range", None))  # type: ignore[arg-type]
                if outside is not None:  # once a run: the model trains on, scaled wrongly
                    dm.range_warned = True
                    log.warning(outside)
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
    ``val_simulations`` held-out simulations, run through simulation processes like training
    ones, once per run (or cached under ``cache_dir``, any fsspec URL, to share between runs).
    Each run has its own id and folder; every simulation is journaled to ``journal`` (any fsspec
    URL; default: in the run's folder). ``Trainer.fit(..., ckpt_path=...)`` resumes exactly where
    the checkpoint left off; a run that completes fewer than ``min_completed`` of its
    simulations, or trains no batch, fails (:class:`~.outcome.OnlineRunFailed`).

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
        simulations: int | None = _D.simulations,
        max_samples: int | None = _D.max_samples,
        concurrency: int = _D.concurrency,
        batch_size: int = _D.batch_size,
        batches_per_epoch: int = _D.batches_per_epoch,
        capacity: int = _D.capacity,
        policy: str = _D.policy,
        watermark: int | None = _D.watermark,
        max_reads: int | None = _D.max_reads,
        rate_limit: float | None = _D.rate_limit,
        retries: int = _D.retries,
        on_failure: str = _D.on_failure,
        min_completed: float = _D.min_completed,
        heartbeat_interval: float = _D.heartbeat_interval,
        heartbeat_timeout: float = _D.heartbeat_timeout,
        startup_timeout: float = _D.startup_timeout,
        credit_window: int | None = _D.credit_window,
        coalesce_bytes: int = _D.coalesce_bytes,
        shared_memory: bool = _D.shared_memory,
        transport_security: str = _D.transport_security,
        executor: str | Executor = _D.executor,
        executor_options: dict[str, Any] | None = None,
        journal: str | None = _D.journal,
        val_simulations: int = _D.val_simulations,
        cache_dir: str | None = _D.cache_dir,
        workdir: str | None = _D.workdir,
        simulator_spec: dict[str, Any] | None = None,
        seed: int = 0,
        train_simulations: int | None = _D.train_simulations,
        train_threads: int | None = _D.train_threads,
    ):
        super().__init__()
        if train_simulations is not None:
            simulations = train_simulations
        #: every setting, as given (defaults and ranges: :class:`~.config.OnlineDataConfig`)
        self.settings: OnlineDataConfig = check_settings(dict(locals()))
        # a name; an executor given as an object is named by its class (it is simulation_executor)
        kind = type(executor)
        self.settings.executor = executor if isinstance(executor, str) else f"{kind.__module__}.{kind.__qualname__}"
        self.settings.executor_options = dict(executor_options or {})
        self.settings.simulator_spec = _plain(simulator_spec)
        _check_pair(simulator, sampler)
        _check_buffer_memory(simulator, capacity)
        self.simulator, self.sampler = simulator, sampler
        #: where run folders go (``None``: the trainer's ``default_root_dir/online``, at first use)
        self.workdir = workdir
        #: the executor that starts this run's simulation processes, training and validation ones:
        #: made now, so that its name and options are checked (a Slurm partition by sbatch
        #: --test-only, a deploy layer against the sweep's hosts) before any run or folder exists;
        #: each launch request names its own log folder
        self.simulation_executor: Executor = make_executor(executor, self.settings.executor_options)
        watermark = min(capacity, 4 * batch_size) if watermark is None else watermark
        self.buffer = TrainingBuffer(capacity, policy, watermark, max_reads, rate_limit, seed=seed)
        self.ledger = TrainingLedger()
        #: batches a checkpoint held as handed out and not trained: served first, as they were
        self._replay: deque[dict[str, np.ndarray]] = deque()
        self.scheduler: SimulationScheduler | None = None
        self.val_dataset: SimulationDataset | None = None
        #: the held-out simulations' parameters, ``(val_simulations, d)`` in the simulator's units,
        #: once drawn (the simulation report plots them beside the sampled points)
        self.held_out_points: np.ndarray | None = None
        #: names this run's state (journal, work folder, shared memory); a resumed run keeps its own
        self.run_id: str | None = None
        self.rank, self.world_size = 0, 1
        #: the batches this rank's trainer plans to train (``None``: no end planned), once fitting
        self.batches_planned: int | None = None
        #: whether a batch outside the simulator's declared value range was warned about (once a run)
        self.range_warned = False
        #: how the ranks of a distributed fit tell one another why one failed (set up with the fit)
        self._failures: RankFailures | None = None
        self._group: Any = None
        self._restored: dict[str, Any] | None = None

    @property
    def batch_size(self) -> int:
        """Samples per training batch (``settings.batch_size``; Lightning's batch size finder sets it)."""
        return self.settings.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self.settings.batch_size = int(value)

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
            if self._group is None and self.world_size > 1:
                # a CPU group for the end-of-stream agreement, whatever the training backend
                self._group = dist.new_group(backend="gloo")
        if stage in (None, "fit"):
            if self.run_id is None:
                self.run_id = self._agree(uuid.uuid4().hex)
            self._limit_threads()
            if self.world_size > 1:
                self._failures = RankFailures(self._rank_folder, self.rank, self.world_size)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and stage in (None, "fit"):
            plan = planned_batches(self.settings, trainer)
            self.batches_planned = plan[0] if plan is not None else None
            unfed = unfed_plan(self.settings, self.simulator, trainer, self.world_size, self.buffer.max_reads)
            if unfed is not None and self.rank == 0:
                log.warning(unfed)
            if self.settings.rate_limit is None:
                self.buffer.rate_limit = paced_rate(
                    self.settings, self.simulator, trainer, self.world_size, self.buffer.max_reads
                )
            from engage.core.online.progress import OnlineProgress
            from engage.core.online.report import SimulationReport
            from engage.core.online.run_check import OnlineRunCheck

            for callback in (OnlineProgress, SimulationReport, OnlineRunCheck):
                if not any(isinstance(cb, callback) for cb in trainer.callbacks):
                    trainer.callbacks.append(callback())

    def _agree(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if self._group is None:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def _on_rank_zero(self, compute: Callable[[], Any], what: str) -> Any:
        """``compute()`` run by rank 0 alone, its result on every rank (each rank would otherwise
        start the same simulation processes on the same node). Rank 0 reports its own failure; the
        other ranks end with it, quietly (:class:`OnlineRunFailed` said elsewhere)."""
        if self._group is None:
            return compute()
        if self.rank != 0:
            done, value = self._agree(None)
            if not done:
                raise OnlineRunFailed(f"{what} failed on rank 0: {value}", said_elsewhere=True)
            return value
        try:
            value = compute()
        except BaseException as exc:
            self._agree((False, " ".join(str(exc).split()) or type(exc).__name__))
            raise
        self._agree((True, value))
        return value

    def _limit_threads(self) -> None:
        # Local simulations share the machine with training: a trainer with as many torch threads
        # as cores makes its OpenMP threads wait on busy cores, which on small machines costs far
        # more than the threads gain (a 20x slower step was measured on 2 cores).
        threads = self.settings.train_threads
        if threads is None:
            if type(self.simulation_executor) is not LocalExecutor:  # simulations elsewhere
                return
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            threads = max(1, cores - self.settings.concurrency)
        if threads < torch.get_num_threads() or self.settings.train_threads is not None:
            torch.set_num_threads(threads)

    def _workdir(self) -> str:
        """This run's own folder: ``<workdir>/<run_id>`` (default ``workdir``: the trainer's
        ``default_root_dir/online``), so that no run ever reads another's journal or files."""
        if self.workdir is None:
            trainer = getattr(self, "trainer", None)
            root = trainer.default_root_dir if trainer is not None else tempfile.mkdtemp(prefix="engage-online-")
            self.workdir = os.path.join(root, "online")
        if self.run_id is None:
            self.run_id = uuid.uuid4().hex
        path = os.path.join(self.workdir, self.run_id)
        if self.world_size > 1:
            path = os.path.join(path, f"rank{self.rank}")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            from engage.core.config.validate import ConfigError

            raise ConfigError(f"data.workdir: cannot make {path} ({exc.strerror}); give a writable folder") from None
        return path

    def _new_scheduler(self) -> SimulationScheduler:
        from engage.core.plugins import get_plugin_manager

        workdir = self._workdir()
        hooks = get_plugin_manager().hook
        url = self.settings.journal or os.path.join(workdir, "journal.jsonl")
        if self.world_size > 1 and self.settings.journal:
            url = f"{self.settings.journal.removesuffix('.jsonl')}-rank{self.rank}.jsonl"
        journal = Journal(url, run_id=self.run_id)
        executor = self.simulation_executor
        scheduler = new_scheduler(
            self.settings, self.simulator, self.sampler, self.buffer, simulations=self.settings.simulations,
            executor=executor, journal=journal, hooks=hooks, workdir=workdir, rank=self.rank,
            world_size=self.world_size,
        )  # fmt: skip
        if self._restored is not None:
            scheduler.load_state_dict(self._restored["scheduler"])
        return scheduler

    def _validation_dataset(self) -> SimulationDataset | None:
        """The held-out simulations (``val_simulations`` uniform points of their own seed), run
        through simulation processes like training ones, once per run (see :mod:`.validation`)."""
        if self.val_dataset is None and self.settings.val_simulations > 0:
            from engage.core.online.validation import held_out_fields

            held_out = UniformSampler(self.simulator.space, seed=self.settings.seed + VALIDATION_SEED_OFFSET)
            points = held_out.ask(self.settings.val_simulations)
            self.held_out_points = points
            folder = os.path.join(self._workdir(), "validation")

            def make(sampler: Sampler, buffer: TrainingBuffer, n: int, workdir: str) -> SimulationScheduler:
                journal = Journal(os.path.join(workdir, "journal.jsonl"), run_id=self.run_id)
                return new_scheduler(
                    self.settings, self.simulator, sampler, buffer, simulations=n, executor=self.simulation_executor,
                    journal=journal, hooks=None, workdir=workdir, validation=True,
                )  # fmt: skip

            def run() -> np.ndarray:
                try:
                    return held_out_fields(self.simulator, points, make, folder, self.settings.cache_dir)
                except OSError as exc:
                    if self.settings.cache_dir is None:
                        raise
                    from engage.core.config.validate import ConfigError

                    raise ConfigError(
                        f"data.cache_dir: cannot store held-out simulations under {self.settings.cache_dir} "
                        f"({exc.strerror or exc}); give a folder (or fsspec URL) this user can write"
                    ) from None

            fields = self._on_rank_zero(run, "held-out simulations")
            self.val_dataset = SimulationDataset(self.simulator.space.to_unit(points), fields)
        return self.val_dataset

    # ------------------------------------------------------------------ streaming
    def start_streaming(self) -> None:
        """Start the simulations (first training batch; after a checkpoint was restored)."""
        # batches handed to an iterator of an epoch that ended are not trained: they are lost
        # with it (Lightning drops an epoch's iterator only after its last step)
        self.ledger.discard_untrained()
        if self.scheduler is None:
            self.scheduler = self._new_scheduler()
            self.scheduler.start()

    def all_ranks_have(self, have: bool) -> bool:
        """Whether every rank has a batch (``have`` on one process)."""
        if self._group is None:
            return have
        flag = torch.tensor([1 if have else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self._group)
        return bool(flag.item())

    def train_dataloader(self) -> BufferStream:
        # the batches as they come, sized (a progress bar's total) and not wrapped in a
        # DataLoader: they are tensors already, and a sized IterableDataset in a DataLoader makes
        # Lightning warn about worker processes this stream never has
        return BufferStream(self)

    def val_dataloader(self) -> DataLoader | list:
        dataset = self._validation_dataset()
        if dataset is None:  # val_simulations=0: no validation
            return []
        return DataLoader(dataset, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        """The held-out simulations, as :meth:`val_dataloader` serves them: an online run has one
        held-out set (``val_simulations``); ``trainer.test`` evaluates on it, after the fit or
        without one."""
        return self.val_dataloader()

    def teardown(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            if self.scheduler is not None:
                self.scheduler.stop()
            self.simulation_executor.shutdown()  # what the executor holds (Slurm: jobs still queued are cancelled)

    def on_exception(self, exception: BaseException) -> None:
        """A fit that fails stops its simulations: Lightning calls no ``teardown`` then. Under
        distributed training, a rank whose own fit failed leaves its cause for the others."""
        if self._failures is not None:
            self._failures.note(exception)
        self.teardown("fit")

    def _rank_folder(self, rank: int) -> str | None:
        if self.workdir is None or self.run_id is None:
            return None
        return os.path.join(self.workdir, self.run_id, f"rank{rank}")

    def peer_failure(self, trainer: pl.Trainer | None = None, wait_s: float = 5.0) -> str | None:
        """Why another rank of this distributed fit stopped, when this one lost it (see
        :meth:`RankFailures.peer`); ``None`` when not known, or not distributed."""
        if self._failures is None:
            return None
        launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
        return self._failures.peer(list(getattr(launcher, "procs", None) or []), wait_s)

    def stats(self) -> dict[str, float]:
        """Buffer and simulation counters of this rank."""
        out = {f"buffer_{k}": v for k, v in self.buffer.stats().items()}
        if self.scheduler is not None:
            out.update(self.scheduler.stats())
        return out

    # ------------------------------------------------------------------ outcome
    def outcome(self) -> OnlineOutcome:
        """What this rank's run did so far (see :class:`~.outcome.OnlineOutcome`). A batch counts
        as trained once the optimizer stepped on it: one whose step was interrupted (Ctrl-C, an
        exception) counts among the untrained, as a checkpoint written then keeps it."""
        batches_trained, samples_trained = self.ledger.trained(self._global_step())
        sched = self.scheduler
        if sched is None:
            simulations = self.settings.simulations
            # this rank's share, as its scheduler would have it
            requested = (
                None
                if simulations is None or self.settings.max_samples is not None
                else len(range(self.rank, simulations, self.world_size))
            )
            return OnlineOutcome(
                requested, 0, 0, 0, 0, samples_trained, batches_trained,
                samples_unread=self.buffer.unread(), samples_untrained=self._untrained_samples(),
                batches_planned=self.batches_planned,
            )  # fmt: skip
        requested = sched.steering.requested if self.settings.max_samples is None else sched.planned
        with sched.consistent():  # no message handled meanwhile: the buffer holds what was counted
            received, unread = sched.samples, self.buffer.unread()
        return OnlineOutcome(
            requested=requested,
            completed=sched.finished,
            failed=sched.failed + sched.retried,
            given_up=sched.failed,
            samples_received=received,
            samples_trained=samples_trained,
            batches_trained=batches_trained,
            samples_unread=unread,
            samples_untrained=self._untrained_samples(),
            batches_planned=self.batches_planned,
        )

    def _untrained_samples(self) -> int:
        """Samples of batches out of the buffer that reached no training step (see
        :class:`~.outcome.OnlineOutcome`): handed out, given back by a checkpoint, or dropped."""
        replayed = sum(len(batch["simulation_id"]) for batch in self._replay)
        return self.ledger.untrained(self._global_step()) + replayed + self.ledger.samples_discarded

    def run_outcome(self) -> OnlineOutcome:
        """The whole run's outcome: this rank's, or under distributed training every rank's added
        up (a collective: every rank calls it), so that a run is judged and reported once, on the
        simulations it was asked for."""
        mine = self.outcome()
        if self._group is None:
            return mine
        counts = [
            mine.requested or 0, int(mine.requested is None), mine.completed, mine.failed, mine.given_up,
            mine.samples_received, mine.samples_trained, mine.batches_trained, mine.samples_unread,
            mine.samples_untrained, mine.batches_planned or 0,
        ]  # fmt: skip
        total = torch.tensor(counts, dtype=torch.int64)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self._group)
        requested, unbounded, *rest, planned = (int(v) for v in total.tolist())
        return OnlineOutcome(None if unbounded else requested, *rest, batches_planned=planned or None)

    def check_outcome(self) -> OnlineOutcome:
        """The outcome, or :class:`~.outcome.OnlineRunFailed` when the run fell short."""
        outcome = self.outcome()
        problem = outcome.problem(self.settings.min_completed, self.settings.rate_limit)
        if problem is not None:
            raise OnlineRunFailed(f"online run failed: {problem}; {outcome.line()}")
        return outcome

    # ------------------------------------------------------------------ checkpointing
    def next_batch(self) -> dict[str, np.ndarray] | None:
        """The next training batch: those a checkpoint held untrained first (beside the buffer,
        which a checkpoint may hold full), then the buffer's; ``None`` when the stream ended."""
        if self._replay:
            return self._replay.popleft()
        return self.buffer.get_batch(self.batch_size)  # type: ignore[return-value]

    def _global_step(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return int(trainer.global_step) if trainer is not None else None

    def state_dict(self) -> dict[str, Any]:
        """One consistent state of the run's data: sampler, buffer, simulations still to run (from
        the sample index each holds), batches handed out and not yet trained, and the run id.
        A run restored from it trains every sample its simulations define exactly once with a
        policy that reads each sample once (fifo or firo with ``max_reads=1``)."""
        scheduler = self.scheduler
        lock = scheduler.consistent() if scheduler is not None else threading.RLock()
        with lock:
            local = {
                "sampler": self.sampler.state_dict(),
                "buffer": self.buffer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else self._pending_scheduler_state(),
                "ledger": self.ledger.state_dict(global_step=self._global_step(), replay=list(self._replay)),
            }
        identity = {
            "run_id": self.run_id,
            "simulator": _describe(self.simulator),
            # the simulator's settings as configured (a heat simulator's alpha and dt): samples of
            # other settings would be mixed with the checkpoint's on resume
            "simulator_settings": self.settings.simulator_spec,
            "sampler": type(self.sampler).__name__,
        }
        if self._group is None:
            return {"world_size": 1, "ranks": [local], **identity}
        # the checkpoint is written by rank 0: gather every rank's state into it
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, local, group=self._group)
        return {"world_size": self.world_size, "ranks": gathered, **identity}

    def _pending_scheduler_state(self) -> dict[str, Any] | None:
        return self._restored["scheduler"] if self._restored is not None else None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks")
        if ranks is None:  # a checkpoint of the offline DataModule: only the sampler carries over
            self.sampler.load_state_dict(state_dict["sampler"])
            return
        check_resumable(state_dict, self.simulator, self.sampler, self.settings.simulator_spec)
        if len(ranks) != self.world_size:
            raise ValueError(other_ranks(len(ranks), self.world_size))
        if self.scheduler is not None:
            raise RuntimeError("the data state must be loaded before simulations start (before the first batch)")
        local = ranks[self.rank]
        self.sampler.load_state_dict(local["sampler"])
        self.buffer.load_state_dict(local["buffer"])
        if local.get("ledger") is not None:
            untrained = self.ledger.load_state_dict(local["ledger"])
            # samples leave the buffer on a read only with max_reads=1; else they are still held
            if self.buffer.max_reads == 1:
                self._replay.extend(untrained)
        self.run_id = state_dict.get("run_id") or self.run_id
        if local.get("scheduler") is not None:
            self._restored = local


def _describe(simulator: Simulator) -> Any:
    describe = getattr(simulator, "describe", None)
    return describe() if callable(describe) else type(simulator).__qualname__


def check_resumable(
    state: dict[str, Any], simulator: Simulator, sampler: Sampler, settings: dict[str, Any] | None = None
) -> None:
    """Raise ``ValueError`` (one line) when a checkpoint's data state is of another simulator, its
    other settings (``settings``: the DataModule's ``simulator_spec``, where both have one),
    parameter space or sampler than this run's."""
    saved = state.get("simulator")
    if saved is not None and _plain_json(saved) != _plain_json(_describe(simulator)):
        raise ValueError(
            f"the checkpoint was written by a run of another simulator ({_differences(saved, _describe(simulator))}); "
            "resume with the same simulator or start a new run"
        )
    saved_settings = state.get("simulator_settings")
    if saved_settings is not None and settings is not None and _plain_json(saved_settings) != _plain_json(settings):
        raise ValueError(
            "the checkpoint was written with other simulator settings "
            f"({_differences(saved_settings, settings)}); resume with the same settings or start a new run"
        )
    name = state.get("sampler")
    if name is not None and name != type(sampler).__name__:
        raise ValueError(
            f"the checkpoint was written with sampler {name}, this run uses {type(sampler).__name__}; "
            "resume with the same sampler or start a new run"
        )
    ranks = state.get("ranks") or []
    space = ranks[0].get("sampler", {}).get("space") if ranks else None
    now = sampler.space.to_config()
    if space is not None and _plain_json(space) != _plain_json(now):
        raise ValueError(
            f"the checkpoint was written for another parameter space ({_differences(space, now)}); "
            "resume with the same one or start a new run"
        )


def _plain_json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True, default=str)


def _differences(saved: Any, now: Any, shown: int = 3) -> str:
    """Where two JSON-like values differ, as ``path: checkpoint's -> this run's``, the first
    ``shown`` of them (values cut to 40 characters), e.g. ``kwargs.steps: 8 -> 9``."""

    def flat(value: Any, path: str) -> dict[str, str]:
        if isinstance(value, dict):
            out: dict[str, str] = {} if value else {path: "{}"}
            for key in value:
                out.update(flat(value[key], f"{path}.{key}" if path else str(key)))
            return out
        return {path or "(whole)": _plain_json(value)}

    a, b = flat(saved, ""), flat(now, "")
    paths = [p for p in dict.fromkeys([*a, *b]) if a.get(p) != b.get(p)]

    def cut(text: str | None) -> str:
        text = "(none)" if text is None else text
        return text if len(text) <= 40 else text[:37] + "..."

    listed = "; ".join(f"{p}: {cut(a.get(p))} -> {cut(b.get(p))}" for p in paths[:shown])
    more = f"; and {len(paths) - shown} more" if len(paths) > shown else ""
    return f"checkpoint -> this run: {listed}{more}"


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
