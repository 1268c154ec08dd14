"""The simulation scheduler: keeps simulations running and their samples flowing into the buffer.

One background thread reads the socket of an :mod:`.endpoint` (the ``ROUTER`` socket, its keys
and shared memory) and wires the run's collaborators, each a module with one job:
:mod:`.steering` asks the sampler for the next simulations and tells it of settled ones;
:mod:`.fleet` starts their processes through an executor, watches them and decides retries;
:mod:`.messages` acts on each message and :mod:`.frames` checks it against the
simulator's declaration; :mod:`.receiver` reads samples into the buffer; :mod:`.credit` grants
credit as the buffer frees up (backpressure) and hands out shared-memory slots; :mod:`.state`
counts, journals and checkpoints. The scheduler reads the socket and acts on what the others
decide. A failure of the trainer's side (the sampler, the buffer) ends the run; whatever a peer
sends fails at most that peer's simulation.

Samples reach the buffer with as few copies as the transport allows: a small sample's payload is
read from the socket straight into a buffer slot reserved for it; a large one (at least the
buffer's ``zero_copy_bytes``) stays in the memory ZeroMQ received it into, which the buffer then
keeps by reference (:mod:`.allocator` lets the next frames reuse that memory once it is freed).
Either way the batch the training step gets is the sample's only other copy.
With ``shared_memory``, the buffer's block lives in a shared-memory segment, and a simulation on
this host writes its samples into the slots its credit names (:mod:`.shared_memory`): no copy
here at all, and none in the kernel.

Example (see :class:`~engage.core.online.datamodule.OnlineDataModule` for the usual entry)::

    >>> from engage.core.simulators import HeatEquation
    >>> from engage.core.samplers import UniformSampler
    >>> sim = HeatEquation(grid=8, steps=4)
    >>> buffer = TrainingBuffer(capacity=64, policy="fifo")
    >>> scheduler = SimulationScheduler(sim, UniformSampler(sim.space), buffer, simulations=2)
    >>> scheduler.start(); batch = buffer.get_batch(8, timeout=120); scheduler.join(timeout=120)
    >>> batch["target"].shape, scheduler.finished
    ((8, 8, 8), 2)
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from typing import Any

import numpy as np
import zmq

from engage.core.executors import Executor, LocalExecutor
from engage.core.online import allocator, protocol, shared_memory
from engage.core.online.buffer import TrainingBuffer
from engage.core.online.config import OnlineDataConfig as _D
from engage.core.online.config import check_settings
from engage.core.online.credit import Credit, default_windows
from engage.core.online.endpoint import TrainerEndpoint
from engage.core.online.fleet import Fleet, LaunchFailed, pickled_simulator
from engage.core.online.frames import (
    MalformedSample,
    SampleSpec,
    check_sample,
)
from engage.core.online.journal import Journal
from engage.core.online.messages import SimulationMessages
from engage.core.online.outcome import OnlineRunFailed
from engage.core.online.protocol import Kind
from engage.core.online.receiver import SampleReceiver
from engage.core.online.state import RunState
from engage.core.online.steering import SchedulerError, Steering
from engage.core.plugins import new_plugin_manager
from engage.core.samplers.base import Sampler
from engage.core.simulators.base import Simulator

__all__ = ["MalformedSample", "SchedulerError", "SimulationScheduler", "check_sample"]

log = logging.getLogger("engage.online")

#: seconds without a start after a simulation's process could not be started
LAUNCH_PAUSE_S = 1.0
#: the largest JSON payload a peer may send (HELLO, DONE, ERROR): the protocol's own bound
_MAX_TEXT_BYTES = 64 << 10


class SimulationScheduler:
    """Runs simulations and streams their samples into ``buffer`` (see the module doc).

    ``simulations`` and ``max_samples`` bound the run (``None``: until :meth:`stop`). A failed
    simulation is retried ``retries`` times with the same parameters, resuming after the samples
    already received; then it is given up, reported to the sampler, and with
    ``on_failure="redraw"`` replaced by a new point; with ``on_failure="fail"``, once fewer than
    ``min_completed`` of the simulations can still complete, the run ends. With
    ``shared_memory`` (the default) and an executor that starts processes beside the trainer
    (``Executor.shares_memory``, as the local one does), simulations write their samples into
    the buffer's memory themselves; clients that do not ask for it use their socket.

    ``transport_security`` says who may connect (:mod:`.security`): ``"curve"`` (the default),
    only processes holding the keys the scheduler issued to each simulation attempt, each message
    checked against the attempt it claims; ``"ipc"``, for an executor whose processes run on
    this host, only processes of this OS user, through a socket file in a private folder (no
    encryption cost). Executors on other hosts always get ``"curve"``.
    """

    def __init__(
        self,
        simulator: Simulator,
        sampler: Sampler,
        buffer: TrainingBuffer,
        *,
        simulations: int | None = _D.simulations,
        max_samples: int | None = _D.max_samples,
        concurrency: int = _D.concurrency,
        retries: int = _D.retries,
        on_failure: str = _D.on_failure,
        min_completed: float = _D.min_completed,
        executor: Executor | None = None,
        journal: Journal | None = None,
        heartbeat_interval: float = _D.heartbeat_interval,
        heartbeat_timeout: float = _D.heartbeat_timeout,
        startup_timeout: float = _D.startup_timeout,
        credit_window: int | None = _D.credit_window,
        coalesce_bytes: int = _D.coalesce_bytes,
        shared_memory: bool = _D.shared_memory,
        transport_security: str = _D.transport_security,
        simulator_spec: dict[str, Any] | None = None,
        workdir: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        hooks: Any = None,
        held_out: bool = False,
    ):
        # the online config's one range check, for its settings here (its journal is an object)
        check_settings({k: v for k, v in locals().items() if k not in ("journal", "held_out")})
        self.simulator = simulator
        self.sampler = sampler
        self.buffer = buffer
        self.executor = executor or LocalExecutor()
        self.workdir = workdir or tempfile.mkdtemp(prefix="engage-online-")
        self.rank, self.world_size = rank, world_size
        #: the plugin manager's hook relay: simulation events go to every plugin that observes them
        hooks = hooks if hooks is not None else new_plugin_manager(installed=False).hook
        # the wire is little-endian
        self.spec_samples = SampleSpec(
            tuple(simulator.sample_shape), np.dtype(simulator.dtype).newbyteorder("<"), simulator.samples_per_run
        )
        window, slot_window = (
            default_windows(self.spec_samples.nbytes, buffer.capacity, concurrency)
            if credit_window is None
            else (credit_window, credit_window)
        )
        self.coalesce_bytes = int(coalesce_bytes)
        self.shared_memory = bool(shared_memory)
        self.transport_security = transport_security
        if transport_security == "ipc" and not self.executor.shares_memory:
            log.warning("data.transport_security=ipc reaches only this host; simulations elsewhere use curve")
            self.transport_security = "curve"
        self.steering = Steering(
            sampler, simulator.space, simulations=simulations, max_samples=max_samples, rank=rank, world_size=world_size
        )
        self.fleet = Fleet(
            self.executor,
            concurrency=concurrency,
            retries=retries,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            startup_timeout=startup_timeout,
            log_dir=os.path.join(self.workdir, "logs"),
            launch_command=getattr(simulator, "launch_command", None),
        )
        self.credit = Credit(buffer, window, simulator.samples_per_run, slot_window)
        self.state = RunState(journal, rank)
        #: the socket simulations reach, its keys and shared memory (made by the thread)
        self.endpoint: TrainerEndpoint | None = None
        self._thread: threading.Thread | None = None
        # held by the scheduler thread while it handles messages, and by :meth:`consistent`: a
        # checkpoint sees every counted sample in the buffer and no sample half-received
        self._lock = threading.RLock()
        #: no simulation starts before this (a pause after one that could not be started)
        self._launch_after = 0.0
        self._stop = threading.Event()
        self._bound = threading.Event()
        self.error: str | None = None
        self._started_at = time.monotonic()
        #: acts on each message of the socket, in this thread, under the lock
        self.messages = SimulationMessages(
            fleet=self.fleet, steering=self.steering, state=self.state, credit=self.credit,
            receiver=SampleReceiver(self.spec_samples, buffer, self.credit, self.state.counts), buffer=buffer,
            spec=self.spec_samples, hooks=hooks, on_failure=on_failure, min_completed=min_completed,
            simulator_spec=simulator_spec, held_out=held_out,
            job={
                "heartbeat_interval": heartbeat_interval,
                "server_timeout": max(heartbeat_timeout, 10 * heartbeat_interval),
                "coalesce_bytes": self.coalesce_bytes,
            },
        )  # fmt: skip

    # ------------------------------------------------------------------ what the run did
    journal = property(lambda self: self.state.journal)
    budget = property(lambda self: self.steering.budget)
    planned = property(lambda self: self.steering.planned)
    queue = property(lambda self: self.fleet.queue)
    active = property(lambda self: self.fleet.active)
    finished = property(lambda self: self.state.counts.finished)
    failed = property(lambda self: self.state.counts.failed)
    retried = property(lambda self: self.state.counts.retried)
    samples = property(lambda self: self.state.counts.samples)
    sample_messages = property(lambda self: self.state.counts.sample_messages)
    shared_memory_samples = property(lambda self: self.state.counts.shared_memory_samples)
    dropped_messages = property(lambda self: self.state.counts.dropped_messages)

    @property
    def max_samples(self) -> int | None:
        return self.steering.max_samples

    @max_samples.setter
    def max_samples(self, value: int | None) -> None:
        self.steering.max_samples = value

    @property
    def address(self) -> str | None:
        """Where simulations connect (once :meth:`start` returned)."""
        return self.endpoint.address if self.endpoint is not None else None

    @property
    def segment(self) -> shared_memory.SharedSegment | None:
        """The shared memory holding the buffer's samples, when it could be set up."""
        return self.endpoint.segment if self.endpoint is not None else None

    @property
    def running(self) -> int:
        return self.fleet.running

    @property
    def exhausted(self) -> bool:
        """No simulation is left to start or running."""
        return self.steering.budget_reached(self.samples) and self.fleet.idle

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the scheduler thread; returns once the socket is bound (see :attr:`address`)."""
        if self._thread is not None:
            return
        # simulations a resumed run restarts are still sending: an ordered read policy waits for them
        for record in self.fleet.queue:
            self.buffer.simulation_started(record.simulation_id)
        self._thread = threading.Thread(target=self._main, name=f"engage-scheduler-{self.rank}", daemon=True)
        self._thread.start()
        self._bound.wait(30)
        if self.error:  # it could not listen: the run ends here, with one line naming why
            raise OnlineRunFailed(self.error)

    def stop(self) -> None:
        """Stop launching, kill running simulations, and wait for the thread."""
        self._stop.set()
        self.join(timeout=30)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _max_message_bytes(self) -> int:
        """The largest frame a simulation may send: a ``SAMPLES`` message as the client fills it
        (``coalesce_bytes``, or one sample when larger), or a JSON payload; libzmq drops the
        connection of a peer that sends more, before it is buffered."""
        nbytes = self.spec_samples.nbytes
        return max(nbytes * protocol.samples_per_message(nbytes, self.coalesce_bytes), _MAX_TEXT_BYTES) + 4096

    def _main(self) -> None:
        endpoint = self.endpoint = TrainerEndpoint(self.transport_security, self.executor, self._max_message_bytes())
        messages = self.messages
        try:
            spec = self.spec_samples
            storage = None
            if self.shared_memory and self.executor.shares_memory:
                run_id = self.state.journal.run_id if self.state.journal is not None else None
                what = "buffer of the held-out simulations" if self.messages.held_out else "training buffer"
                storage = endpoint.share_memory(self.buffer.capacity * spec.nbytes, run_id, what)
            self.buffer.prepare(spec.shape, spec.dtype, self.simulator.space.dim, storage=storage)
            if not self.buffer.writes_in_place:
                # samples stay in the frames they arrived in: let the next frames reuse their memory
                allocator.retain_freed_memory(spec.nbytes, self.buffer.capacity * spec.nbytes)
            endpoint.bind()
            self.fleet.keys = endpoint.keys
            self._bound.set()
            messages.segment = endpoint.segment
            if messages.simulator_spec is None and self.fleet.launch_command is None:
                launch_spec = getattr(self.simulator, "launch_spec", None)
                spec = (launch_spec() if launch_spec else None) or pickled_simulator(self.simulator, self.workdir)
                messages.simulator_spec = spec
            self._loop(endpoint.sock)
        except Exception as exc:  # the trainer must hear about it instead of waiting forever
            cause = str(exc) if isinstance(exc, SchedulerError) else f"{type(exc).__name__}: {exc}"
            self.error = f"simulation scheduler failed: {cause}"
            log.error("%s", self.error, exc_info=not isinstance(exc, SchedulerError))
        finally:
            with self._lock:
                self._bound.set()
                try:
                    messages.flush()
                    self.credit.release_reserved()
                except Exception:  # a broken buffer must not keep the processes alive
                    log.exception("samples received last could not enter the buffer")
                for active in self.fleet.stop_all():
                    self.credit.release(active)
                self.buffer.close(self.error)
                endpoint.close()
                if self.state.journal is not None:
                    self.state.journal.close()

    def _loop(self, sock: zmq.Socket) -> None:
        messages = self.messages
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not self._stop.is_set():
            self._launch(sock)
            ready = poller.poll(20)
            with self._lock:
                if ready:
                    # drain what is there (until EAGAIN), bounded so credit and liveness checks
                    # keep running; the samples enter the buffer under one lock, with one wake-up
                    authenticated = self.fleet.keys is not None
                    for _ in range(4096):
                        try:
                            frame = sock.recv(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        # the attempt whose key the peer holds, as the ZAP handler named it
                        user = frame.get("User-Id") if authenticated else None
                        messages.handle(sock, frame.bytes, user, frame.more)
                        if messages.receiver.waiting >= 256:
                            messages.flush()
                    messages.flush()
                self.credit.grant(self.fleet.connections(), lambda active, frames: messages.send(sock, active, frames))
                if time.monotonic() - messages.last_check >= 0.01:
                    # liveness is judged in seconds: polling every process after each drain of
                    # the socket (every few samples when they stream fast) costs the receiver
                    messages.check(sock)
                if self.exhausted:
                    break
        for active in list(self.fleet.active.values()):
            messages.send(sock, active, protocol.encode_text(Kind.STOP, active.record.simulation_id, 0, "run ended"))

    # ------------------------------------------------------------------ launching
    def _launch(self, sock: zmq.Socket) -> None:
        """Start simulations while there is room, each under the lock on its own: a checkpoint
        waits for one start (a key file, an executor call), not for a whole fleet's. An attempt
        whose process cannot be started fails as one that died would."""
        fleet = self.fleet
        while not self._stop.is_set() and time.monotonic() >= self._launch_after:
            with self._lock:
                if not fleet.has_room():
                    return
                if fleet.queue:
                    record = fleet.queue.popleft()
                elif not self.steering.budget_reached(self.samples):
                    record = self.steering.new_record()
                else:
                    return
                try:
                    active = fleet.start(record, str(self.address))
                except LaunchFailed as failure:
                    self.messages.fail(sock, failure.active, failure.reason)
                    # what was short (file descriptors, processes) may come back: the next start
                    # waits a moment, and the socket is read meanwhile
                    self._launch_after = time.monotonic() + LAUNCH_PAUSE_S
                    return
                self.buffer.simulation_started(active.record.simulation_id)
                self.state.write(active.record)
                self.messages.notify(self.messages.hooks.engage_simulation_started, record=active.record)

    # ------------------------------------------------------------------ progress and state
    def stats(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self._started_at, 1e-9)
        counts = self.state.counts
        return {
            "running": float(self.running),
            "finished": float(counts.finished),
            "failed": float(counts.failed),
            "retried": float(counts.retried),
            "samples": float(counts.samples),
            "samples_per_s": counts.samples / elapsed,
            "shared_memory_samples": float(counts.shared_memory_samples),
            "dropped_messages": float(counts.dropped_messages),
        }

    def consistent(self) -> threading.RLock:
        """A lock under which the scheduler handles no message: the buffer then holds every sample
        the counters and records count (take a checkpoint's data state under it)."""
        return self._lock

    def state_dict(self) -> dict[str, Any]:
        """Counters and the record of every simulation still to run; running ones resume after the
        samples they sent (all of which are in the buffer, or were read from it). Take it under
        :meth:`consistent` together with the buffer's and the sampler's state."""
        with self._lock:
            return self.state.state_dict(self.steering, self.fleet)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` before :meth:`start`. Everything after that state is redone:
        simulations running then start again from the sample index it holds, and those started
        later are asked of the sampler (restored with it) again."""
        if self._thread is not None:
            raise RuntimeError("the scheduler state must be loaded before start()")
        self.state.load_state_dict(state, self.steering, self.fleet)
