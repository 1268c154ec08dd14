"""Lightning's rich progress bar, with counts shown as integers and log lines printed above it."""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar

from engage.core.online.progress import OnlineProgress


class _ConsoleStream(io.TextIOBase):
    """A text stream whose complete lines are printed by a rich console (above its live display)."""

    def __init__(self, console: Any):
        self._console = console
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
        return len(text)


def _console_handlers() -> list[logging.StreamHandler]:
    """The logging handlers that write to this process's terminal streams."""
    terminals = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if s is not None}
    loggers = [logging.getLogger()] + [
        logger for logger in list(logging.Logger.manager.loggerDict.values()) if isinstance(logger, logging.Logger)
    ]
    found = []
    for logger in loggers:
        for handler in logger.handlers:
            if (
                type(handler) is logging.StreamHandler  # not a FileHandler: files keep their lines
                and id(handler.stream) in terminals
                and handler not in found
            ):
                found.append(handler)
    return found


class EngageProgressBar(RichProgressBar):
    """Lightning's :class:`~lightning.pytorch.callbacks.RichProgressBar` with two changes:
    metrics that count things (``integer_metrics``, by default the online counts of
    :class:`~engage.core.online.progress.OnlineProgress`: simulations running, done, failed, and
    samples/s) are shown as integers, not ``51.000``; and while the bar is live, log records that
    would go to the terminal are printed above the bar instead of through it.

    ``engage run`` uses it unless the trainer's callbacks hold a progress bar already.

    Example::

        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[EngageProgressBar()], logger=False)
    """

    def __init__(self, integer_metrics: Iterable[str] = OnlineProgress.INTEGER_METRICS, **kwargs: Any):
        super().__init__(**kwargs)
        self.integer_metrics = frozenset(integer_metrics)
        self._redirected: list[tuple[logging.StreamHandler, Any]] = []

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        for name, value in items.items():
            # a rank's own counts (online/rank0/done under distributed training) are counts too
            if re.sub(r"^online/rank\d+/", "online/", name) in self.integer_metrics and isinstance(value, (int, float)):
                items[name] = str(round(value))  # a string is shown as it is
        return items

    def _capture_logs(self) -> None:
        if self._redirected or self.progress is None or not self.is_enabled:
            return
        stream = _ConsoleStream(self.progress.console)
        for handler in _console_handlers():
            self._redirected.append((handler, handler.stream))
            handler.setStream(stream)

    def _release_logs(self) -> None:
        while self._redirected:
            handler, stream = self._redirected.pop()
            handler.setStream(stream)

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_sanity_check_start(trainer, pl_module)
        self._capture_logs()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._capture_logs()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        self._capture_logs()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_test_start(trainer, pl_module)
        self._capture_logs()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_predict_start(trainer, pl_module)
        self._capture_logs()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._release_logs()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._release_logs()
