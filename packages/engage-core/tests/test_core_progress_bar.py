"""The progress bar of ``engage run``: counts as integers, log lines above the bar."""

import logging
import sys

import lightning.pytorch as pl
import pytest
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


def test_online_progress_logs_on_count_changes_and_every_n_steps_not_every_step():
    from types import SimpleNamespace

    from engage.core.online.progress import OnlineProgress

    counts = {"running": 2.0, "finished": 0.0, "failed": 0.0}
    buffer = SimpleNamespace(wait_seconds=0.0)
    datamodule = SimpleNamespace(buffer=buffer, scheduler=object(), stats=lambda: {"buffer_fill": 0.5, **counts})
    trainer = SimpleNamespace(datamodule=datamodule, global_step=0, log_every_n_steps=50)
    logged: list[int] = []
    names: set[str] = set()

    def log(name, *args, **kwargs) -> None:
        names.add(name)
        if name == "online/done":
            logged.append(trainer.global_step)

    module = SimpleNamespace(log=log)
    progress = OnlineProgress(max_interval_s=3600.0)
    progress.on_train_start(trainer, module)

    def run(steps):
        for _ in range(steps):
            trainer.global_step += 1
            progress.on_train_batch_end(trainer, module, None, None, 0)

    run(10)
    assert logged == [1]  # the first step, then nothing while no count changes
    # simulations given up, named as the run's simulations_given_up (not failed attempts)
    assert {"online/run", "online/done", "online/given_up", "online/smp/s"} <= names
    counts["finished"] = 1.0
    run(1)
    assert logged == [1, 11]  # a simulation finished: shown at once
    run(50)
    assert logged == [1, 11, 50]  # the trainer's log_every_n_steps
    with pytest.raises(ValueError, match="log_every_n_steps must be >= 1"):
        OnlineProgress(log_every_n_steps=0)


def test_running_can_be_read_while_the_scheduler_thread_starts_and_ends_simulations():
    """The progress bar reads the count from the training loop at every step, while the scheduler
    thread adds and removes simulations: it must never fail there."""
    import threading

    import numpy as np

    from engage.core.executors import LocalExecutor
    from engage.core.online.fleet import Fleet, Running
    from engage.core.online.record import SimulationRecord

    fleet = Fleet(LocalExecutor(), concurrency=4)
    stop = threading.Event()

    def churn():
        i = 0
        while not stop.is_set():
            for sim_id in range(i, i + 64):
                record = SimulationRecord(simulation_id=sim_id, parameters={}, ask_index=sim_id)
                fleet.active[sim_id] = Running(record, np.zeros(1))
            for sim_id in range(i, i + 64):
                fleet.active.pop(sim_id, None)
            i += 64

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        counts = [fleet.running for _ in range(20_000)]
    finally:
        stop.set()
        thread.join()
    assert all(0 <= c <= 64 for c in counts)


def test_a_verbose_run_leaves_the_libraries_debug_chatter_out_unless_named(monkeypatch):
    """hydra.verbose=true wrote 179 DEBUG lines of matplotlib's font lookups in a 4-simulation run."""
    import logging

    from engage.core.console import quiet_lightning

    for name, level in (("matplotlib", logging.NOTSET), ("PIL", logging.DEBUG)):  # PIL: hydra.verbose=[PIL]
        monkeypatch.setattr(logging.getLogger(name), "level", level)
    quiet_lightning()
    assert logging.getLogger("matplotlib").level == logging.INFO
    assert logging.getLogger("PIL").level == logging.DEBUG
