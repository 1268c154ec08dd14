"""The fit's last validation step, for the validation after a fit."""

from __future__ import annotations

import lightning.pytorch as pl


class LastValidation(pl.Callback):
    """The global step of the fit's last validation (``None``: none yet), so that the
    validation after the fit (``test_after_fit``) runs only where the final weights were not
    validated already, instead of logging the same point a second time.

    ``engage run`` adds it to the trainer by itself.

    Example::

        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[LastValidation()], logger=False, enable_progress_bar=False)
        >>> LastValidation.of_final_weights(trainer)  # nothing validated yet
        False
    """

    def __init__(self) -> None:
        self.step: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.step = trainer.global_step

    @staticmethod
    def of_final_weights(trainer: pl.Trainer) -> bool:
        """Whether the fit ended with a validation of its final weights."""
        return any(isinstance(c, LastValidation) and c.step == trainer.global_step for c in trainer.callbacks)
