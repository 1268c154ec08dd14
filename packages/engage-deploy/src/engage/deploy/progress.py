"""Live progress of a sweep's jobs: a rich bar on a terminal, one log line per ended job elsewhere.

Example::

    >>> progress = SweepProgress(total=2, live=False)
    >>> progress.started(0)
    >>> progress.ended(0, "COMPLETED")
    >>> progress.counts()
    {'completed': 1, 'failed': 0, 'running': 0, 'waiting': 1}
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

log = logging.getLogger("engage.deploy.sweep")


class SweepProgress:
    """Counts the jobs of one launch as they start and end, and shows them.

    ``live``: a rich progress bar on standard error (default: when it is a terminal); otherwise
    each ended job is one log line with its status, duration and the counts so far.
    """

    def __init__(self, total: int, live: bool | None = None) -> None:
        self.total = total
        self._started: dict[int, float] = {}
        self._ended: dict[int, str] = {}
        self._lock = threading.Lock()
        self._live = sys.stderr.isatty() if live is None else live
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> SweepProgress:
        if self._live and self.total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("jobs"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._bar.add_task("jobs", total=self.total, detail=self._detail())
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def started(self, index: int) -> None:
        with self._lock:
            self._started[index] = time.monotonic()
        self._refresh()

    def ended(self, index: int, status: str) -> None:
        """Job ``index`` ended with ``status`` (``COMPLETED``, ``FAILED``, ``SKIPPED``, ...)."""
        with self._lock:
            began = self._started.get(index)
            self._ended[index] = status
        took = f" in {time.monotonic() - began:.1f} s" if began is not None else ""
        counts = self.counts()
        if self._bar is None:
            log.info(
                "engage launcher: job #%d %s%s (%d of %d ended, %d failed)",
                index,
                status,
                took,
                len(self._ended),
                self.total,
                counts["failed"],
            )
        self._refresh()

    def counts(self) -> dict[str, int]:
        with self._lock:
            completed = sum(1 for s in self._ended.values() if s == "COMPLETED")
            running = sum(1 for i in self._started if i not in self._ended)
            failed = sum(1 for s in self._ended.values() if s not in ("COMPLETED", "SKIPPED"))  # skipped: never ran
            return {
                "completed": completed,
                "failed": failed,
                "running": running,
                "waiting": self.total - len(self._ended) - running,
            }

    def _detail(self) -> str:
        counts = self.counts()
        return f"{counts['running']} running, {counts['completed']} completed, {counts['failed']} failed"

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=len(self._ended), detail=self._detail())
