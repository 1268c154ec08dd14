"""The progress bar of ``engage run``: counts as integers, log lines above the bar."""

import logging
import sys

import lightning.pytorch as pl
import torch

from engage.core.callbacks import EngageProgressBar
from engage.core.callbacks.progress_bar import _ConsoleStream

log = logging.getLogger("engage.test.progress")


class Counting(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.streams = []

    def training_step(self, batch, batch_idx):
        self.log("online/done", float(batch_idx + 3), prog_bar=True)
        self.log("train/loss", 0.25, prog_bar=True)
        handler = logging.getLogger().handlers[-1]
        self.streams.append(handler.stream)
        log.warning("step %d logged", batch_idx)
        return self.layer(batch).sum()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.ones(2, 2), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_counts_are_integers_and_log_lines_go_above_the_bar(capsys):
    handler = logging.StreamHandler(sys.stdout)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        bar = EngageProgressBar()
        model = Counting()
        trainer = pl.Trainer(
            max_epochs=1, callbacks=[bar], logger=False, enable_checkpointing=False, enable_model_summary=False
        )
        trainer.fit(model)
        shown = bar.get_metrics(trainer, model)
    finally:
        root.removeHandler(handler)
    assert shown["online/done"] == "4"  # the last step's count, as an integer
    assert isinstance(shown["train/loss"], float)
    # while the bar was live, the terminal handler wrote through the bar's console; after, as before
    assert all(isinstance(stream, _ConsoleStream) for stream in model.streams)
    assert handler.stream is sys.stdout
    assert "step 1 logged" in capsys.readouterr().out
