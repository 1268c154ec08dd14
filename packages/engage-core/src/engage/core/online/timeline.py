"""The timeline of a run's simulations, heard through the simulation event hooks and plotted in MLflow."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engage.core.events import RunRecord, SimulationRecord
from engage.core.hookspecs import hookimpl

#: where the plot goes among the run's artifacts
ARTIFACT = "online/simulation_timeline.png"
#: the buffer's fill is kept at most this often (seconds), so a long run keeps a bounded curve
FILL_RESOLUTION_S = 0.1


@dataclass
class Span:
    """One attempt of one simulation, from its start to its end (``None`` while it runs)."""

    simulation_id: int
    attempt: int
    started: float
    ended: float | None = None
    status: str = "running"
    samples: int = 0


class SimulationTimeline:
    """A plugin object that observes one run's simulations through the event hooks and, when the
    run ends, logs ``online/simulation_timeline.png`` to its MLflow run: each attempt of each
    simulation as a bar from its start to its end (finished, failed, or still running when the
    run ended) and the training buffer's fill over the same time axis.

    ``engage run`` registers one on the plugin manager for its MLflow run (global rank 0, which
    sees its own share of the simulations under DDP) and unregisters it afterwards; anything that
    holds a plugin manager can do the same.

    Example::

        >>> from types import SimpleNamespace
        >>> from engage.core.plugins import new_plugin_manager
        >>> timeline = SimulationTimeline(log_figure=None, run_id="r1", clock=iter(range(10)).__next__)
        >>> manager = new_plugin_manager([("timeline", timeline)], installed=False)
        >>> record = SimpleNamespace(simulation_id=3, attempt=0)
        >>> manager.hook.engage_simulation_started(record=record)
        []
        >>> manager.hook.engage_samples_arrived(simulation_id=3, count=5, buffer_size=5)
        []
        >>> manager.hook.engage_simulation_finished(record=record)
        []
        >>> timeline.spans()
        [Span(simulation_id=3, attempt=0, started=0, ended=2, status='finished', samples=5)]
    """

    def __init__(
        self,
        log_figure: Callable[[str, Any, str], Any] | None,
        run_id: str,
        *,
        title: str = "simulations of the run",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log_figure = log_figure
        self.run_id = run_id
        self.title = title
        self._clock = clock
        self._lock = threading.Lock()
        self._spans: dict[tuple[int, int], Span] = {}
        #: simulation id -> its attempts not ended, by start: samples go to the last one (a lookup
        #: per flush, whatever the number of simulations the run has had)
        self._running: dict[int, dict[int, Span]] = {}
        self._fill: list[tuple[float, int]] = []

    # ------------------------------------------------------------------ events
    @hookimpl
    def engage_simulation_started(self, record: SimulationRecord) -> None:
        with self._lock:
            span = Span(record.simulation_id, record.attempt, self._clock())
            self._spans[(record.simulation_id, record.attempt)] = span
            self._running.setdefault(record.simulation_id, {})[record.attempt] = span

    @hookimpl
    def engage_samples_arrived(self, simulation_id: int, count: int, buffer_size: int) -> None:
        now = self._clock()
        with self._lock:
            running = self._running.get(simulation_id)
            if running:
                next(reversed(running.values())).samples += count
            if self._fill and now - self._fill[-1][0] < FILL_RESOLUTION_S:
                self._fill[-1] = (self._fill[-1][0], buffer_size)
            else:
                self._fill.append((now, buffer_size))

    @hookimpl
    def engage_simulation_finished(self, record: SimulationRecord) -> None:
        self._end(record, "finished")

    @hookimpl
    def engage_simulation_failed(self, record: SimulationRecord, error: str) -> None:
        self._end(record, "failed")

    @hookimpl
    def engage_run_finished(self, record: RunRecord) -> None:
        if record.run_id != self.run_id or self._log_figure is None or not self.spans():
            return
        self._log_figure(self.run_id, self.figure(), ARTIFACT)

    def _end(self, record: SimulationRecord, status: str) -> None:
        now = self._clock()
        with self._lock:
            span = self._spans.get((record.simulation_id, record.attempt))
            if span is None:  # started before this observer was registered
                span = self._spans[(record.simulation_id, record.attempt)] = Span(
                    record.simulation_id, record.attempt, now
                )
            span.ended, span.status = now, status
            attempts = self._running.get(record.simulation_id, {})
            attempts.pop(record.attempt, None)
            if not attempts:
                self._running.pop(record.simulation_id, None)

    # ------------------------------------------------------------------ results
    def spans(self) -> list[Span]:
        """Every attempt heard of, by start time."""
        with self._lock:
            return sorted(self._spans.values(), key=lambda s: (s.started, s.simulation_id, s.attempt))

    def figure(self) -> Any:
        """The timeline as a matplotlib ``Figure``: attempts above, the buffer's fill below."""
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        spans = self.spans()
        with self._lock:
            fill = list(self._fill)
        origin = min([s.started for s in spans] + [t for t, _ in fill])
        end = max([s.ended or s.started for s in spans] + [t for t, _ in fill])
        colours = {"finished": "tab:green", "failed": "tab:red", "running": "tab:gray"}
        figure = Figure(figsize=(9, 6), layout="constrained")
        bars, buffer = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
        for status, colour in colours.items():
            mine = [s for s in spans if s.status == status]
            if not mine:
                continue
            bars.barh(
                [s.simulation_id for s in mine],
                [(s.ended if s.ended is not None else end) - s.started for s in mine],
                left=[s.started - origin for s in mine],
                height=0.8,
                color=colour,
                label=f"{status} ({len(mine)})",
            )
        bars.set_ylabel("simulation id")
        bars.yaxis.set_major_locator(MaxNLocator(integer=True))  # ids: no tick between two
        counts = Counter(s.status for s in spans)
        bars.set_title(  # on two lines: a sweep job's run name is long
            f"{self.title}\nattempts: {counts['finished']} finished, {counts['failed']} failed, "
            f"{counts['running']} running at the end"
        )
        bars.legend(loc="upper left")
        if fill:
            buffer.step([t - origin for t, _ in fill], [n for _, n in fill], where="post", color="tab:blue")
        buffer.set_ylabel("samples in the buffer")
        buffer.set_ylim(bottom=0)  # a fill read against an empty buffer
        buffer.yaxis.set_major_locator(MaxNLocator(integer=True))
        buffer.set_xlabel("time since the first simulation started (s)")
        return figure
