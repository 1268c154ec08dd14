"""The process fleet: simulations started through an executor, watched, retried or given up.

The fleet keeps the simulations waiting to (re)start, in order, and those running, by id and by
connection. It judges liveness (a process that exited without ``DONE``, one that never connected,
one that went silent) and decides whether a failed simulation runs again, resuming after the
samples held, or is given up. It never reads the socket and never touches the buffer.

Example::

    >>> from engage.core.executors import LocalExecutor
    >>> fleet = Fleet(LocalExecutor(), concurrency=2, retries=1)
    >>> fleet.running, fleet.has_room()
    (0, True)
"""

from __future__ import annotations

import copy
import os
import pickle
import pickletools
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from engage.core.executors import Executor, LaunchRequest, SimulationProcess
from engage.core.forkserver import PYTHONPATH_ENV
from engage.core.online.config import OnlineDataConfig as _D
from engage.core.online.link import PARENT_PID_ENV
from engage.core.online.record import SimulationRecord
from engage.core.online.security import RunKeys
from engage.core.simulators.base import Simulator


class LaunchFailed(Exception):
    """An attempt whose process could not be started (an ``OSError``: no file descriptor or
    process left): it fails as one that died would, retried or given up, never the scheduler."""

    def __init__(self, active: Running, reason: str) -> None:
        super().__init__(reason)
        self.active, self.reason = active, reason


@dataclass
class Running:
    """A simulation whose process runs (or is being reaped), with its connection and credit."""

    record: SimulationRecord
    #: the record's unit-cube point as the buffer stores it with each sample
    unit: np.ndarray
    process: SimulationProcess | None = None
    identity: bytes | None = None
    credits: int = 0
    accepted: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    #: when it last sent a sample, or was granted credit holding none: a simulation that holds
    #: credit shows it lives by its samples, not by heartbeats alone (a solver stuck while a
    #: thread of its program still answers)
    progress_at: float = field(default_factory=time.monotonic)
    exited_at: float | None = None
    done: bool = False
    #: the buffer slots granted to a simulation writing into shared memory, in the order it fills
    #: them (None: it sends its samples over the socket)
    slots: deque[int] | None = None
    #: the ZAP User-Id its messages must carry (None: the socket does not authenticate, ``ipc``)
    user_id: str | None = None

    def resumable(self) -> SimulationRecord:
        """A copy of this simulation's record as a new process starts it: after the samples held."""
        record = SimulationRecord.from_dict(self.record.to_dict())
        record.resume_from = record.samples_received = self.accepted
        return record


@dataclass
class Verdicts:
    """What one look at the fleet found: simulations to fail (with the reason), to send a
    heartbeat, and finished ones whose process is gone."""

    failed: list[tuple[Running, str]] = field(default_factory=list)
    beat: list[Running] = field(default_factory=list)
    gone: list[Running] = field(default_factory=list)


