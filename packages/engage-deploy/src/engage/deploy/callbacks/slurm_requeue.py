"""Requeue a Slurm job on its warning signal, every rank at the same step."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from engage.core.run import Requeued
from engage.deploy.slurm.requeue import job_id, noted_early

log = logging.getLogger("engage.deploy.slurm")


class SlurmRequeued(Requeued):
    """The job was requeued after its checkpoint: this incarnation ends, the next resumes."""


class SlurmRequeue(pl.Callback):
    """Save a checkpoint and requeue the Slurm job when it gets its warning signal
    (``sbatch --requeue --signal=USR1@90``), with every rank at the same training step.

    Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``) saves the checkpoint inside
    the signal handler. With several ranks the signal reaches each rank at a different point, and
    a rank may then enter the checkpoint's collectives while another is inside the backward
    pass's all-reduce: the collectives no longer pair up. Here the handler only notes the
    signal; after each training batch (every ``check_every_n_steps``) the ranks agree whether
    any rank got it (one all-reduce of a flag), and if so all save the HPC checkpoint
    (``hpc_ckpt_N.ckpt`` in ``default_root_dir``, which Lightning resumes from when Slurm
    starts the job again: the online DataModule's state, samples and simulations, is in it),
    rank 0 runs ``scontrol requeue``, and every rank waits for Slurm's ``SIGTERM``, then
    ends with :class:`SlurmRequeued`. When the fit ends, its HPC checkpoints are removed: under
    Slurm, Lightning restores one in any later ``validate`` or ``test`` that names no
    checkpoint, with the weights of the requeue. A requeue Slurm refuses fails the fit on every rank,
    with ``scontrol``'s words; so does a requeue after which no ``SIGTERM`` comes within
    ``wait_s`` seconds.

    The handler is installed at ``setup`` of a fit inside a Slurm job (``SLURM_JOB_ID``), before
    Lightning's (which then leaves the signal to it), and the previous one is put back at
    ``teardown``; a signal :func:`~engage.deploy.slurm.requeue.note_early` noted before counts.
    Outside Slurm the callback does nothing. Every ``engage run`` in a job Slurm may requeue has it (engage-deploy's
    ``engage_callbacks``); a Lightning script adds it to its ``Trainer``'s callbacks.

    Example::

        >>> import signal
        >>> callback = SlurmRequeue(signum=signal.SIGUSR1, check_every_n_steps=1)
        >>> callback.requested
        False
    """

    def __init__(self, signum: int = signal.SIGUSR1, check_every_n_steps: int = 1, wait_s: float = 120.0) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps is {check_every_n_steps}; give 1 or more")
        self.signum = signal.Signals(signum)
        self.check_every_n_steps = check_every_n_steps
        self.wait_s = wait_s
        self.requested = False  # set by the signal handler of this rank
        self._previous: Any = None
        self._armed = False

    def _note(self, signum: int, frame: Any) -> None:
        self.requested = True  # nothing else in a signal handler: the ranks act together later

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if (
            stage != "fit"
            or "SLURM_JOB_ID" not in os.environ
            or threading.current_thread() is not threading.main_thread()
        ):
            return
        self._previous = signal.signal(self.signum, self._note)
        self.requested = self.requested or noted_early(self.signum)  # came while the job started
        self._armed = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The fit ended: its HPC checkpoints are spent. Left in ``default_root_dir``, Lightning
        would restore the requeue's weights in every later ``validate`` or ``test`` of the job."""
        if not self._armed:
            return
        trainer.strategy.barrier("engage-requeue-done")  # every rank is past the fit's last read
        if trainer.is_global_zero:
            for spent in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
                spent.unlink(missing_ok=True)
        trainer.strategy.barrier("engage-requeue-removed")

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._armed:
            signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._armed = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if not self._armed or trainer.global_step % self.check_every_n_steps:
            return
        if trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            self._requeue(trainer)

    def _requeue(self, trainer: pl.Trainer) -> None:
        from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

        path = _CheckpointConnector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)  # every rank: the strategy writes it once
        job = job_id()
        refusal = ""
        if trainer.is_global_zero:
            try:
                done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
                refusal = (
                    "" if done.returncode == 0 else " ".join(done.stderr.split()) or f"exit code {done.returncode}"
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                refusal = str(exc) or type(exc).__name__
        refusal = trainer.strategy.broadcast(refusal, src=0)
        if refusal:
            raise RuntimeError(f"scontrol requeue {job} failed after the checkpoint {path}: {refusal}")
        log.info("engage: job %s requeued at step %d; it resumes from %s", job, trainer.global_step, path)
        deadline = time.monotonic() + self.wait_s
        while not trainer.received_sigterm:  # Slurm ends this incarnation
            if time.monotonic() > deadline:
                raise RuntimeError(f"scontrol requeue {job}: no SIGTERM from Slurm within {self.wait_s:g} s")
            time.sleep(0.1)
        raise SlurmRequeued(f"job {job} requeued at step {trainer.global_step}; it resumes from {path}")
