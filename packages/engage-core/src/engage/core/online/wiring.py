"""From an online DataModule's settings to the objects of its run: the executor that starts the
simulation processes, the schedulers (training and validation ones) and the pace of training.

Example::

    >>> from engage.core.online.config import OnlineDataConfig
    >>> settings = OnlineDataConfig()
    >>> type(make_executor(settings.executor, settings.executor_options)).__name__
    'LocalExecutor'
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from engage.core.executors import Executor
from engage.core.online.scheduler import SimulationScheduler

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from engage.core.online.buffer import TrainingBuffer
    from engage.core.online.config import OnlineDataConfig
    from engage.core.online.journal import Journal
    from engage.core.samplers.base import Sampler
    from engage.core.simulators.base import Simulator

log = logging.getLogger("engage.online")


def make_executor(executor: str | Executor, options: dict[str, Any]) -> Executor:
    """The executor named ``executor`` (``data.executor``), built with ``options``
    (``data.executor_options``), or ``executor`` itself when it is one; ``ValueError`` (one line
    naming the setting) for an unknown name or options it does not take."""
    if isinstance(executor, str):
        chosen = executor_class(executor)
        chosen.check_options(options)
        try:
            executor = chosen(**options)
        except TypeError as exc:
            raise ValueError(
                f"data.executor_options do not fit the {executor!r} executor ({exc}); given: {sorted(options)}"
            ) from None
    return executor


def executor_class(name: str) -> type[Executor]:
    """The executor class named ``name`` (``data.executor``); ``ValueError`` naming the installed
    ones when there is none."""
    from engage.core.executors import LocalExecutor
    from engage.core.plugins import executors

    known = {"local": LocalExecutor} if name == "local" else executors()
    if name not in known:
        raise ValueError(f"data.executor {name!r} is unknown; installed: {', '.join(sorted(known))}")
    return known[name]


def check_executor(name: str, options: dict[str, Any]) -> None:
    """``data.executor`` and its options as far as they can be checked before anything is built:
    the name, the option names and their values (:meth:`Executor.check_options`)."""
    executor_class(name).check_options(options)


def new_scheduler(
    settings: OnlineDataConfig,
    simulator: Simulator,
    sampler: Sampler,
    buffer: TrainingBuffer,
    *,
    simulations: int | None,
    executor: Executor,
    journal: Journal,
    hooks: Any,
    workdir: str,
    rank: int = 0,
    world_size: int = 1,
    validation: bool = False,
) -> SimulationScheduler:
    """A scheduler of ``simulations`` with the run's settings. A ``validation`` one runs its
    held-out simulations whole on one rank: every one must complete, none is redrawn, and no
    sample bound applies."""
    return SimulationScheduler(
        simulator,
        sampler,
        buffer,
        simulations=simulations,
        max_samples=None if validation else settings.max_samples,
        concurrency=settings.concurrency,
        retries=settings.retries,
        on_failure="fail" if validation else settings.on_failure,
        min_completed=1.0 if validation else settings.min_completed,
        executor=executor,
        journal=journal,
        heartbeat_interval=settings.heartbeat_interval,
        heartbeat_timeout=settings.heartbeat_timeout,
        startup_timeout=settings.startup_timeout,
        credit_window=settings.credit_window,
        coalesce_bytes=settings.coalesce_bytes,
        shared_memory=settings.shared_memory,
        transport_security=settings.transport_security,
        simulator_spec=settings.simulator_spec,
        workdir=workdir,
        rank=0 if validation else rank,
        world_size=1 if validation else world_size,
        hooks=hooks,
        held_out=validation,
    )


def planned_batches(settings: OnlineDataConfig, trainer: pl.Trainer) -> tuple[int, str] | None:
    """The batches each rank's trainer plans to train, and where that number comes from;
    ``None`` when it plans no end (or only a dry run)."""
    if trainer.fast_dev_run:
        return None
    plans = []
    if trainer.max_epochs is not None and trainer.max_epochs >= 0:
        per_epoch, source = settings.batches_per_epoch, f"data.batches_per_epoch={settings.batches_per_epoch}"
        limit = getattr(trainer, "limit_train_batches", None)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit < per_epoch:
            per_epoch, source = limit, f"trainer.limit_train_batches={limit}"
        elif isinstance(limit, float) and limit < 1.0:
            per_epoch, source = int(per_epoch * limit), f"{source} x trainer.limit_train_batches={limit}"
        plans.append((trainer.max_epochs * per_epoch, f"trainer.max_epochs={trainer.max_epochs} x {source}"))
    if trainer.max_steps is not None and trainer.max_steps > 0:
        steps = trainer.max_steps * trainer.accumulate_grad_batches
        accumulated = f" x {trainer.accumulate_grad_batches} accumulated" if trainer.accumulate_grad_batches > 1 else ""
        plans.append((steps, f"trainer.max_steps={trainer.max_steps}{accumulated}"))
    return min(plans) if plans else None


def planned_samples(settings: OnlineDataConfig, simulator: Simulator, world_size: int) -> int | None:
    """The samples all the run's simulations send, when the simulator says how many each sends."""
    if settings.simulations is None or simulator.samples_per_run is None:  # the program decides
        return None
    samples = settings.simulations * simulator.samples_per_run
    if settings.max_samples is not None:  # a bound of each rank's
        samples = min(samples, settings.max_samples * world_size)
    return samples