class Fleet:
    """Starts simulation processes through ``executor``, at most ``concurrency`` at a time."""

    def __init__(
        self,
        executor: Executor,
        *,
        concurrency: int = _D.concurrency,
        retries: int = _D.retries,
        heartbeat_interval: float = _D.heartbeat_interval,
        heartbeat_timeout: float = _D.heartbeat_timeout,
        startup_timeout: float = _D.startup_timeout,
        log_dir: str | None = None,
        launch_command: Callable[[str, int, int], list[str]] | None = None,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.executor = executor
        self.concurrency, self.retries = concurrency, retries
        self.heartbeat_interval, self.heartbeat_timeout = heartbeat_interval, heartbeat_timeout
        self.startup_timeout = startup_timeout
        #: how long a process that exited without DONE may stay quiet before it counts as failed
        self.exit_grace = max(1.0, heartbeat_interval)
        self.log_dir = log_dir
        #: the run's keys: each process is issued its own when it starts (None: ``ipc``)
        self.keys: RunKeys | None = None
        self.launch_command = launch_command
        self.queue: deque[SimulationRecord] = deque()  # simulations waiting to (re)start
        self.active: dict[int, Running] = {}
        self._by_identity: dict[bytes, Running] = {}
        self._last_beat = 0.0

    @property
    def running(self) -> int:
        """Simulations started and not done. Read from any thread (the progress bar reads it from
        the training loop while the scheduler thread starts and ends simulations): it counts over
        a copy of :attr:`active`, taken at once under the GIL."""
        return sum(1 for a in list(self.active.values()) if not a.done)

    def has_room(self) -> bool:
        return self.running < self.concurrency

    @property
    def idle(self) -> bool:
        """Nothing waits to start and nothing runs."""
        return not self.queue and not self.active

    def start(self, record: SimulationRecord, address: str) -> Running:
        """Start ``record``'s process, told where the trainer listens and, through its
        environment, its keys."""
        record.status, record.started_at = "running", time.time()
        record.samples_received = record.resume_from
        active = Running(record, np.asarray(record.unit, dtype=np.float32), accepted=record.resume_from)
        sim_id, attempt = record.simulation_id, record.attempt
        if self.launch_command is not None:
            command = list(self.launch_command(address, sim_id, attempt))
        else:
            command = [sys.executable, "-m", "engage.core.online.client", "--address", str(address)]
            command += ["--simulation-id", str(sim_id), "--attempt", str(attempt)]
        env = {PARENT_PID_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        if self.executor.shares_filesystem:
            env[PYTHONPATH_ENV] = trainer_import_path()
        secrets: dict[str, str] = {}
        if self.keys is not None:
            # a file the process reads where it shares this host's files (its path in the
            # environment); else, or where its environment is private, the keys themselves,
            # which no command line may carry
            to_file = self.executor.shares_filesystem and not self.executor.keys_in_environment
            issued = self.keys.issue(sim_id, attempt, to_file=to_file)
            (env if issued.path is not None else secrets).update(self.keys.environment(issued))
            active.user_id = issued.user_id
        try:
            request = LaunchRequest(command, sim_id, attempt, env=env, log_dir=self.log_dir, secrets=secrets)
            active.process = self.executor.start(request)
        except OSError as exc:
            raise LaunchFailed(active, f"could not be started: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._revoke(active)
            raise
        record.host = active.process.host
        self.active[sim_id] = active
        return active

    def connected(self, identity: bytes, active: Running) -> None:
        active.identity = identity
        active.last_seen = time.monotonic()
        self._by_identity[identity] = active

    def by_identity(self, identity: bytes) -> Running | None:
        return self._by_identity.get(identity)

    def expects(self, simulation_id: int, attempt: int) -> Running | None:
        """The running simulation a ``HELLO`` for ``simulation_id`` and ``attempt`` belongs to."""
        active = self.active.get(simulation_id)
        if active is None or active.record.attempt != attempt or active.done or active.identity is not None:
            return None
        return active

    def starting(self, user_id: str) -> Running | None:
        """The attempt the key of ``user_id`` was issued to, while it has not connected yet."""
        return next(
            (a for a in self.active.values() if a.user_id == user_id and a.identity is None and not a.done), None
        )

    def connections(self) -> list[Running]:
        """Simulations connected and still sending."""
        return [a for a in self.active.values() if a.identity is not None and not a.done]

    def inspect(self) -> Verdicts:
        """Look at every process: which failed (exited without ``DONE``, never connected, went
        silent), which are due a heartbeat, which finished ones are gone."""
        now = time.monotonic()
        beat = now - self._last_beat >= self.heartbeat_interval
        if beat:
            self._last_beat = now
        verdicts = Verdicts()
        for active in list(self.active.values()):
            code = active.process.poll() if active.process is not None else None
            if active.done:
                # finished: let it exit on its own, then forget it
                if code is not None or now - active.last_seen > 10:
                    if code is None and active.process is not None:
                        active.process.kill()
                    verdicts.gone.append(active)
                continue
            if code is not None:
                # messages sent just before exiting may still be on their way (a slow link drains a
                # socket buffer for a while): decide once the connection has been quiet a moment
                active.exited_at = active.exited_at or now
                if now - max(active.exited_at, active.last_seen) > self.exit_grace:
                    how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
                    # a batch system's job says how it ended (its state: CANCELLED, TIMEOUT, ...)
                    ended = getattr(active.process, "ended", "")
                    if ended:  # FAILED: its script's own exit code, which Slurm kept
                        how = f"ended {ended}" + (f" with exit code {code}" if ended.startswith("FAILED") else "")
                    verdicts.failed.append((active, f"process {how} after {active.accepted} samples"))
                continue
            if active.identity is None:
                if active.process is not None and active.process.starting:
                    active.last_seen = now  # queued by its executor: the start-up clock has not begun
                elif now - active.last_seen > self.startup_timeout:
                    verdicts.failed.append((active, f"did not connect within {self.startup_timeout:g}s"))
            elif now - active.last_seen > self.heartbeat_timeout:
                verdicts.failed.append((active, f"silent for {now - active.last_seen:.1f}s (heartbeat timeout)"))
            elif active.credits > 0 and now - active.progress_at > self.heartbeat_timeout:
                verdicts.failed.append(
                    (
                        active,
                        f"no sample for {now - active.progress_at:.1f}s while holding credit for {active.credits} "
                        "(heartbeat timeout: heartbeats alone do not count while a simulation may send)",
                    )
                )
            elif beat:
                verdicts.beat.append(active)
        return verdicts

    def _revoke(self, active: Running) -> None:
        if self.keys is not None and active.user_id is not None:
            self.keys.revoke(active.record.simulation_id, active.record.attempt)

    def forget(self, active: Running) -> None:
        """The attempt is over: its key no longer authenticates."""
        self._revoke(active)
        self.active.pop(active.record.simulation_id, None)
        if active.identity is not None:
            self._by_identity.pop(active.identity, None)

    def failed(self, active: Running, reason: str) -> SimulationRecord | None:
        """Kill and forget a failed simulation; the record of its retry (queued), or None when it
        is given up."""
        rec = active.record
        if active.process is not None:
            # where it ran, when it died before it could say so itself (a node that failed)
            rec.host = rec.host or active.process.host
            active.process.kill()
            rec.stderr_tail = active.process.stderr_tail()
        self.forget(active)
        rec.status, rec.ended_at, rec.error = "failed", time.time(), reason
        rec.failures += 1
        if rec.failures > self.retries:
            return None
        retry = active.resumable()
        retry.next_attempt()
        self.queue.append(retry)
        return retry

    def stop_all(self) -> list[Running]:
        """Kill every process (the run ends); the simulations that had not finished, whose
        records go back to the front of the queue."""
        unfinished = []
        for active in list(self.active.values()):
            if active.process is not None:
                active.process.kill()
            if not active.done:
                unfinished.append(active)
        for active in reversed(unfinished):
            self.queue.appendleft(active.resumable())
        everything = list(self.active.values())
        for active in everything:
            self._revoke(active)
        self.active.clear()
        self._by_identity.clear()
        return everything

    def pending(self) -> list[SimulationRecord]:
        """Every simulation still to run, as records a checkpoint holds: those waiting, then
        those running (from the samples they sent)."""
        return list(self.queue) + [a.resumable() for a in list(self.active.values()) if not a.done]


def _picklable(value: object) -> bool:
    try:
        pickle.dumps(value)
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def _from_main(payload: bytes) -> bool:
    """Whether the pickle ``payload`` names a class or function of ``__main__``."""
    strings: list[str] = []
    for op, arg, _ in pickletools.genops(payload):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2 and strings[-2] == "__main__":
            return True
        elif op.name == "GLOBAL" and str(arg).split(" ")[0] == "__main__":
            return True
    return False


def pickled_simulator(simulator: Simulator, workdir: str) -> dict[str, str]:
    """The launch spec of a simulator built in Python without an import description: the
    simulator pickled into a file of ``workdir``, which local processes load (remote executors
    need an import description)."""
    path = os.path.join(workdir, "simulator.pkl")
    try:
        try:
            payload = pickle.dumps(simulator)
        except (pickle.PicklingError, AttributeError, TypeError):
            # private attributes are, by convention, caches a simulator rebuilds when None
            # (e.g. a factorised solver): send a copy without the ones that cannot travel
            clone = copy.copy(simulator)
            for name, value in vars(clone).items():
                if name.startswith("_") and not _picklable(value):
                    setattr(clone, name, None)
            payload = pickle.dumps(clone)
        if _from_main(payload):
            raise ValueError(
                f"{type(simulator).__name__} uses what the script being run defines (__main__), which its "
                "processes (each a fresh interpreter) cannot import; move it to a module on PYTHONPATH, or pass "
                "simulator_spec={'target': 'module.Class', 'kwargs': {...}}"
            )
        with open(path, "wb") as f:
            f.write(payload)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ValueError(
            f"{type(simulator).__name__} cannot be sent to its processes ({exc}); pass simulator_spec="
            f"{{'target': 'module.Class', 'kwargs': {{...}}}} or use a module-level function"
        ) from None
    return {"pickle": path}


def trainer_import_path() -> str:
    """The ``PYTHONPATH`` of a simulation process on this host: the trainer's own, after the
    folder its script was started from, where the trainer imported its modules from (a
    simulator in a module beside a user's script, started from another folder), which a fresh
    interpreter started with ``-m`` would not look in."""
    first = sys.path[0] if sys.path and sys.path[0] else os.getcwd()
    return os.pathsep.join(p for p in [os.path.abspath(first), os.environ.get(PYTHONPATH_ENV, "")] if p)
