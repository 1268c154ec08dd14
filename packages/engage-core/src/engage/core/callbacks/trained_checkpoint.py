"""A ``ModelCheckpoint`` that saves nothing until its fit has trained a step."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class TrainedCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, except that a fit that has not trained a step since it
    started (resumed where no sample was left, or where training had ended) saves no checkpoint.

    Lightning saves at each epoch's end even when the epoch trained no batch: a resumed fit
    whose data had run out wrote ``epoch=5-step=25.ckpt`` (the step it resumed at) before ending
    in failure, and the next ``ckpt_path=last``, given more simulations, started from epoch 6,
    skipping epoch 5 without a word. Every argument is ``ModelCheckpoint``'s.

    Example::

        >>> import tempfile
        >>> callback = TrainedCheckpoint(dirpath=tempfile.mkdtemp(), save_last="link")
        >>> callback.save_last
        'link'
        >>> callback.state_key.startswith("ModelCheckpoint{")  # checkpoints of either restore into either
        True
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fit_started_at: int | None = None

    @property
    def state_key(self) -> str:
        """``ModelCheckpoint``'s own key: its state in checkpoints written before (which best and
        last files it keeps) is restored into this one, and this one's into a ``ModelCheckpoint``."""
        key = super().state_key
        return ModelCheckpoint.__qualname__ + key.removeprefix(type(self).__qualname__)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._fit_started_at = trainer.global_step

    def _trained(self, trainer: pl.Trainer) -> bool:
        return self._fit_started_at is None or trainer.global_step > self._fit_started_at

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any) -> None:
        if self._trained(trainer):
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._trained(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._trained(trainer):
            super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._trained(trainer):
            super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._trained(trainer):
            super().on_exception(trainer, pl_module, exception)
