"""Requeue a Slurm job on its warning signal, every rank at the same step."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from engage.core.run import Requeued
from engage.deploy.slurm.requeue import in_slurm_job, job_id, noted_early, requeueable

log = logging.getLogger("engage.deploy.slurm")


class SlurmRequeue(pl.Callback):
    """Save a checkpoint and requeue the Slurm job when it gets its warning signal
    (``sbatch --requeue --signal=USR1@90``), with every rank at the same training step.

    Lightning's own handler (``SLURMEnvironment(auto_requeue=True)``) saves the checkpoint inside
    the signal handler. With several ranks the signal reaches each rank at a different point, and
    a rank may then enter the checkpoint's collectives while another is inside the backward
    pass's all-reduce: the collectives no longer pair up. Here the handler only notes the
    signal; at every ``check_every_n_steps``-th optimizer step (the last micro-batch of a
    gradient accumulation) the ranks agree whether any rank got it (one all-reduce of a flag),
    and if so all save the HPC checkpoint (``hpc_ckpt_N.ckpt`` in ``default_root_dir``, which
    Lightning resumes from when Slurm starts the job again: the online DataModule's state,
    samples and simulations, is in it), rank 0 runs ``scontrol requeue``, and every rank waits
    for Slurm's ``SIGTERM`` (taken by a handler that only notes it: Lightning's would start a
    collective of its own), then ends with :class:`~engage.core.run.Requeued`. A requeue Slurm
    refuses fails the fit on every rank, with ``scontrol``'s words; so does a requeue after which
    no ``SIGTERM`` comes within ``wait_s`` seconds.

    HPC checkpoints are removed when the fit ends, or fails for another reason than a requeue:
    under Slurm, Lightning restores one in any later ``fit``, ``validate`` or ``test`` of the job
    that names no checkpoint (a later ``validate`` would get the weights of the requeue, a retry
    of a failed job its failed state).

    At ``setup`` of a fit inside a Slurm job (``SLURM_JOB_ID``), rank 0 asks ``scontrol``
    whether Slurm may requeue the job and tells the other ranks, so that all arm or none does;
    armed, the handler goes in before Lightning's (which then leaves the signal to it), and the
    previous one is put back at ``teardown``. A signal
    :func:`~engage.deploy.slurm.requeue.note_early` noted before counts. Outside Slurm, or in a
    job Slurm does not requeue, the callback does nothing. ``engage run`` inside a Slurm job has
    it (engage-deploy's ``engage_callbacks``); a Lightning script adds it to its ``Trainer``'s
    callbacks.

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
        self._terminated = False  # Slurm's SIGTERM, once the job is requeued
        self._previous: Any = None
        self._armed = False
        self._steps = 0  # optimizer steps seen, for check_every_n_steps

    def _note(self, signum: int, frame: Any) -> None:
        self.requested = True  # nothing else in a signal handler: the ranks act together later

    def _note_term(self, signum: int, frame: Any) -> None:
        self._terminated = True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or not in_slurm_job():
            return
        # every rank has this callback (the same environment); rank 0 alone asks slurmctld
        armed = trainer.strategy.broadcast(requeueable() if trainer.is_global_zero else False, src=0)
        if not armed or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(self.signum, self._note)
        self.requested = self.requested or noted_early(self.signum)  # came while the job started
        self._armed = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._armed:
            signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._armed = False

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._armed or (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # between the micro-batches of one optimizer step: its gradients are not saved
        self._steps += 1
        if self._steps % self.check_every_n_steps == 0 and trainer.strategy.reduce_boolean_decision(
            self.requested, all=False
        ):
            self._requeue(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The fit ended: its HPC checkpoints are spent (see the class docstring)."""
        if self._armed:
            trainer.strategy.barrier("engage-requeue-done")  # every rank is past the fit's last read
            self._remove_checkpoints(trainer)
            trainer.strategy.barrier("engage-requeue-removed")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._armed and not isinstance(exception, Requeued):
            self._remove_checkpoints(trainer)  # no collective: the other ranks may be gone

    @staticmethod
    def _remove_checkpoints(trainer: pl.Trainer) -> None:
        if trainer.is_global_zero:
            for spent in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt"):
                spent.unlink(missing_ok=True)

    def _requeue(self, trainer: pl.Trainer) -> None:
        from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

        # from here Slurm's SIGTERM only sets a flag: Lightning's handler broadcasts, which would
        # pair with this rank's collectives below
        previous_term = signal.signal(signal.SIGTERM, self._note_term)
        path = _CheckpointConnector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)  # every rank: the strategy writes it once
        job = job_id()
        refusal = ""
        if trainer.is_global_zero:
            try:
                done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
                said = " ".join(done.stderr.split()) or f"exit code {done.returncode}"
                refusal = "" if done.returncode == 0 else said
            except (OSError, subprocess.TimeoutExpired) as exc:
                refusal = str(exc) or type(exc).__name__
        refusal = trainer.strategy.broadcast(refusal, src=0)
        if refusal:
            signal.signal(signal.SIGTERM, previous_term)
            raise RuntimeError(f"scontrol requeue {job} failed after the checkpoint {path}: {refusal}")
        log.info("engage: job %s requeued at step %d; it resumes from %s", job, trainer.global_step, path)
        deadline = time.monotonic() + self.wait_s
        while not self._terminated:  # Slurm ends this incarnation
            if time.monotonic() > deadline:
                raise RuntimeError(f"scontrol requeue {job}: no SIGTERM from Slurm within {self.wait_s:g} s")
            time.sleep(0.1)
        raise Requeued(f"job {job} requeued at step {trainer.global_step}; it resumes from {path}")
