"""Progress of online training in Lightning's progress bar and logger."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl


class OnlineProgress(pl.Callback):
    """Shows buffer fill, simulations running/finished/failed and samples/s in the progress bar,
    and logs the fraction of step time spent waiting for data; under distributed training, rank
    0's own, as ``online/rank0/...``.

    :class:`~engage.core.online.datamodule.OnlineDataModule` adds it to the trainer by itself.

    Logging through Lightning costs about a millisecond a metric, more than a small model's whole
    step, so the metrics are logged after the first step, then every ``log_every_n_steps`` steps
    (default: the trainer's ``log_every_n_steps``), and in between only when a simulation started,
    finished or failed, or ``max_interval_s`` passed since the last time: the counts shown are never
    behind a simulation, and a run of thousands of short steps pays for a few hundred logs.

    Example::

        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[OnlineProgress()], logger=False, enable_progress_bar=False)
    """

    #: what it shows that counts things (a progress bar shows them as integers)
    INTEGER_METRICS = ("online/run", "online/done", "online/given_up", "online/smp/s")

    def __init__(self, log_every_n_steps: int | None = None, max_interval_s: float = 1.0):
        if log_every_n_steps is not None and log_every_n_steps < 1:
            raise ValueError(f"OnlineProgress log_every_n_steps must be >= 1 or None, got {log_every_n_steps}")
        self.log_every_n_steps = log_every_n_steps
        self.max_interval_s = float(max_interval_s)
        self._wait_at_start = 0.0
        self._fit_started = 0.0
        self._logged_at = -math.inf
        self._counts: tuple[float, ...] | None = None

    @staticmethod
    def _datamodule(trainer: pl.Trainer) -> Any:
        dm = getattr(trainer, "datamodule", None)
        return dm if dm is not None and hasattr(dm, "buffer") and hasattr(dm, "scheduler") else None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_started = time.perf_counter()
        dm = self._datamodule(trainer)
        self._wait_at_start = dm.buffer.wait_seconds if dm is not None else 0.0
        self._logged_at, self._counts = -math.inf, None

    def _due(self, trainer: pl.Trainer, stats: dict[str, float], now: float) -> bool:
        counts = (stats.get("running", 0.0), stats.get("finished", 0.0), stats.get("failed", 0.0))
        every = self.log_every_n_steps or max(1, trainer.log_every_n_steps)
        due = counts != self._counts or trainer.global_step % every == 0 or now - self._logged_at >= self.max_interval_s
        self._counts = counts
        return due

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        dm = self._datamodule(trainer)
        if dm is None:
            return
        stats = dm.stats()
        now = time.perf_counter()
        if not self._due(trainer, stats, now):
            return
        self._logged_at = now
        elapsed = max(now - self._fit_started, 1e-9)
        shown = {
            "buf": stats["buffer_fill"],
            "run": stats.get("running", 0.0),
            "done": stats.get("finished", 0.0),
            "given_up": stats.get("failed", 0.0),  # after their retries: simulations_given_up at the end
            "smp/s": stats.get("samples_per_s", 0.0),
        }
        # under distributed training these are rank 0's own counts (adding up every rank's at each
        # step would cost a collective): named so (online/rank0/done)
        prefix = f"online/rank{dm.rank}/" if getattr(dm, "world_size", 1) > 1 else "online/"
        for name, value in shown.items():
            pl_module.log(f"{prefix}{name}", value, prog_bar=True, on_step=True, on_epoch=False, rank_zero_only=True)
        pl_module.log(
            f"{prefix}data_wait_frac",
            (dm.buffer.wait_seconds - self._wait_at_start) / elapsed,
            on_step=True,
            on_epoch=False,
            rank_zero_only=True,
        )
