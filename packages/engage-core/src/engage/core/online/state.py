"""Journal and checkpoint state of one run: its counts, the journal's lines, and what a
checkpoint holds of the simulations.

A checkpoint's simulation state is the counts, the sampler steering's position and the record of
every simulation still to run, from the sample index each holds. Restored, it is the whole truth:
whatever happened after it (simulations that finished, samples that arrived) is done again, and
the journal, a record for people and tools, is never read back.

Example::

    >>> state = RunState(journal=None)
    >>> state.counts.finished += 1
    >>> state.counts.as_dict()["finished"]
    1
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from engage.core.online.fleet import Fleet
from engage.core.online.journal import Journal
from engage.core.online.record import SimulationRecord
from engage.core.online.steering import Steering

#: the layout of the simulation state in checkpoints
STATE_VERSION = 2


@dataclass
class Counts:
    """What one rank's run did so far."""

    finished: int = 0
    failed: int = 0  # given up after their retries
    retried: int = 0  # failed attempts that ran again
    samples: int = 0
    sample_messages: int = 0  # SAMPLE and SAMPLES messages: fewer than samples when coalesced
    shared_memory_samples: int = 0  # samples simulations wrote into the buffer's shared memory
    dropped_messages: int = 0  # from connections that belong to no simulation

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class RunState:
    """The counts of one rank's run and its journal (``None``: not journaled)."""

    def __init__(self, journal: Journal | None, rank: int = 0):
        self.journal, self.rank = journal, rank
        self.counts = Counts()

    def write(self, record: SimulationRecord, final: bool = True) -> None:
        """Journal a change of ``record``'s state (``final``: no process of it follows)."""
        if self.journal is not None:
            entry = record.to_dict()
            entry.update(rank=self.rank, final=final)
            self.journal.append(entry)

    def state_dict(self, steering: Steering, fleet: Fleet) -> dict[str, Any]:
        counts = self.counts
        return {
            "version": STATE_VERSION,
            **steering.state_dict(),
            "finished": counts.finished,
            "failed": counts.failed,
            "retried": counts.retried,
            "samples": counts.samples,
            "pending": [record.to_dict() for record in fleet.pending()],
        }

    def load_state_dict(self, state: dict[str, Any], steering: Steering, fleet: Fleet) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                "the checkpoint's simulation state was written by an older ENGAGE; resume from a checkpoint of "
                "this version or start a new run"
            )
        steering.load_state_dict(state)
        counts = self.counts
        counts.finished, counts.failed = int(state["finished"]), int(state["failed"])
        counts.retried, counts.samples = int(state["retried"]), int(state["samples"])
        fleet.queue.clear()
        for data in state["pending"]:
            record = SimulationRecord.from_dict(data)
            if record.status != "pending":
                record.next_attempt()  # a new process: the one of the checkpoint is gone
            fleet.queue.append(record)
