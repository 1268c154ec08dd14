"""What an online run did, counted, and the rule that decides whether it did what it was asked.

A run that trained on fewer simulations than it asked for, or on nothing, must not end as if it
had succeeded: :meth:`OnlineOutcome.problem` says what is missing, and
:class:`OnlineRunFailed` carries it out of ``Trainer.fit`` (``engage run`` exits with
:data:`EXIT_RUN_FAILED` and marks its MLflow run FAILED).

Example::

    >>> outcome = OnlineOutcome(requested=4, completed=3, failed=2, given_up=1, samples_received=48,
    ...                         samples_trained=40, batches_trained=10, samples_unread=8)
    >>> outcome.line()
    'simulations: 4 requested, 3 completed, 2 failed, 1 given up; samples: 48 received, 40 trained, 8 never read'
    >>> OnlineOutcome(None, 3, 0, 0, 48, 40, 10, samples_untrained=8).line()
    'simulations: 3 completed, 0 failed, 0 given up; samples: 48 received, 40 trained, 8 in batches not trained'
    >>> OnlineOutcome(None, 3, 0, 0, 9, 9, 3, batches_planned=10).line()
    'simulations: 3 completed, 0 failed, 0 given up; samples: 9 received, 9 trained; batches: 3 trained of 10 planned'
    >>> outcome.problem(min_completed=1.0)
    '3 of 4 simulations completed; data.min_completed=1.0 requires 4 (1 given up after its retries)'
    >>> outcome.problem(min_completed=0.75) is None
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

#: the exit code of ``engage run`` when a run did not do what it was asked
EXIT_RUN_FAILED = 4


class OnlineRunFailed(RuntimeError):
    """An online run that did not do what it was asked; the message is one line naming why.
    ``said_elsewhere``: another rank of the run says it (this one ends without repeating it)."""

    exit_code = EXIT_RUN_FAILED

    def __init__(self, message: str, said_elsewhere: bool = False):
        super().__init__(message)
        self.said_elsewhere = said_elsewhere


@dataclass(frozen=True)
class OnlineOutcome:
    """Counts of one online run: of one rank (:meth:`OnlineDataModule.outcome`), or of every rank
    added up (:meth:`OnlineDataModule.run_outcome`, what a run is judged and reported on).

    ``requested``: simulations the run had to complete (``None`` when it is bounded by samples
    instead); ``failed`` counts failed processes, retried ones included, and ``given_up`` the
    simulations that failed for good; ``samples_trained`` the samples of batches the optimizer
    stepped on (a sample read by several batches counts in each); ``samples_unread`` the
    samples in the training buffer that no batch has read (a checkpoint keeps them for a resumed
    run); ``samples_untrained`` the samples of batches that left the buffer and reached no
    optimizer step (handed out as training ended, interrupted in their step, or dropped with an
    epoch's iterator). Read once each (``fifo``, ``firo``, ``deterministic``), the samples
    received are those trained, unread and untrained; under ``reservoir`` a sample may be
    trained in one batch and untrained in another. ``batches_planned``: the batches the trainer
    planned (``None``: no end planned); the line says how many of them were trained when the
    stream ended first.
    """

    requested: int | None
    completed: int
    failed: int
    given_up: int
    samples_received: int
    samples_trained: int
    batches_trained: int
    samples_unread: int = 0
    samples_untrained: int = 0
    batches_planned: int | None = None

    def line(self) -> str:
        """One line for the console and logs."""
        requested = "" if self.requested is None else f"{self.requested} requested, "
        short = self.batches_planned is not None and self.batches_trained < self.batches_planned
        return (
            f"simulations: {requested}{self.completed} completed, {self.failed} failed, {self.given_up} given up; "
            f"samples: {self.samples_received} received, {self.samples_trained} trained"
            + (f", {self.samples_unread} never read" if self.samples_unread else "")
            + (f", {self.samples_untrained} in batches not trained" if self.samples_untrained else "")
            + (f"; batches: {self.batches_trained} trained of {self.batches_planned} planned" if short else "")
        )

    def metrics(self) -> dict[str, float]:
        """The counts as MLflow metrics (``online/simulations_completed``, ...)."""
        names = {
            "requested": "simulations_requested",
            "completed": "simulations_completed",
            "failed": "simulations_failed",
            "given_up": "simulations_given_up",
            "samples_received": "samples_received",
            "samples_trained": "samples_trained",
            "batches_trained": "batches_trained",
            "samples_unread": "samples_unread",
            "samples_untrained": "samples_untrained",
            "batches_planned": "batches_planned",
        }
        return {f"online/{names[k]}": float(v) for k, v in asdict(self).items() if v is not None}

    def problem(self, min_completed: float, rate_limit: float | None = None) -> str | None:
        """Why this run did not do what it was asked, or ``None`` when it did; ``rate_limit``
        (``data.rate_limit``) picks the fix the line suggests."""
        if self.batches_trained == 0:
            return (
                f"no batch was trained ({self.samples_received} samples received, {self.completed} simulations "
                f"completed, {self.given_up} given up)"
            )
        if self.requested is None:
            return None
        required = math.ceil(min_completed * self.requested - 1e-9)
        if self.completed >= required:
            return None
        why = f" ({self.given_up} given up after its retries)" if self.given_up else ""
        if not self.given_up:
            why = " (training ended first: raise trainer.max_epochs or data.batches_per_epoch"
            if rate_limit is not None:  # reads per sample: fewer let training wait for the simulations
                why += ", or lower data.rate_limit; null paces training to the simulations"
            why += ")"
        return (
            f"{self.completed} of {self.requested} simulations completed; data.min_completed={min_completed} "
            f"requires {required}{why}"
        )
