"""Progress of online training in Lightning's progress bar and logger."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl


class OnlineProgress(pl.Callback):
    """Shows buffer fill, simulations running/finished/failed and samples/s in the progress bar,
    and logs the fraction of step time spent waiting for data.

    :class:`~engage.core.online.datamodule.OnlineDataModule` adds it to the trainer by itself.

    Example::

        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[OnlineProgress()], logger=False, enable_progress_bar=False)
    """

    #: what it shows that counts things (a progress bar shows them as integers)
    INTEGER_METRICS = ("online/run", "online/done", "online/fail", "online/smp/s")

    def __init__(self, log_every_n_steps: int = 1):
        self.log_every_n_steps = log_every_n_steps
        self._step_started = 0.0
        self._wait_at_start = 0.0
        self._fit_started = 0.0

    @staticmethod
    def _datamodule(trainer: pl.Trainer) -> Any:
        dm = getattr(trainer, "datamodule", None)
        return dm if dm is not None and hasattr(dm, "buffer") and hasattr(dm, "scheduler") else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = time.perf_counter()
        dm = self._datamodule(trainer)
        self._wait_at_start = dm.buffer.wait_seconds if dm is not None else 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        dm = self._datamodule(trainer)
        if dm is None or trainer.global_step % self.log_every_n_steps:
            return
        stats = dm.stats()
        elapsed = max(time.perf_counter() - self._fit_started, 1e-9)
        shown = {
            "buf": stats["buffer_fill"],
            "run": stats.get("running", 0.0),
            "done": stats.get("finished", 0.0),
            "fail": stats.get("failed", 0.0),
            "smp/s": stats.get("samples_per_s", 0.0),
        }
        for name, value in shown.items():
            pl_module.log(f"online/{name}", value, prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)
        pl_module.log(
            "online/data_wait_frac",
            (dm.buffer.wait_seconds - self._wait_at_start) / elapsed,
            on_step=True,
            on_epoch=False,
            rank_zero_only=True,
        )
