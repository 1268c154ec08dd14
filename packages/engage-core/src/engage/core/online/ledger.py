"""Which samples were trained: batches handed to the training loop, and the steps that took them.

Lightning fetches the next batch before it trains the current one, so at a checkpoint one batch
(more with a deeper prefetch) has left the buffer without having been trained. The ledger keeps
such batches until their step starts: a checkpoint holds them, and a resumed run trains them
first, so that no sample is lost between the buffer and a step, and none is trained twice.

A checkpoint may also be written in the middle of a step (Lightning's Slurm requeue handler
saves one when the signal arrives): a batch whose step started at global step ``g`` is in the
model's weights only once the optimizer stepped (the trainer's global step passed ``g``);
until then a checkpoint holds it among the untrained ones.

Example::

    >>> import numpy as np
    >>> ledger = TrainingLedger()
    >>> batch = {"target": np.zeros((2, 3)), "parameters": np.zeros((2, 1)), "time": np.zeros((2, 1)),
    ...          "simulation_id": np.array([0, 1])}
    >>> ledger.handed_out(batch); ledger.handed_out(batch); ledger.step_started(global_step=0)
    >>> ledger.batches_trained, ledger.samples_trained, len(ledger.state_dict(global_step=1)["untrained"])
    (1, 2, 1)
    >>> len(ledger.state_dict(global_step=0)["untrained"])  # saved before the optimizer stepped
    2
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch


class TrainingLedger:
    """Batches handed out and not yet trained, in order, and the counts of those trained."""

    def __init__(self) -> None:
        self._untrained: deque[dict[str, np.ndarray]] = deque()
        #: batches whose step started, with the global step it started at, until the optimizer stepped
        self._in_step: deque[tuple[int, dict[str, np.ndarray]]] = deque()
        self.batches_trained = 0
        self.samples_trained = 0
        #: samples of batches handed to an iterator that was dropped before their step
        self.samples_discarded = 0

    def handed_out(self, batch: dict[str, np.ndarray]) -> None:
        """A batch left the buffer for the training loop."""
        self._untrained.append(batch)

    def step_started(self, global_step: int | None = None) -> None:
        """The training step of the oldest batch handed out starts (batches are trained in order),
        at the trainer's ``global_step`` (``None``: counted as trained at once)."""
        while self._in_step and (global_step is None or self._in_step[0][0] < global_step):
            self._in_step.popleft()  # the optimizer stepped since: in the weights
        if self._untrained:
            batch = self._untrained.popleft()
            self.batches_trained += 1
            self.samples_trained += len(batch["simulation_id"])
            if global_step is not None:
                self._in_step.append((global_step, batch))

    def discard_untrained(self) -> None:
        """Forget batches handed out to an iterator that was dropped (an epoch ended early),
        counting their samples."""
        self.samples_discarded += self.untrained()
        self._untrained.clear()
        self._in_step.clear()

    def untrained(self, global_step: int | None = None) -> int:
        """Samples of the batches handed out whose step has not started, and with the trainer's
        ``global_step``, of those whose step started at it or later (not in the weights yet)."""
        pending = self._pending(global_step)
        return sum(len(batch["simulation_id"]) for batch in [*pending, *self._untrained])

    def trained(self, global_step: int | None = None) -> tuple[int, int]:
        """Batches and samples in the model's weights: with the trainer's ``global_step``, those
        whose optimizer step was taken (a step Ctrl-C or a failure interrupted does not count)."""
        pending = self._pending(global_step)
        samples = sum(len(batch["simulation_id"]) for batch in pending)
        return self.batches_trained - len(pending), self.samples_trained - samples

    def _pending(self, global_step: int | None) -> list[dict[str, np.ndarray]]:
        return [batch for g, batch in self._in_step if global_step is not None and g >= global_step]

    def state_dict(
        self, global_step: int | None = None, replay: list[dict[str, np.ndarray]] | None = None
    ) -> dict[str, Any]:
        """Counts and the untrained batches' samples (tensors, for Lightning checkpoints). With
        the trainer's ``global_step``, batches whose step started at it or later (the optimizer
        has not stepped on them: a checkpoint written mid-step) count as untrained. ``replay``:
        batches an earlier checkpoint gave back that were not handed out yet, served after
        those."""
        pending = self._pending(global_step)
        batches_trained, samples_trained = self.trained(global_step)
        return {
            "samples_discarded": self.samples_discarded,
            "batches_trained": batches_trained,
            "samples_trained": samples_trained,
            "untrained": [
                {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
                for batch in [*pending, *self._untrained, *(replay or [])]
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> list[dict[str, np.ndarray]]:
        """Restore the counts; returns the untrained batches, for the buffer to serve first."""
        self.batches_trained = int(state["batches_trained"])
        self.samples_trained = int(state["samples_trained"])
        self.samples_discarded = int(state.get("samples_discarded", 0))  # not in older checkpoints
        self._untrained.clear()
        self._in_step.clear()
        return [{k: v.numpy() for k, v in batch.items()} for batch in state["untrained"]]
