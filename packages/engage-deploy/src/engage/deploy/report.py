"""Signals and the report of one launch: SIGTERM becomes :class:`SweepInterrupted`, and the counts
and incidents of the launch end as ``sweep.json`` and a few log lines.

Example::

    >>> report = SweepReport(completed=2, failed=1, retried=1)
    >>> report.line()
    '2 completed, 1 failed, 1 retries'
    >>> report.parent_status()
    'FAILED'
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("engage.deploy.sweep")


class SweepInterrupted(KeyboardInterrupt):
    """The launcher received SIGTERM (or Ctrl-C): running jobs are stopped and marked KILLED."""


@dataclass
class SweepReport:
    """Counts and incidents of one launch (also in ``sweep.json``)."""

    completed: int = 0
    failed: int = 0
    skipped: int = 0
    resumed: int = 0
    retried: int = 0
    killed: int = 0
    server_restarts: int = 0
    offline_jobs: list[int] = field(default_factory=list)
    uploaded_runs: int = 0
    warnings: list[str] = field(default_factory=list)
    #: what ended the launch outside its jobs (a provider that failed to deploy, a store that
    #: failed), in one line; ``None`` when the launch itself went through
    error: str | None = None

    def line(self) -> str:
        """The counts, as the launcher's last line says them."""
        parts = [f"{self.completed} completed", f"{self.failed} failed"]
        if self.resumed:
            parts.append(f"{self.resumed} already done (resumed)")
        if self.skipped:
            parts.append(f"{self.skipped} not started (fail_fast)")
        if self.retried:
            parts.append(f"{self.retried} retries")
        return ", ".join(parts)

    def parent_status(self) -> str:
        """The status of the sweep's own MLflow run: FAILED when a job failed or was not started,
        or the launch itself failed, KILLED when interrupted, else FINISHED."""
        if self.failed or self.skipped or self.error:
            return "FAILED"
        return "KILLED" if self.killed else "FINISHED"

    def log(self, folder: Any, mlflow_where: str | None) -> None:
        """The launch's closing lines: counts, where MLflow has it, server incidents, warnings."""
        log.info("engage launcher: %s; experiment folder %s", self.line(), folder)
        if mlflow_where:
            log.info("engage launcher: MLflow %s", mlflow_where)
        if self.server_restarts:
            log.warning(
                "engage launcher: the MLflow server died %d time(s) and was restarted; %d job record(s) kept "
                "offline meanwhile, %d run(s) uploaded or completed",
                self.server_restarts,
                len(self.offline_jobs),
                self.uploaded_runs,
            )
        for warning in self.warnings:
            log.warning("engage launcher: %s", warning)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While inside, SIGTERM raises :class:`SweepInterrupted` in the main thread (elsewhere: no
    change); the previous handler is put back on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SweepInterrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
