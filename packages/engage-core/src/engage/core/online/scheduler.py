"""The simulation scheduler: keeps simulations running and their samples flowing into the buffer.

One background thread owns a ZeroMQ ``ROUTER`` socket bound to an ephemeral port, starts up to
``concurrency`` simulation processes through an executor, asks the sampler for their parameters,
validates every frame they send, puts samples into the :class:`TrainingBuffer`, grants credit
as the buffer frees up (backpressure), detects crashes, silence and malformed data, retries, and
journals every change of state.

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

import copy
import logging
import math
import os
import pickle
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from engage.core.executors import Executor, LaunchRequest, LocalExecutor, SimulationProcess
from engage.core.online import allocator, protocol, shared_memory
from engage.core.online.buffer import TrainingBuffer
from engage.core.online.client import PARENT_PID_ENV
from engage.core.online.journal import Journal
from engage.core.online.protocol import Kind, ProtocolError
from engage.core.online.record import SimulationRecord
from engage.core.samplers.base import Sampler
from engage.core.simulators.base import Simulator

log = logging.getLogger("engage.online")


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


class MalformedSample(ValueError):
    """A sample frame that does not match the simulator's declaration."""


class SchedulerError(RuntimeError):
    """A failure of the trainer's side (the sampler, the buffer), never of a peer: it ends the run."""


#: unauthenticated or malformed messages from connections that belong to no simulation are
#: dropped and counted; this many are logged, then every thousandth
_LOGGED_STRANGERS = 10


