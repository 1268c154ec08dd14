"""Live progress of a sweep's jobs: a rich bar on a terminal; elsewhere (a log, a batch job's
output) one log line per ended job, and the counts every ``heartbeat_s`` while jobs run.

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
from collections.abc import Callable, Collection
from typing import Any

log = logging.getLogger("engage.deploy.sweep")


class SweepProgress:
    """Counts the jobs of one launch as they start and end, and shows them.

    ``live``: a rich progress bar on standard error (default: when it is a terminal); otherwise
    each ended job is one log line with its status, duration and the counts so far, and every
    ``heartbeat_s`` without one, a line with the counts and the time since the launch began.
    ``queued``: for a batch system, which of the started jobs are still pending in its queue
    (their indices); they count as ``queued``, not ``running``.
    """

    def __init__(
        self,
        total: int,
        live: bool | None = None,
        heartbeat_s: float = 30.0,
        queued: Callable[[], Collection[int]] | None = None,
    ) -> None:
        self.total = total
        self.heartbeat_s = heartbeat_s
        self._queued = queued
        self._began = time.monotonic()
        self._last_line = self._began
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
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
        elif self.total and self.heartbeat_s > 0:
            self._heartbeat = threading.Thread(target=self._beat, name="engage-progress", daemon=True)
            self._heartbeat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _beat(self) -> None:
        """The counts, logged when no line was for ``heartbeat_s``, until the launch ends."""
        while not self._stop.wait(min(self.heartbeat_s, 1.0)):
            now = time.monotonic()
            if now - self._last_line < self.heartbeat_s:
                continue
            self._last_line = now
            elapsed = int(now - self._began)
            log.info(
                "engage launcher: %s, %d waiting (%dm%02ds)",
                self._detail(),
                self.counts()["waiting"],
                elapsed // 60,
                elapsed % 60,
            )

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
            self._last_line = time.monotonic()
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
        pending = set(self._queued()) if self._queued is not None else set()
        with self._lock:
            completed = sum(1 for s in self._ended.values() if s == "COMPLETED")
            started = [i for i in self._started if i not in self._ended]
            queued = sum(1 for i in started if i in pending)
            failed = sum(1 for s in self._ended.values() if s not in ("COMPLETED", "SKIPPED"))  # skipped: never ran
            counts = {
                "completed": completed,
                "failed": failed,
                "running": len(started) - queued,
                "waiting": self.total - len(self._ended) - len(started),
            }
        if self._queued is not None:
            counts["queued"] = queued
        return counts

    def _detail(self) -> str:
        counts = self.counts()
        queued = f", {counts['queued']} queued" if "queued" in counts else ""
        return f"{counts['running']} running{queued}, {counts['completed']} completed, {counts['failed']} failed"

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=len(self._ended), detail=self._detail())
