"""The callback that makes an online run count what it trained and fail when it fell short."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger("engage.online")


class OnlineRunCheck(pl.Callback):
    """Counts the batches each training step takes (:class:`~.ledger.TrainingLedger`), and when
    training ends (or the fit, when its training loop never ran) records the run's
    :class:`~.outcome.OnlineOutcome`, every rank's added up under distributed training (MLflow
    metrics ``online/simulations_*`` and
    ``online/samples_*``, one log line) and raises
    :class:`~.outcome.OnlineRunFailed` out of ``Trainer.fit`` when the run did not complete the
    simulations it was asked for (``min_completed``) or trained no batch, in this fit: a fit
    resumed from a checkpoint that had trained as long as asked trains nothing and fails too,
    whatever the counts it carries.

    :class:`~engage.core.online.datamodule.OnlineDataModule` adds it to the trainer by itself.

    Example::

        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[OnlineRunCheck()], logger=False, enable_progress_bar=False)
    """

    def __init__(self) -> None:
        self._recorded: Any = None
        self._batches = 0  # training batches this fit ran (a resumed fit counts from 0)

    @staticmethod
    def _datamodule(trainer: pl.Trainer) -> Any:
        dm = getattr(trainer, "datamodule", None)
        wanted = ("ledger", "outcome", "run_outcome")
        return dm if dm is not None and all(hasattr(dm, name) for name in wanted) else None

    @property
    def recorded(self) -> Any:
        """The :class:`~.outcome.OnlineOutcome` recorded (in MLflow too) when training ended, or ``None``."""
        return self._recorded

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._recorded, self._batches = None, 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Tag the MLflow run with the online run's id (its journal's, its folder's) as training
        starts, once a checkpoint restored it: a run killed later (SIGKILL) still names it."""
        from lightning.pytorch.loggers import MLFlowLogger

        dm, logger = self._datamodule(trainer), trainer.logger
        run_id = getattr(dm, "run_id", None)
        if run_id and isinstance(logger, MLFlowLogger) and trainer.is_global_zero and logger.run_id:
            logger.experiment.set_tag(logger.run_id, "engage.online_run_id", run_id)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        dm = self._datamodule(trainer)
        if dm is not None:
            dm.ledger.step_started(trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        self._batches += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._judge(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a fit whose training loop never ran (``limit_train_batches=0``, ``max_steps`` reached
        # already) calls no on_train_end: it is judged here, and trained no batch
        if self._recorded is None:
            self._judge(trainer)

    def _judge(self, trainer: pl.Trainer) -> None:
        dm = self._datamodule(trainer)
        if dm is None:
            return
        outcome = self._record(trainer, dm, dm.run_outcome())  # every rank's, added up
        # fast_dev_run checks that the pieces work with a batch or two: the budget is not judged
        problem = outcome.problem(0.0 if trainer.fast_dev_run else dm.settings.min_completed, dm.settings.rate_limit)
        if problem is None and self._batches == 0:
            # every simulation of the budget done and each of its samples trained: the data ran out
            ran_out = (
                outcome.requested is not None
                and outcome.completed >= outcome.requested
                and outcome.samples_trained >= outcome.samples_received
            )
            why = (
                "with no sample left to train: the checkpoint's simulations were all trained (raise "
                "data.simulations, or data.train_simulations, for more); no checkpoint was written"
                if ran_out
                else "where training had ended already (raise trainer.max_epochs or trainer.max_steps to train longer)"
            )
            problem = f"no batch was trained in this fit: it resumed at step {trainer.global_step}, {why}"
        if problem is not None:
            from engage.core.online.outcome import OnlineRunFailed

            raise OnlineRunFailed(f"online run failed: {problem}; {outcome.line()}")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        dm = self._datamodule(trainer)
        if dm is not None and self._recorded is None:
            # this rank's: the others may never get here, so their counts cannot be added up; under
            # distributed training they are said and recorded as this rank's (online/rank0/...)
            self._record(trainer, dm, dm.outcome(), rank=getattr(dm, "rank", 0), ranks=getattr(dm, "world_size", 1))

    def _record(self, trainer: pl.Trainer, dm: Any, outcome: Any, rank: int = 0, ranks: int = 1) -> Any:
        self._recorded = outcome
        metrics = outcome.metrics()
        if ranks > 1:
            log.info("rank %d of %d: %s", rank, ranks, outcome.line())
            metrics = {name.replace("online/", f"online/rank{rank}/", 1): value for name, value in metrics.items()}
        else:
            log.info("%s", outcome.line())
        if trainer.is_global_zero:
            from lightning.pytorch.loggers import MLFlowLogger

            for logger in trainer.loggers:
                if isinstance(logger, MLFlowLogger):
                    for name, value in metrics.items():
                        logger.experiment.log_metric(logger.run_id, name, value, step=trainer.global_step)
        return outcome