def _one_line(text: str, limit: int = 500) -> str:
    """``text`` from a peer as one bounded log line (a newline in it must not forge another)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_sample(
    header: protocol.Header, payload_len: int, shape: tuple[int, ...], dtype: np.dtype, several: bool = False
) -> None:
    """Raise :class:`MalformedSample` naming what is wrong with a ``SAMPLE`` frame (``several``:
    with a ``SAMPLES`` frame)."""
    what = "samples from" if several else "sample"
    where = f"{what} {header.index} of simulation {header.simulation_id}"
    if header.shape != shape:
        raise MalformedSample(f"{where} has shape {header.shape}, the simulator declares {shape}")
    if header.dtype != dtype:
        raise MalformedSample(f"{where} has dtype {header.dtype}, the simulator declares {dtype}")
    expected = int(np.prod(shape)) * dtype.itemsize
    if several:
        if not expected or not header.nbytes or header.nbytes % expected:
            raise MalformedSample(
                f"{where}: the header says {header.nbytes} payload bytes, not a whole number of samples of "
                f"{expected} bytes"
            )
        if payload_len != header.nbytes:
            raise MalformedSample(
                f"{where} is truncated or padded: {payload_len} payload bytes, the header says {header.nbytes}"
            )
        return
    if header.nbytes != expected or payload_len != expected:
        raise MalformedSample(
            f"{where} is truncated or padded: {payload_len} payload bytes (header says {header.nbytes}), "
            f"expected {expected}"
        )


@dataclass
class _Active:
    """A simulation whose process runs (or is being reaped)."""

    record: SimulationRecord
    #: the record's unit-cube point as the buffer stores it with each sample
    unit: np.ndarray
    process: SimulationProcess | None = None
    identity: bytes | None = None
    credits: int = 0
    accepted: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    exited_at: float | None = None
    done: bool = False
    #: the buffer slots granted to a simulation writing into shared memory, in the order it fills
    #: them (None: it sends its samples over the socket)
    slots: deque[int] | None = None


class SimulationScheduler:
    """Runs simulations and streams their samples into ``buffer`` (see the module doc).

    ``simulations`` and ``max_samples`` bound the run (``None``: until :meth:`stop`). A failed
    simulation is retried ``retries`` times with the same parameters, resuming after the samples
    already received; then it is marked failed, reported to the sampler, and with
    ``on_failure="redraw"`` replaced by a new point. With ``shared_memory`` (the default) and an
    executor that starts processes beside the trainer (``Executor.shares_memory``, as the local
    one does), simulations write their samples into the buffer's memory themselves; clients that
    do not ask for it use their socket.
    """

    def __init__(
        self,
        simulator: Simulator,
        sampler: Sampler,
        buffer: TrainingBuffer,
        *,
        simulations: int | None = 16,
        max_samples: int | None = None,
        concurrency: int = 2,
        retries: int = 2,
        on_failure: str = "fail",
        min_completed: float = 1.0,
        executor: Executor | None = None,
        journal: Journal | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 30.0,
        startup_timeout: float = 120.0,
        credit_window: int | None = None,
        coalesce_bytes: int = protocol.COALESCE_BYTES,
        shared_memory: bool = True,
        simulator_spec: dict[str, Any] | None = None,
        workdir: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        hooks: Any = None,
    ):
        if on_failure not in ("fail", "redraw"):
            raise ValueError(f"on_failure must be 'fail' or 'redraw', got {on_failure!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.simulator = simulator
        self.sampler = sampler
        self.buffer = buffer
        self.budget = None if simulations is None else len(range(rank, simulations, world_size))
        self.max_samples = max_samples
        self.concurrency = concurrency
        self.retries = retries
        self.on_failure = on_failure
        #: the share of the budget that must complete: once more have failed for good, the run
        #: cannot succeed and ends at once (under ``on_failure="redraw"`` replacements run instead)
        self.min_completed = float(min_completed)
        self.executor = executor or LocalExecutor()
        self.journal = journal
        self.heartbeat_interval = heartbeat_interval
        #: how long a process that exited without DONE may stay quiet before it counts as failed
        self.exit_grace = max(1.0, heartbeat_interval)
        self.heartbeat_timeout = heartbeat_timeout
        self.startup_timeout = startup_timeout
        self.workdir = workdir or tempfile.mkdtemp(prefix="engage-online-")
        self.rank, self.world_size = rank, world_size
        self.hooks = hooks
        self.shape = tuple(simulator.sample_shape)
        self.dtype = np.dtype(simulator.dtype).newbyteorder("<")  # the wire is little-endian
        self.spec = simulator_spec
        self._nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        if credit_window is None:
            # enough samples in flight per simulation that a round trip of credit never stalls it
            # at full speed (about 16 MiB), and never fewer than 8
            credit_window = min(1024, max(8, (16 << 20) // max(1, self._nbytes)))
        if credit_window < 1:
            raise ValueError(f"credit_window must be >= 1 or None (sized from the sample), got {credit_window}")
        self.credit_window = int(credit_window)
        if coalesce_bytes < 0:
            raise ValueError(f"coalesce_bytes must be >= 0 (0: one sample per message), got {coalesce_bytes}")
        self.coalesce_bytes = int(coalesce_bytes)
        self.shared_memory = bool(shared_memory)
        #: the segment holding the buffer's samples, when ``shared_memory`` could be set up
        self.segment: shared_memory.SharedSegment | None = None
        self.address: str | None = None
        # progress counters (read by the progress callback from the training thread)
        self.next_index = 0  # fresh simulations created on this rank
        self.planned = 0  # simulations counting toward the budget
        self.finished = 0
        self.failed = 0
        self.retried = 0
        self.dropped_messages = 0  # from connections that belong to no simulation
        self.samples = 0
        self.sample_messages = 0  # SAMPLE and SAMPLES messages: fewer than samples when coalesced
        self.shared_memory_samples = 0  # samples simulations wrote into the buffer's shared memory
        self.queue: deque[SimulationRecord] = deque()  # simulations waiting to (re)start
        self.active: dict[int, _Active] = {}
        self._by_identity: dict[bytes, _Active] = {}
        self._thread: threading.Thread | None = None
        # held by the scheduler thread while it handles messages, and by :meth:`consistent`: a
        # checkpoint sees every counted sample in the buffer and no sample half-received
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._bound = threading.Event()
        self.error: str | None = None
        self._started_at = time.monotonic()
        self._last_beat = 0.0
        self._last_check = 0.0
        # samples received in the current drain of the socket, put into the buffer together:
        # arrays (kept by reference or copied) and slots written in place
        self._pending: list[tuple[np.ndarray, np.ndarray, int, float]] = []
        self._written: list[tuple[int, np.ndarray, int, float]] = []
        self._slots: list[int] = []  # reserved, not yet written
        self._arrived: dict[int, int] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the scheduler thread; returns once the socket is bound (see :attr:`address`)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name=f"engage-scheduler-{self.rank}", daemon=True)
        self._thread.start()
        self._bound.wait(30)
        if self.error:
            raise RuntimeError(self.error)

    def stop(self) -> None:
        """Stop launching, kill running simulations, and wait for the thread."""
        self._stop.set()
        self.join(timeout=30)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> int:
        return sum(1 for a in self.active.values() if not a.done)

    @property
    def exhausted(self) -> bool:
        """No simulation is left to start or running."""
        return self._budget_reached() and not self.queue and not self.active

    def _budget_reached(self) -> bool:
        if self.max_samples is not None and self.samples >= self.max_samples:
            return True
        return self.budget is not None and self.planned >= self.budget

    def _main(self) -> None:
        context = zmq.Context()
        sock = context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        try:
            self.buffer.prepare(self.shape, self.dtype, self.simulator.space.dim, storage=self._share())
            if not self.buffer.writes_in_place:
                # samples stay in the frames they arrived in: let the next frames reuse their memory
                allocator.retain_freed_memory(self._nbytes, self.buffer.capacity * self._nbytes)
            port = sock.bind_to_random_port(f"tcp://{self.executor.bind_host()}")
            self.address = f"tcp://{self.executor.bind_host()}:{port}"
            self._bound.set()
            if self.spec is None and getattr(self.simulator, "launch_command", None) is None:
                launch_spec = getattr(self.simulator, "launch_spec", None)
                self.spec = (launch_spec() if launch_spec else None) or self._pickle_simulator()
            self._loop(sock)
        except Exception as exc:  # the trainer must hear about it instead of waiting forever
            cause = str(exc) if isinstance(exc, SchedulerError) else f"{type(exc).__name__}: {exc}"
            self.error = f"simulation scheduler failed: {cause}"
            log.error("%s", self.error, exc_info=not isinstance(exc, SchedulerError))
        finally:
            self._lock.acquire()
            self._bound.set()
            try:
                self._flush()
                self.buffer.release(self._slots)
                self._slots = []
            except Exception:  # a broken buffer must not keep the processes alive
                log.exception("samples received last could not enter the buffer")
            for active in list(self.active.values()):
                if active.process is not None:
                    active.process.kill()
                self._release_slots(active)
                if not active.done:
                    self.queue.appendleft(self._resumable(active))
            self.active.clear()
            self.buffer.close(self.error)
            if self.segment is not None:
                self.segment.unlink()  # the buffer keeps its mapping; no new process may attach
            sock.close(0)
            context.term()
            self._lock.release()

    def _share(self) -> Any:
        """A shared-memory segment for the buffer's samples, or None (``shared_memory`` off, an
        executor whose processes run elsewhere, no ``/dev/shm``, or too little room in it)."""
        if not self.shared_memory or not self.executor.shares_memory or not shared_memory.available():
            return None
        import psutil

        size = self.buffer.capacity * self._nbytes
        # the segment takes its memory now, where a buffer in this process takes it as it fills:
        # never let the faster path be what runs the host out of memory
        problem = "more than half the available memory" if size > psutil.virtual_memory().available // 2 else None
        if problem is None:
            try:
                self.segment = shared_memory.SharedSegment.create(size)
            except OSError as exc:
                problem = f"{exc.strerror or exc}; enlarge /dev/shm"
        if problem is not None:
            log.warning(
                "simulations stream over sockets: no shared memory of %.1f MiB for the buffer (%s); "
                "lower data.capacity to use it",
                size / 2**20,
                problem,
            )
            return None
        log.info(
            "training buffer in shared memory %s (%.1f MiB): simulations on this host write their samples into it",
            self.segment.name,
            size / 2**20,
        )
        return self.segment.buffer

    def _pickle_simulator(self) -> dict[str, Any]:
        # Simulators built in Python without an import description reach their processes as a
        # file in the work directory (local executors only); remote executors need a spec.
        path = os.path.join(self.workdir, "simulator.pkl")
        try:
            try:
                payload = pickle.dumps(self.simulator)
            except (pickle.PicklingError, AttributeError, TypeError):
                # private attributes are, by convention, caches a simulator rebuilds when None
                # (e.g. a factorised solver): send a copy without the ones that cannot travel
                clone = copy.copy(self.simulator)
                for name, value in vars(clone).items():
                    if name.startswith("_") and not _picklable(value):
                        setattr(clone, name, None)
                payload = pickle.dumps(clone)
            with open(path, "wb") as f:
                f.write(payload)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise ValueError(
                f"{type(self.simulator).__name__} cannot be sent to its processes ({exc}); pass simulator_spec="
                f"{{'target': 'module.Class', 'kwargs': {{...}}}} or use a module-level function"
            ) from None
        return {"pickle": path}

    def _loop(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not self._stop.is_set():
            with self._lock:
                self._launch()
            ready = poller.poll(20)
            with self._lock:
                if ready:
                    # drain what is there (until EAGAIN), bounded so credit and liveness checks
                    # keep running; the samples enter the buffer under one lock, with one wake-up
                    for _ in range(4096):
                        try:
                            identity = sock.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(sock, identity)
                        if len(self._pending) + len(self._written) >= 256:
                            self._flush()
                    self._flush()
                self._grant(sock)
                if time.monotonic() - self._last_check >= 0.01:
                    # liveness is judged in seconds: polling every process after each drain of
                    # the socket (every few samples when they stream fast) costs the receiver
                    self._check(sock)
                if self._budget_reached() and not self.queue and not self.active:
                    break
        for active in list(self.active.values()):
            self._send(sock, active, protocol.encode_text(Kind.STOP, active.record.simulation_id, 0, "run ended"))

    # ------------------------------------------------------------------ launching
    def _new_point(self) -> SimulationRecord:
        # every rank asks the same sequence (same seed) and keeps its share, so ranks never
        # simulate the same point
        try:
            points = self.sampler.ask(self.world_size)
        except Exception as exc:
            name = type(self.sampler).__name__
            raise SchedulerError(f"sampler {name}.ask failed: {type(exc).__name__}: {exc}") from exc
        index = self.next_index
        self.next_index += 1
        self.planned += 1
        return SimulationRecord.create(self.simulator.space, index * self.world_size + self.rank, points[self.rank])

    def _launch(self) -> None:
        while self.running < self.concurrency and not self._stop.is_set():
            if self.queue:
                record = self.queue.popleft()
            elif not self._budget_reached():
                record = self._new_point()
            else:
                return
            self._start(record)

    def _start(self, record: SimulationRecord) -> None:
        record.status, record.started_at = "running", time.time()
        record.samples_received = record.resume_from
        active = _Active(record, np.asarray(record.unit, dtype=np.float32), accepted=record.resume_from)
        sim_id, attempt = record.simulation_id, record.attempt
        launch_command = getattr(self.simulator, "launch_command", None)
        if launch_command is not None:
            command = list(launch_command(self.address, sim_id, attempt))
        else:
            command = [sys.executable, "-m", "engage.core.online.client", "--address", str(self.address)]
            command += ["--simulation-id", str(sim_id), "--attempt", str(attempt)]
        env = {PARENT_PID_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
        if self.segment is not None:
            env[shared_memory.SHARED_MEMORY_ENV] = self.segment.name
        request = LaunchRequest(
            command,
            sim_id,
            attempt,
            env=env,
            log_dir=os.path.join(self.workdir, "logs"),
        )
        active.process = self.executor.start(request)
        record.host = active.process.host
        self.active[sim_id] = active
        self._journal(record)
        self._emit("engage_simulation_started", record=record)

    # ------------------------------------------------------------------ messages
    def _send(self, sock: zmq.Socket, active: _Active, frames: list[bytes]) -> None:
        if active.identity is not None:
            try:
                sock.send_multipart([active.identity, *frames], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # a client that vanished is caught by the liveness checks

    def _handle(self, sock: zmq.Socket, identity: bytes) -> None:
        """Read and act on the rest of a message from ``identity``: a header frame, then a payload
        frame that :meth:`_sample` reads into its buffer slot and :meth:`_payload` otherwise."""
        active = self._by_identity.get(identity)
        try:
            if not sock.getsockopt(zmq.RCVMORE):
                raise ProtocolError("empty message, expected 2 frames (header, payload)")
            header_frame = sock.recv()
            if not sock.getsockopt(zmq.RCVMORE):
                raise ProtocolError("message of 1 frame, expected 2 (header, payload)")
            header = protocol.decode_header(header_frame)
            if active is None:
                self._hello(sock, identity, header, self._payload(sock))
                return
            if header.simulation_id != active.record.simulation_id or header.attempt != active.record.attempt:
                raise ProtocolError(
                    f"header names simulation {header.simulation_id} attempt {header.attempt}, "
                    f"the connection belongs to {active.record.simulation_id} attempt {active.record.attempt}"
                )
            active.last_seen = time.monotonic()
            if header.kind == Kind.SAMPLE or header.kind == Kind.SAMPLES:
                if header.flags & protocol.FLAG_IN_SLOTS:
                    self._in_slots(sock, active, header)
                elif header.kind == Kind.SAMPLE:
                    self._sample(sock, active, header)
                else:
                    self._several(sock, active, header)
                return
            payload = self._payload(sock)
            if header.kind == Kind.DONE:
                self._done(sock, active, header)
            elif header.kind == Kind.ERROR:
                self._fail(sock, active, f"simulation reported: {_one_line(payload.decode(errors='replace'))}")
            elif header.kind != Kind.HEARTBEAT:
                raise ProtocolError(f"unexpected {header.kind.name} message from a simulation")
        except SchedulerError:
            raise
        except Exception as exc:
            # whatever a peer sends, it fails that peer's simulation (or is dropped) and never the
            # receiver: protocol and shape checks name what is wrong; anything else they missed
            # is the peer's data too
            # what is left of a malformed message must not be read as the next one
            while sock.getsockopt(zmq.RCVMORE):
                sock.recv(copy=False)
            what = str(exc) if isinstance(exc, (ProtocolError, MalformedSample)) else f"{type(exc).__name__}: {exc}"
            if active is not None:
                self._fail(sock, active, f"malformed data: {_one_line(what)}")
            else:
                self.dropped_messages += 1
                if self.dropped_messages <= _LOGGED_STRANGERS or self.dropped_messages % 1000 == 0:
                    log.warning(
                        "dropped a message from a connection that belongs to no simulation (%d so far): %s",
                        self.dropped_messages,
                        _one_line(what, 200),
                    )

    @staticmethod
    def _payload(sock: zmq.Socket, copy: bool = True) -> Any:
        """The payload frame, which must be the message's last."""
        payload = sock.recv(copy=copy)
        if sock.getsockopt(zmq.RCVMORE):
            raise ProtocolError("message of more than 2 frames, expected 2 (header, payload)")
        return payload

    def _hello(self, sock: zmq.Socket, identity: bytes, header: protocol.Header, payload: bytes) -> None:
        active = self.active.get(header.simulation_id)
        if header.kind != Kind.HELLO or active is None or active.record.attempt != header.attempt or active.done:
            # a stale attempt or a stranger: tell it to go away
            reason = f"simulation {header.simulation_id} attempt {header.attempt} is not expected"
            sock.send_multipart([identity, *protocol.encode_text(Kind.STOP, header.simulation_id, 0, reason)])
            return
        hello = protocol.decode_json(payload) if len(payload) else {}
        if hello.get("host") and active.record.host in ("", "localhost"):
            # the executor's host name (edge-1) says more than a hostname that namespaces share
            active.record.host = str(hello["host"])
        active.identity = identity
        active.last_seen = time.monotonic()
        self._by_identity[identity] = active
        job = {
            "parameters": active.record.parameters,
            "vector": active.record.vector,
            "simulator": self.spec,
            "resume_from": active.record.resume_from,
            "heartbeat_interval": self.heartbeat_interval,
            "server_timeout": max(self.heartbeat_timeout, 10 * self.heartbeat_interval),
            "coalesce_bytes": self.coalesce_bytes,
        }
        if self.segment is not None and hello.get("shared_memory") == self.segment.name:
            # the client mapped this trainer's segment: its credit comes as slots to write into
            active.slots = deque()
            job["shared_memory"] = {"slot_bytes": self._nbytes, "slots": self.buffer.capacity}
        rec = active.record
        self._send(sock, active, protocol.encode_json(Kind.JOB, rec.simulation_id, rec.attempt, job))

    def _sample(self, sock: zmq.Socket, active: _Active, header: protocol.Header) -> None:
        size = self._nbytes
        # the common case in one comparison; the full check names what is wrong otherwise
        if header.shape != self.shape or header.dtype != self.dtype or header.nbytes != size:
            check_sample(header, header.nbytes, self.shape, self.dtype)
        total = self.simulator.samples_per_run
        if total is not None and header.index >= total:
            raise MalformedSample(
                f"sample {header.index} of simulation {header.simulation_id}: the simulator declares {total} per run"
            )
        if active.credits <= 0:
            raise ProtocolError("sample sent without credit (the client must wait for CREDIT messages)")
        active.credits -= 1
        if header.index < active.accepted:
            self._payload(sock, copy=False)
            if active.slots:
                self.buffer.release([active.slots.popleft()])
            return  # already received from an earlier attempt
        if header.index > active.accepted:
            raise ProtocolError(f"sample {header.index} arrived after sample {active.accepted - 1}: samples missing")
        step_time = (header.index + 1) / total if total else float(header.index)
        slot = self._next_slot(active)
        if slot is not None:
            received = sock.recv_into(self.buffer.slot(slot))
            if received != size or sock.getsockopt(zmq.RCVMORE):
                self._return_slot(active, slot)
                check_sample(header, received, self.shape, self.dtype)
                raise ProtocolError("message of more than 2 frames, expected 2 (header, payload)")
            self._written.append((slot, active.unit, header.simulation_id, step_time))
        else:
            # large samples (or a full reservoir, which evicts on put): ZeroMQ's own memory, kept
            # by reference in the buffer
            frame = self._payload(sock, copy=False)
            if len(frame.buffer) != size:
                check_sample(header, len(frame.buffer), self.shape, self.dtype)
            sample = np.frombuffer(frame.buffer, dtype=self.dtype).reshape(self.shape)
            self._pending.append((sample, active.unit, header.simulation_id, step_time))
        self._count_accepted(active, 1)

    def _several(self, sock: zmq.Socket, active: _Active, header: protocol.Header) -> None:
        """A ``SAMPLES`` message: consecutive samples from ``header.index`` in one payload, copied
        into buffer slots in one step (or kept by reference, large ones)."""
        size = self._nbytes
        count = header.nbytes // size if size else 0
        if header.shape != self.shape or header.dtype != self.dtype or not count or header.nbytes != count * size:
            check_sample(header, header.nbytes, self.shape, self.dtype, several=True)
        sid = header.simulation_id
        self._admit(active, header, count, "sent with {} credits")
        frame = self._payload(sock, copy=False)
        if len(frame.buffer) != header.nbytes:
            check_sample(header, len(frame.buffer), self.shape, self.dtype, several=True)
        skip = min(count, active.accepted - header.index)  # received already, from an earlier attempt
        # a shared-memory client's samples sent over its socket fill its next granted slots
        granted = None if active.slots is None else self._granted_slots(active, count, skip)
        if skip == count:
            return
        samples = np.frombuffer(frame.buffer, dtype=self.dtype).reshape(count, *self.shape)[skip:]
        n = len(samples)
        times = self._times(header.index + skip, n)
        unit = active.unit
        written = 0
        if granted is not None:
            self.buffer.write(granted, samples)
            self._written.extend((slot, unit, sid, t) for slot, t in zip(granted, times))
            written = n
        elif self.buffer.writes_in_place:
            if len(self._slots) < n:
                self._slots += self.buffer.reserve(max(256, n) - len(self._slots))
            written = min(n, len(self._slots))
            slots = self._slots[len(self._slots) - written :]
            del self._slots[len(self._slots) - written :]
            self.buffer.write(slots, samples[:written])
            self._written.extend((slot, unit, sid, t) for slot, t in zip(slots, times))
        # the rest (large samples, or a full reservoir, which evicts on put): views of the frame
        self._pending.extend((samples[i], unit, sid, times[i]) for i in range(written, n))
        self._count_accepted(active, n)

    def _in_slots(self, sock: zmq.Socket, active: _Active, header: protocol.Header) -> None:
        """A ``SAMPLE`` or ``SAMPLES`` message flagged ``FLAG_IN_SLOTS``: the client wrote the
        samples into the next slots of its credit; they become samples without a copy."""
        size = self._nbytes
        several = header.kind == Kind.SAMPLES
        count = header.nbytes // size if size else 0
        if (
            header.shape != self.shape or header.dtype != self.dtype or not count
            or header.nbytes != count * size or (count > 1 and not several)
        ):  # fmt: skip
            check_sample(header, header.nbytes, self.shape, self.dtype, several=several)
        payload = self._payload(sock, copy=False)
        if len(payload.buffer):
            raise ProtocolError(
                f"a message of samples in shared memory carries no payload, this one has {len(payload.buffer)} bytes"
            )
        sid = header.simulation_id
        if active.slots is None:
            raise ProtocolError(
                f"simulation {sid} sent samples in shared memory without having mapped this trainer's segment "
                "(its HELLO must name it)"
            )
        self._admit(active, header, count, "written to shared memory with {} slots granted")
        skip = min(count, active.accepted - header.index)  # received already, from an earlier attempt
        filled = self._granted_slots(active, count, skip)
        n = count - skip
        if not n:
            return
        unit = active.unit
        self._written.extend((slot, unit, sid, t) for slot, t in zip(filled, self._times(header.index + skip, n)))
        self._count_accepted(active, n)
        self.shared_memory_samples += n

    def _admit(self, active: _Active, header: protocol.Header, count: int, spending: str) -> None:
        """Check that ``count`` samples from ``header.index`` fit the run, the client's credit
        (``spending`` words the shortfall) and the order of samples; then spend the credit."""
        total = self.simulator.samples_per_run
        if total is not None and header.index + count > total:
            raise MalformedSample(
                f"samples {header.index} to {header.index + count - 1} of simulation {header.simulation_id}: "
                f"the simulator declares {total} per run"
            )
        if active.credits < count:
            raise ProtocolError(
                f"{count} samples {spending.format(active.credits)} (the client must wait for CREDIT messages)"
            )
        if header.index > active.accepted:
            raise ProtocolError(f"sample {header.index} arrived after sample {active.accepted - 1}: samples missing")
        active.credits -= count

    def _granted_slots(self, active: _Active, count: int, skip: int) -> list[int]:
        """A shared-memory client's next ``count`` granted slots, in order; those of the first
        ``skip`` samples (received already) go back to the buffer, the rest are returned."""
        taken = [active.slots.popleft() for _ in range(count)]  # type: ignore[union-attr]
        if skip:
            self.buffer.release(taken[:skip])
        return taken[skip:]

    def _times(self, first: int, n: int) -> list[float]:
        """The time stamps of samples ``first`` to ``first + n - 1`` of a run: the fraction of
        the run done, or the sample's index when the run's length is not declared."""
        total = self.simulator.samples_per_run
        steps = np.arange(first + 1, first + n + 1, dtype=np.float64)
        return (steps / total if total else steps - 1).tolist()

    def _next_slot(self, active: _Active) -> int | None:
        """The buffer slot to read a socket sample into: a shared-memory client's next granted
        slot, else one of this receiver's reserved ones; None when samples are kept by reference."""
        if active.slots is not None:
            return active.slots.popleft()  # granted with its credit, which the caller checked
        if self.buffer.writes_in_place and not self._slots:
            self._slots = self.buffer.reserve(256)
        return self._slots.pop() if self._slots else None

    def _return_slot(self, active: _Active, slot: int) -> None:
        if active.slots is not None:
            active.slots.appendleft(slot)
        else:
            self._slots.append(slot)

    def _release_slots(self, active: _Active) -> None:
        """Give the buffer back the slots a simulation was granted and will not fill."""
        if active.slots:
            self.buffer.release(list(active.slots))
            active.slots.clear()
            active.credits = 0

    def _count_accepted(self, active: _Active, n: int) -> None:
        """Count ``n`` samples of one message as received, for the journal, plugins and budget."""
        rec = active.record
        self._arrived[rec.simulation_id] = self._arrived.get(rec.simulation_id, 0) + n
        active.accepted += n
        if rec.first_sample_at is None:
            rec.first_sample_at = time.time()
        rec.samples_received = active.accepted
        rec.bytes_received += n * self._nbytes
        self.samples += n
        self.sample_messages += 1

    def _flush(self) -> None:
        """Put the samples of this drain into the buffer and tell plugins, once per simulation."""
        try:
            if self._written:
                self.buffer.commit(self._written)
                self._written = []
            if self._pending:
                # the frames' memory is the scheduler's alone: large samples are kept without a copy
                self.buffer.put_many(self._pending, owned=True)
                self._pending = []
        except Exception as exc:
            raise SchedulerError(f"the training buffer failed: {type(exc).__name__}: {exc}") from exc
        if self._arrived:
            arrived, self._arrived = self._arrived, {}
            if self.hooks is not None:
                size = len(self.buffer)
                for simulation_id, count in arrived.items():
                    self._emit("engage_samples_arrived", simulation_id=simulation_id, count=count, buffer_size=size)

    def _done(self, sock: zmq.Socket, active: _Active, header: protocol.Header) -> None:
        self._flush()  # the samples before DONE are in the buffer when the simulation counts as finished
        rec = active.record
        total = self.simulator.samples_per_run
        if header.index != active.accepted or (total is not None and active.accepted != total):
            raise ProtocolError(
                f"simulation {rec.simulation_id} says it sent {header.index} samples; {active.accepted} arrived"
                + (f" of {total} declared" if total is not None else "")
            )
        active.done = True
        self._release_slots(active)
        # every sample arrived (DONE travels behind them): the client may exit now
        self._send(sock, active, protocol.encode_text(Kind.ACK, rec.simulation_id, rec.attempt, index=header.index))
        rec.status, rec.ended_at, rec.samples_sent = "finished", time.time(), header.index
        self.finished += 1
        self._journal(rec)
        self._sampler_call("tell", rec, outputs=[{"samples": active.accepted, "duration": rec.duration}])
        self._emit("engage_simulation_finished", record=rec)

    def _sampler_call(self, method: str, rec: SimulationRecord, **kwargs: Any) -> None:
        """Tell the sampler about a settled simulation; its failure ends the run (never silently)."""
        try:
            getattr(self.sampler, method)(np.asarray(rec.vector, dtype=np.float64)[None, :], **kwargs)
        except Exception as exc:
            raise SchedulerError(
                f"sampler {type(self.sampler).__name__}.{method} failed on simulation {rec.simulation_id}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def _grant(self, sock: zmq.Socket) -> None:
        connected = [a for a in self.active.values() if a.identity is not None and not a.done]
        if not connected:
            return
        # reserved slots are room the buffer no longer counts but this receiver will fill; the
        # slots of shared-memory clients are reserved already, their credit is not counted again
        outstanding = sum(a.credits for a in connected if a.slots is None)
        available = self.buffer.credit() + len(self._slots) - outstanding
        total = self.simulator.samples_per_run
        for active in sorted(connected, key=lambda a: a.credits):
            # never more than the run has left to send: a granted slot is one other samples may
            # not use (and under the reservoir policy, a shared-memory slot evicts a sample)
            left = total - active.accepted - active.credits if total is not None else self.credit_window
            want = min(self.credit_window - active.credits, left)
            if want <= 0 or available <= 0:
                continue
            # grant in chunks to keep the message count low, but never let a client starve
            if active.credits > 0 and want < self.credit_window // 2 and want < left:
                continue
            grant = min(want, available)
            rec = active.record
            if active.slots is None:
                message = protocol.encode_text(Kind.CREDIT, rec.simulation_id, rec.attempt, index=grant)
            else:
                granted = self._take_slots(grant)
                if not granted:
                    continue
                grant = len(granted)
                active.slots.extend(granted)
                payload = np.asarray(granted, dtype="<i8").tobytes()
                header = protocol.encode_header(Kind.CREDIT, rec.simulation_id, rec.attempt, grant, nbytes=len(payload))
                message = [header, payload]
            available -= grant
            active.credits += grant
            self._send(sock, active, message)

    def _take_slots(self, n: int) -> list[int]:
        """Up to ``n`` buffer slots for a shared-memory client: this receiver's reserved ones
        first, then from the buffer (evicting, under the reservoir policy, as arrivals would)."""
        taken = self._slots[-n:]
        del self._slots[len(self._slots) - len(taken) :]
        if len(taken) < n:
            taken += self.buffer.reserve(n - len(taken), evict=True)
        return taken

    # ------------------------------------------------------------------ liveness and failures
    def _check(self, sock: zmq.Socket) -> None:
        now = self._last_check = time.monotonic()
        beat = now - self._last_beat >= self.heartbeat_interval
        if beat:
            self._last_beat = now
        for active in list(self.active.values()):
            rec = active.record
            code = active.process.poll() if active.process is not None else None
            if active.done:
                # finished: let it exit on its own, then forget it
                if code is not None or now - active.last_seen > 10:
                    if code is None and active.process is not None:
                        active.process.kill()
                    self._forget(active)
                continue
            if code is not None:
                # messages sent just before exiting may still be on their way (a slow link drains a
                # socket buffer for a while): decide once the connection has been quiet a moment
                active.exited_at = active.exited_at or now
                if now - max(active.exited_at, active.last_seen) > self.exit_grace:
                    how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
                    self._fail(sock, active, f"process {how} after {active.accepted} samples")
                continue
            if active.identity is None:
                if now - active.last_seen > self.startup_timeout:
                    self._fail(sock, active, f"did not connect within {self.startup_timeout:.0f}s")
            elif now - active.last_seen > self.heartbeat_timeout:
                self._fail(sock, active, f"silent for {now - active.last_seen:.1f}s (heartbeat timeout)")
            elif beat:
                self._send(sock, active, protocol.encode_text(Kind.HEARTBEAT, rec.simulation_id, rec.attempt))

    def _forget(self, active: _Active) -> None:
        self._release_slots(active)
        self.active.pop(active.record.simulation_id, None)
        if active.identity is not None:
            self._by_identity.pop(active.identity, None)

    @staticmethod
    def _resumable(active: _Active) -> SimulationRecord:
        """A copy of a running simulation's record as a rerun starts it: after the samples held."""
        record = SimulationRecord.from_dict(active.record.to_dict())
        record.resume_from = record.samples_received = active.accepted
        return record

    def _fail(self, sock: zmq.Socket, active: _Active, reason: str) -> None:
        rec = active.record
        self._send(sock, active, protocol.encode_text(Kind.STOP, rec.simulation_id, rec.attempt, reason))
        if active.process is not None:
            active.process.kill()
            rec.stderr_tail = active.process.stderr_tail()
        self._forget(active)
        rec.status, rec.ended_at, rec.error = "failed", time.time(), reason
        rec.failures += 1
        will_retry = rec.failures <= self.retries
        log.warning(
            "simulation %d attempt %d failed: %s%s\n%s",
            rec.simulation_id,
            rec.attempt,
            reason,
            "; retrying" if will_retry else "; giving up",
            rec.stderr_tail[-2000:],
        )
        self._journal(rec, final=not will_retry)
        self._emit("engage_simulation_failed", record=rec, error=reason)
        if will_retry:
            self.retried += 1
            retry = self._resumable(active)
            retry.next_attempt()
            self.queue.append(retry)
            return
        self.failed += 1
        self._sampler_call("report_failure", rec)
        if self.on_failure == "redraw":
            self.planned -= 1  # a replacement point takes its place in the budget
        elif self.budget is not None and self.failed > self.budget - math.ceil(self.min_completed * self.budget - 1e-9):
            raise SchedulerError(
                f"simulation {rec.simulation_id} failed after {rec.failures} attempts ({_one_line(reason, 200)}); "
                f"{self.failed} of {self.budget} simulations given up, so min_completed={self.min_completed} cannot "
                "be met (raise data.retries, set data.on_failure=redraw or lower data.min_completed)"
            )

    # ------------------------------------------------------------------ journal, events, state
    def _journal(self, rec: SimulationRecord, final: bool = True) -> None:
        if self.journal is not None:
            entry = rec.to_dict()
            entry.update(rank=self.rank, final=final)
            self.journal.append(entry)

    def _emit(self, hook: str, **kwargs: Any) -> None:
        if self.hooks is None:
            return
        try:
            getattr(self.hooks, hook)(**kwargs)
        except Exception:  # a plugin's bug must not stop the simulations
            log.exception("plugin hook %s failed", hook)

    def stats(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self._started_at, 1e-9)
        return {
            "running": float(self.running),
            "finished": float(self.finished),
            "failed": float(self.failed),
            "retried": float(self.retried),
            "samples": float(self.samples),
            "samples_per_s": self.samples / elapsed,
            "shared_memory_samples": float(self.shared_memory_samples),
            "dropped_messages": float(self.dropped_messages),
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
            pending = [r.to_dict() for r in self.queue]
            pending += [self._resumable(a).to_dict() for a in list(self.active.values()) if not a.done]
            return {
                "version": 2,
                "next_index": self.next_index,
                "planned": self.planned,
                "finished": self.finished,
                "failed": self.failed,
                "retried": self.retried,
                "samples": self.samples,
                "pending": pending,
            }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` before :meth:`start`. Everything after that state is redone:
        simulations running then start again from the sample index it holds, and those started
        later are asked of the sampler (restored with it) again."""
        if state.get("version") != 2:
            raise ValueError(
                "the checkpoint's simulation state was written by an older ENGAGE; resume from a checkpoint of "
                "this version or start a new run"
            )
        if self._thread is not None:
            raise RuntimeError("the scheduler state must be loaded before start()")
        self.next_index, self.planned = int(state["next_index"]), int(state["planned"])
        self.finished, self.failed, self.retried = int(state["finished"]), int(state["failed"]), int(state["retried"])
        self.samples = int(state["samples"])
        self.queue.clear()
        for data in state["pending"]:
            record = SimulationRecord.from_dict(data)
            if record.status != "pending":
                record.next_attempt()  # a new process: the one of the checkpoint is gone
            self.queue.append(record)
