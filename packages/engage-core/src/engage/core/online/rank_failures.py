"""How the ranks of a distributed online fit tell one another why one of them failed.

A rank whose fit fails on its own (its simulations given up, a closed buffer, an error in its
step) writes the one line that says why into its own folder; the ranks it leaves see only a lost
connection in their next collective, and read that line instead of reporting the connection.
Under ``engage run``, rank 0 says the run's cause once, ends its MLflow run FAILED and exits with
the run's code, and a rank that merely fell short leaves the report to it (see
:func:`engage.core.run.task`).

Example::

    >>> import tempfile
    >>> folders = tempfile.mkdtemp()
    >>> where = lambda rank: f"{folders}/rank{rank}"
    >>> RankFailures(where, rank=1, world_size=2).note(RuntimeError("no space left on device"))
    >>> RankFailures(where, rank=0, world_size=2).peer(wait_s=0)
    'rank 1 of 2 failed: RuntimeError: no space left on device'
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

from engage.core.online.buffer import BufferClosed
from engage.core.online.outcome import OnlineRunFailed

#: the file in its folder where a rank whose fit failed writes why
FAILURE_FILE = "failure.txt"


def peer_lost(exception: BaseException) -> bool:
    """Whether ``exception`` is another rank's failure seen from here: a collective whose peer
    closed its connection (torch's ``DistBackendError``, or gloo's own message)."""
    text = str(exception)
    return type(exception).__name__ == "DistBackendError" or (
        "gloo" in text and any(sign in text for sign in ("Connection closed by peer", "Connection reset by peer"))
    )


def other_ranks(saved: int, now: int) -> str:
    """Why a checkpoint of ``saved`` ranks' data state cannot resume on ``now`` ranks."""
    return (
        f"the checkpoint holds the data state of {saved} rank{'s' if saved != 1 else ''}; resume with as many "
        f"(trainer.devices x trainer.num_nodes = {saved}), not {now}"
    )


class RankFailures:
    """One rank's side of the handoff: :meth:`note` its own failure, :meth:`peer` another's.

    ``folder_of(rank)`` is each rank's folder of this run (``None`` while it has none); a failure
    written before this object was made (this fit set up) belongs to an earlier incarnation of the
    run, which keeps its folders when it resumes, and is not read.
    """

    def __init__(self, folder_of: Callable[[int], str | None], rank: int, world_size: int):
        self.folder_of = folder_of
        self.rank, self.world_size = rank, world_size
        self.since = time.time()

    def note(self, exception: BaseException) -> None:
        """Write this rank's one-line cause, whole, unless the failure is another rank's, seen
        here as a lost connection or told by it (``said_elsewhere``), or none of its own (Ctrl-C,
        SIGTERM, a requeue: every rank gets those). A run that fell short (:class:`OnlineRunFailed`,
        a closed buffer) is marked ``left_to_rank_zero``: rank 0 reports it."""
        folder = self.folder_of(self.rank)
        if folder is None or not isinstance(exception, Exception) or peer_lost(exception):
            return
        if type(exception).__name__ == "Requeued" or getattr(exception, "said_elsewhere", False):
            return
        short = isinstance(exception, (OnlineRunFailed, BufferClosed))
        cause = " ".join(str(exception).split()) or type(exception).__name__
        if not short:
            cause = f"{type(exception).__name__}: {cause}"
        try:
            os.makedirs(folder, exist_ok=True)
            scratch = os.path.join(folder, f".{FAILURE_FILE}.{os.getpid()}")
            with open(scratch, "w") as out:
                out.write(cause)
            os.replace(scratch, os.path.join(folder, FAILURE_FILE))  # whole, for a reader
        except OSError:
            return
        if short:
            with contextlib.suppress(AttributeError):
                exception.left_to_rank_zero = True  # type: ignore[attr-defined]

    def peer(self, processes: Sequence[subprocess.Popen] = (), wait_s: float = 5.0) -> str | None:
        """Why another rank stopped: the cause it wrote (waited for up to ``wait_s``), else how
        its process ended, among ``processes`` (ranks 1, 2, ... that this one started, as
        Lightning's launcher keeps them); ``None`` when neither is known."""
        deadline = time.monotonic() + wait_s
        while True:
            for rank in range(self.world_size):
                cause = self._written(rank) if rank != self.rank else None
                if cause:
                    return f"rank {rank} of {self.world_size} failed: {cause}"
            ended = [(i + 1, p.poll()) for i, p in enumerate(processes) if p.poll() not in (None, 0)]
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if not ended:
            return None
        rank, code = ended[0]
        how = f"exited with code {code}"
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                how = f"was killed by {signal.Signals(-code).name}"
        return f"rank {rank} of {self.world_size} stopped: its process {how}"

    def _written(self, rank: int) -> str | None:
        folder = self.folder_of(rank)
        if folder is None:
            return None
        path = os.path.join(folder, FAILURE_FILE)
        with contextlib.suppress(OSError):
            if os.path.getmtime(path) >= self.since - 1.0:  # this fit's, not an earlier incarnation's
                with open(path) as written:
                    return written.read().strip() or None
        return None
