"""Held-out validation simulations, run through the same processes as training simulations.

Validation data comes from the simulator exactly as training data does: each held-out point is
a simulation process started by the run's executor, speaking the wire protocol, so every
simulator that can train can be validated (programs in any language included), and a simulator
whose processes misbehave fails before training, not after. The samples are stored once per run
(or under ``cache_dir``, keyed by the simulator and the points, to share between runs).

Example::

    >>> from engage.core import ParameterSpace
    >>> space = ParameterSpace.from_config({"x": {"low": 0, "high": 1}})
    >>> HeldOutPoints(space, np.array([[0.25], [0.75]])).ask(2).tolist()
    [[0.25], [0.75]]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engage.core.online.buffer import BufferClosed, TrainingBuffer
from engage.core.online.outcome import OnlineRunFailed
from engage.core.samplers.base import Sampler
from engage.core.simulators.base import Simulator
from engage.core.space import ParameterSpace


class HeldOutPoints(Sampler):
    """Serves fixed ``points``, in order, once each."""

    def __init__(self, space: ParameterSpace, points: np.ndarray):
        super().__init__(space, seed=0)
        self.points = np.asarray(points, dtype=np.float64).reshape(-1, space.dim)

    def _ask(self, n: int) -> np.ndarray:
        if self.num_asked + n > len(self.points):
            raise ValueError(f"only {len(self.points)} held-out points; {self.num_asked + n} asked")
        return self.points[self.num_asked : self.num_asked + n]


#: builds a scheduler of the run's settings for ``(sampler, buffer, simulations, folder)``
SchedulerFactory = Callable[[Sampler, TrainingBuffer, int, str], "object"]


def simulate(simulator: Simulator, points: np.ndarray, make_scheduler: SchedulerFactory, folder: str) -> np.ndarray:
    """Every sample of a simulation at each of ``points``, through simulation processes:
    ``(len(points), samples_per_run, *sample_shape)``. Raises :class:`~.outcome.OnlineRunFailed`
    naming the cause when a simulation does not complete."""
    steps = simulator.samples_per_run
    if steps is None:
        raise ValueError(
            f"data.val_simulations: {type(simulator).__name__} does not declare samples_per_run, and held-out "
            "simulations need runs of a known length; set data.val_simulations=0"
        )
    n = len(points)
    fields = np.empty((n, steps, *simulator.sample_shape), dtype=np.dtype(simulator.dtype))
    buffer = TrainingBuffer(capacity=n * steps, policy="fifo", max_reads=1)
    scheduler = make_scheduler(HeldOutPoints(simulator.space, points), buffer, n, folder)
    scheduler.start()  # type: ignore[attr-defined]
    received = np.zeros((n, steps), dtype=bool)
    try:
        while (batch := buffer.get_batch(steps)) is not None:
            rows = batch["simulation_id"]
            index = np.rint(batch["time"][:, 0].astype(np.float64) * steps).astype(np.int64) - 1
            fields[rows, index] = batch["target"]
            received[rows, index] = True
    except BufferClosed:
        pass  # the scheduler's error says why
    finally:
        scheduler.stop()  # type: ignore[attr-defined]
    error = getattr(scheduler, "error", None)
    if error or not received.all():
        missing = int((~received).sum())
        raise OnlineRunFailed(
            f"held-out validation simulations failed: {error or f'{missing} of {received.size} samples missing'}"
        )
    return fields


def held_out_fields(
    simulator: Simulator, points: np.ndarray, make_scheduler: SchedulerFactory, folder: str, cache_dir: str | None
) -> np.ndarray:
    """:func:`simulate`, stored under ``cache_dir`` (any fsspec URL; else ``folder``, the run's
    own) in a file that hashes the simulator and the points, and read back from there."""
    from engage.core.data.simulated import cached_simulations

    def compute() -> np.ndarray:
        return simulate(simulator, points, make_scheduler, folder)

    return cached_simulations(simulator, points, "val", cache_dir or folder, compute=compute)