def unfed_plan(
    settings: OnlineDataConfig, simulator: Simulator, trainer: pl.Trainer, world_size: int, max_reads: int | None
) -> str | None:
    """Why the trainer's plan cannot be fed, or ``None``: under a policy that reads each sample
    at most ``max_reads`` times, the simulations' samples may fill fewer batches than the trainer
    plans, and training then stops when they run out (the end of the stream ends it)."""
    plan = planned_batches(settings, trainer)
    samples = planned_samples(settings, simulator, world_size)
    if max_reads is None or plan is None or not samples:
        return None
    batches, source = plan
    per_batch = settings.batch_size * world_size
    possible = -(-samples * max_reads // per_batch)  # the last one may be short
    if possible >= batches:
        return None
    reads = "once" if max_reads == 1 else f"{max_reads} times"
    ranks = f" on each of {world_size} ranks" if world_size > 1 else ""
    wanted = -(-batches * per_batch // max_reads)  # samples that would fill the plan
    if settings.max_samples is not None and samples == settings.max_samples * world_size:
        more = f"raise data.max_samples to {-(-wanted // world_size)}"  # the bound that binds
    else:
        more = f"raise data.simulations to {-(-wanted // simulator.samples_per_run)}"
    if settings.max_reads is not None:
        again = "or raise data.max_reads"
    else:
        again = "or use data.policy=reservoir, which reads samples again"
    return (
        f"data.policy={settings.policy} reads each sample {reads}: the {settings.simulations} simulations' "
        f"{samples} samples fill {possible} batches of up to {settings.batch_size}{ranks} of the {batches} the trainer "
        f"plans ({source}), and training stops when they run out; to train them all, {more} {again}"
    )


def paced_rate(
    settings: OnlineDataConfig, simulator: Simulator, trainer: pl.Trainer, world_size: int, max_reads: int | None = None
) -> float | None:
    """Reads per sample that spread the batches the trainer plans over the samples the
    simulations will send (at least 1), so that training lasts as long as the simulations
    instead of ending before they complete; ``None`` (no limit) when either is open-ended, or
    when the policy's ``max_reads`` bounds the reads of each sample below that anyway."""
    plan = planned_batches(settings, trainer)
    samples = planned_samples(settings, simulator, world_size)
    if plan is None or not plan[0] or not samples:
        return None
    rate = max(1.0, plan[0] * settings.batch_size * world_size / samples)
    if max_reads is not None and rate >= max_reads:
        return None
    log.info("training paced to the simulations: a sample is read %.3g times on average at most", rate)
    return rate
