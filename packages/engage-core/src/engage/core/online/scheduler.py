"""The simulation scheduler: keeps simulations running and their samples flowing into the buffer.

One background thread owns a ZeroMQ ``ROUTER`` socket bound to an ephemeral port and wires the
run's collaborators, each a module with one job: :mod:`.steering` asks the sampler for the next
simulations and tells it of settled ones; :mod:`.fleet` starts their processes through an
executor, watches them and decides retries; :mod:`.frames` checks every message against the
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
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import zmq

from engage.core.executors import Executor, LocalExecutor
from engage.core.online import allocator, protocol, shared_memory
from engage.core.online.buffer import TrainingBuffer
from engage.core.online.credit import Credit, default_windows
from engage.core.online.fleet import Fleet, Running, pickled_simulator
from engage.core.online.frames import (
    MalformedSample,
    SampleSpec,
    check_sample,
    discard_rest,
    one_line,
    read_header,
    read_payload,
)
from engage.core.online.journal import Journal
from engage.core.online.outcome import OnlineRunFailed
from engage.core.online.protocol import Kind, ProtocolError
from engage.core.online.receiver import SampleReceiver
from engage.core.online.security import TRANSPORT_SECURITY, PeerWarnings, RunKeys, run_folder, serve_curve
from engage.core.online.state import RunState
from engage.core.online.steering import SchedulerError, Steering
from engage.core.plugins import new_plugin_manager
from engage.core.samplers.base import Sampler
from engage.core.simulators.base import Simulator

__all__ = ["MalformedSample", "SchedulerError", "SimulationScheduler", "check_sample"]

log = logging.getLogger("engage.online")

#: the largest JSON payload a peer may send (HELLO, DONE, ERROR): the protocol's own bound
_MAX_TEXT_BYTES = 64 << 10


class _Impostor(Exception):
    """A message whose claimed simulation is not the one its key was issued to."""


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
        transport_security: str = "curve",
        simulator_spec: dict[str, Any] | None = None,
        workdir: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        hooks: Any = None,
    ):
        if transport_security not in TRANSPORT_SECURITY:
            raise ValueError(
                f"transport_security must be one of {', '.join(TRANSPORT_SECURITY)}, got {transport_security!r}"
            )
        if on_failure not in ("fail", "redraw"):
            raise ValueError(f"on_failure must be 'fail' or 'redraw', got {on_failure!r}")
        self.simulator = simulator
        self.sampler = sampler
        self.buffer = buffer
        self.on_failure = on_failure
        #: the share of the budget that must complete: once more have failed for good, the run
        #: cannot succeed and ends at once (under ``on_failure="redraw"`` replacements run instead)
        self.min_completed = float(min_completed)
        self.executor = executor or LocalExecutor()
        self.heartbeat_interval, self.heartbeat_timeout = heartbeat_interval, heartbeat_timeout
        self.workdir = workdir or tempfile.mkdtemp(prefix="engage-online-")
        self.rank, self.world_size = rank, world_size
        #: the plugin manager's hook relay: simulation events go to every plugin that observes them
        self.hooks = hooks if hooks is not None else new_plugin_manager(installed=False).hook
        # the wire is little-endian
        self.spec_samples = SampleSpec(
            tuple(simulator.sample_shape), np.dtype(simulator.dtype).newbyteorder("<"), simulator.samples_per_run
        )
        self.spec = simulator_spec
        if credit_window is not None and credit_window < 1:
            raise ValueError(f"credit_window must be >= 1 or None (sized from the sample), got {credit_window}")
        window, slot_window = (
            default_windows(self.spec_samples.nbytes, buffer.capacity, concurrency)
            if credit_window is None
            else (credit_window, credit_window)
        )
        if coalesce_bytes < 0:
            raise ValueError(f"coalesce_bytes must be >= 0 (0: one sample per message), got {coalesce_bytes}")
        self.coalesce_bytes = int(coalesce_bytes)
        self.shared_memory = bool(shared_memory)
        self.transport_security = transport_security
        if transport_security == "ipc" and not self.executor.shares_memory:
            log.warning("data.transport_security=ipc reaches only this host; simulations elsewhere use curve")
            self.transport_security = "curve"
        self.warnings = PeerWarnings()
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
        #: the segment holding the buffer's samples, when ``shared_memory`` could be set up
        self.segment: shared_memory.SharedSegment | None = None
        self.address: str | None = None
        self._thread: threading.Thread | None = None
        # held by the scheduler thread while it handles messages, and by :meth:`consistent`: a
        # checkpoint sees every counted sample in the buffer and no sample half-received
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._private: str | None = None  # the run's 0700 folder: keys, the ipc socket
        self.error: str | None = None
        self._started_at = time.monotonic()
        self._last_check = 0.0
        self.receiver = SampleReceiver(self.spec_samples, buffer, self.credit, self.state.counts)

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

    def _listen(self, context: zmq.Context, sock: zmq.Socket) -> Any:
        """Bind ``sock`` as ``transport_security`` says; the ZAP handler to stop, if any."""
        self._private = run_folder()
        sock.maxmsgsize = self._max_message_bytes()
        if self.transport_security == "ipc":
            # the socket file in a 0700 folder: only this OS user's processes can connect
            self.address = f"ipc://{self._private}/trainer"
            sock.bind(self.address)
            return None
        keys = RunKeys(os.path.join(self._private, "keys"))
        authenticator = serve_curve(context, sock, keys)
        self.fleet.keys = keys
        host = self.executor.bind_host()
        try:
            port = sock.bind_to_random_port(f"tcp://{host}")
        except BaseException:
            authenticator.stop()  # its socket would hold the context's term() forever
            raise
        self.address = f"tcp://{host}:{port}"
        return authenticator

    def _main(self) -> None:
        context = zmq.Context()
        sock = context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
        nbytes = self.spec_samples.nbytes
        authenticator = None
        try:
            shape, dtype = self.spec_samples.shape, self.spec_samples.dtype
            if self.shared_memory and self.executor.shares_memory:
                run_id = self.state.journal.run_id if self.state.journal is not None else None
                # named after the run that owns it (then the trainer's pid: ranks of one run)
                prefix = "-".join(["engage", *re.findall(r"[0-9A-Za-z]+", str(run_id or ""))[:1]])
                self.segment = shared_memory.segment_for(self.buffer.capacity * nbytes, prefix)
            storage = self.segment.buffer if self.segment is not None else None
            self.buffer.prepare(shape, dtype, self.simulator.space.dim, storage=storage)
            if not self.buffer.writes_in_place:
                # samples stay in the frames they arrived in: let the next frames reuse their memory
                allocator.retain_freed_memory(nbytes, self.buffer.capacity * nbytes)
            authenticator = self._listen(context, sock)
            self._bound.set()
            if self.spec is None and self.fleet.launch_command is None:
                launch_spec = getattr(self.simulator, "launch_spec", None)
                self.spec = (launch_spec() if launch_spec else None) or pickled_simulator(self.simulator, self.workdir)
            self._loop(sock)
        except Exception as exc:  # the trainer must hear about it instead of waiting forever
            cause = str(exc) if isinstance(exc, SchedulerError) else f"{type(exc).__name__}: {exc}"
            self.error = f"simulation scheduler failed: {cause}"
            log.error("%s", self.error, exc_info=not isinstance(exc, SchedulerError))
        finally:
            with self._lock:
                self._bound.set()
                try:
                    self._flush()
                    self.credit.release_reserved()
                except Exception:  # a broken buffer must not keep the processes alive
                    log.exception("samples received last could not enter the buffer")
                for active in self.fleet.stop_all():
                    self.credit.release(active)
                self.buffer.close(self.error)
                if self.segment is not None:
                    self.segment.unlink()  # the buffer keeps its mapping; no new process may attach
                sock.close(0)
                if authenticator is not None:
                    authenticator.stop()
                if self.fleet.keys is not None:
                    self.fleet.keys.close()  # every key file goes with the run
                if self._private is not None:
                    shutil.rmtree(self._private, ignore_errors=True)
                context.term()
                if self.state.journal is not None:
                    self.state.journal.close()

    def _loop(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not self._stop.is_set():
            self._launch()
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
                        self._handle(sock, frame.bytes, user, frame.more)
                        if self.receiver.waiting >= 256:
                            self._flush()
                    self._flush()
                self.credit.grant(self.fleet.connections(), lambda active, frames: self._send(sock, active, frames))
                if time.monotonic() - self._last_check >= 0.01:
                    # liveness is judged in seconds: polling every process after each drain of
                    # the socket (every few samples when they stream fast) costs the receiver
                    self._check(sock)
                if self.exhausted:
                    break
        for active in list(self.fleet.active.values()):
            self._send(sock, active, protocol.encode_text(Kind.STOP, active.record.simulation_id, 0, "run ended"))

    # ------------------------------------------------------------------ launching
    def _launch(self) -> None:
        """Start simulations while there is room, each under the lock on its own: a checkpoint
        waits for one start (a key file, an executor call), not for a whole fleet's."""
        fleet = self.fleet
        while not self._stop.is_set():
            with self._lock:
                if not fleet.has_room():
                    return
                if fleet.queue:
                    record = fleet.queue.popleft()
                elif not self.steering.budget_reached(self.samples):
                    record = self.steering.new_record()
                else:
                    return
                active = fleet.start(record, str(self.address))
                self.buffer.simulation_started(active.record.simulation_id)
                self.state.write(active.record)
                self._notify(self.hooks.engage_simulation_started, record=active.record)

    # ------------------------------------------------------------------ messages
    @staticmethod
    def _send(sock: zmq.Socket, active: Running, frames: list[bytes]) -> None:
        if active.identity is not None:
            try:
                sock.send_multipart([active.identity, *frames], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # a client that vanished is caught by the liveness checks

    def _handle(self, sock: zmq.Socket, identity: bytes, user: str | None = None, more: bool = True) -> None:
        """Read and act on the rest of a message from ``identity``, authenticated as ``user`` (a
        simulation attempt, or None without authentication): a header frame, then a payload
        frame (samples: :class:`~.receiver.SampleReceiver`). ``more``: whether the identity
        frame said more frames followed."""
        active = self.fleet.by_identity(identity)
        try:
            header = read_header(sock, more)
            if user is not None:
                claimed = f"{header.simulation_id}:{header.attempt}"
                if user != (claimed if active is None else active.user_id):
                    # a key issued to one simulation used for another: the message is not that one's
                    raise _Impostor(f"a peer holding the key of attempt {user} sent a message as attempt {claimed}")
            if active is None:
                self._hello(sock, identity, header, read_payload(sock))
                return
            if header.simulation_id != active.record.simulation_id or header.attempt != active.record.attempt:
                raise ProtocolError(
                    f"header names simulation {header.simulation_id} attempt {header.attempt}, "
                    f"the connection belongs to {active.record.simulation_id} attempt {active.record.attempt}"
                )
            active.last_seen = time.monotonic()
            if header.kind == Kind.SAMPLE or header.kind == Kind.SAMPLES:
                self.receiver.receive(sock, active, header)
                return
            payload = read_payload(sock)
            if header.kind == Kind.DONE:
                self._done(sock, active, header)
            elif header.kind == Kind.ERROR:
                self._fail(sock, active, f"simulation reported: {one_line(payload.decode(errors='replace'))}")
            elif header.kind != Kind.HEARTBEAT:
                raise ProtocolError(f"unexpected {header.kind.name} message from a simulation")
        except SchedulerError:
            raise
        except _Impostor as exc:
            discard_rest(sock)
            self.state.counts.dropped_messages += 1
            self.warnings.warn(
                str(user), "dropped a message: %s (%d dropped so far)", exc, self.state.counts.dropped_messages
            )
            if active is None:  # this connection is the sender's alone: tell it to go away
                stop = protocol.encode_text(Kind.STOP, header.simulation_id, 0, f"your key is attempt {user}'s")
                sock.send_multipart([identity, *stop])
        except Exception as exc:
            # whatever a peer sends fails that peer's simulation (or is dropped), never the
            # receiver: the checks name what is wrong; anything else they missed is the peer's too
            discard_rest(sock)
            what = str(exc) if isinstance(exc, (ProtocolError, MalformedSample)) else f"{type(exc).__name__}: {exc}"
            if active is not None:
                self._fail(sock, active, f"malformed data: {one_line(what)}")
            else:
                counts = self.state.counts
                counts.dropped_messages += 1
                peer = user or identity.hex()[:32]
                self.warnings.warn(
                    peer,
                    "dropped a message from a connection that belongs to no simulation (%s %s; %d so far): %s",
                    "holding the key of attempt" if user else "with routing id",
                    peer,
                    counts.dropped_messages,
                    one_line(what, 200),
                )

    def _hello(self, sock: zmq.Socket, identity: bytes, header: protocol.Header, payload: bytes) -> None:
        active = self.fleet.expects(header.simulation_id, header.attempt) if header.kind == Kind.HELLO else None
        if active is None:
            # a stale attempt or a stranger: tell it to go away
            reason = f"simulation {header.simulation_id} attempt {header.attempt} is not expected"
            sock.send_multipart([identity, *protocol.encode_text(Kind.STOP, header.simulation_id, 0, reason)])
            return
        hello = protocol.decode_json(payload) if len(payload) else {}
        rec = active.record
        if hello.get("host") and rec.host in ("", "localhost"):
            # the executor's host name (edge-1) says more than a hostname that namespaces share
            rec.host = one_line(str(hello["host"]), 200)
        self.fleet.connected(identity, active)
        job = protocol.Job(
            parameters=rec.parameters,
            vector=rec.vector,
            simulator=self.spec,
            resume_from=rec.resume_from,
            heartbeat_interval=self.heartbeat_interval,
            server_timeout=max(self.heartbeat_timeout, 10 * self.heartbeat_interval),
            coalesce_bytes=self.coalesce_bytes,
        )
        if self.segment is not None and hello.get("shared_memory") is True:
            # an authenticated client that can map shared memory: granted the segment, its credit
            # comes as slots to write into (samples it sends over its socket fill them too)
            active.slots = deque()
            job.shared_memory = {
                "name": self.segment.name,
                "slot_bytes": self.spec_samples.nbytes,
                "slots": self.buffer.capacity,
            }
        self._send(sock, active, job.encode(rec.simulation_id, rec.attempt))

    def _flush(self) -> None:
        """Put the samples of this drain into the buffer and tell plugins, once per simulation."""
        arrived = self.receiver.flush()
        if arrived:
            size = len(self.buffer)
            for simulation_id, count in arrived.items():
                self._notify(
                    self.hooks.engage_samples_arrived, simulation_id=simulation_id, count=count, buffer_size=size
                )

    def _done(self, sock: zmq.Socket, active: Running, header: protocol.Header) -> None:
        self._flush()  # the samples before DONE are in the buffer when the simulation counts as finished
        rec = active.record
        total = self.spec_samples.samples_per_run
        if header.index != active.accepted or (total is not None and active.accepted != total):
            raise ProtocolError(
                f"simulation {rec.simulation_id} says it sent {header.index} samples; {active.accepted} arrived"
                + (f" of {total} declared" if total is not None else "")
            )
        active.done = True
        self.credit.release(active)
        # every sample arrived (DONE travels behind them): the client may exit now
        self._send(sock, active, protocol.encode_text(Kind.ACK, rec.simulation_id, rec.attempt, index=header.index))
        rec.status, rec.ended_at, rec.samples_sent = "finished", time.time(), header.index
        self.buffer.simulation_ended(rec.simulation_id)
        self.state.counts.finished += 1
        self.state.write(rec)
        self.steering.finished(rec)
        self._notify(self.hooks.engage_simulation_finished, record=rec)

    # ------------------------------------------------------------------ liveness and failures
    def _check(self, sock: zmq.Socket) -> None:
        self._last_check = time.monotonic()
        verdicts = self.fleet.inspect()
        for active in verdicts.gone:
            self.credit.release(active)
            self.fleet.forget(active)
        for active, reason in verdicts.failed:
            self._fail(sock, active, reason)
        for active in verdicts.beat:
            rec = active.record
            self._send(sock, active, protocol.encode_text(Kind.HEARTBEAT, rec.simulation_id, rec.attempt))

    def _fail(self, sock: zmq.Socket, active: Running, reason: str) -> None:
        rec = active.record
        self._send(sock, active, protocol.encode_text(Kind.STOP, rec.simulation_id, rec.attempt, reason))
        self.credit.release(active)
        retry = self.fleet.failed(active, reason)
        log.warning(
            "simulation %d attempt %d failed: %s%s\n%s",
            rec.simulation_id,
            rec.attempt,
            reason,
            "; retrying" if retry is not None else "; giving up",
            rec.stderr_tail[-2000:],
        )
        self.state.write(rec, final=retry is None)
        self._notify(self.hooks.engage_simulation_failed, record=rec, error=reason)
        counts = self.state.counts
        if retry is not None:
            counts.retried += 1
            return
        counts.failed += 1
        self.buffer.simulation_ended(rec.simulation_id)
        redraw = self.on_failure == "redraw"
        self.steering.given_up(rec, redraw)
        requested, lost = self.steering.requested, counts.failed - self.steering.dropped
        if not redraw and requested is not None and lost > requested - math.ceil(self.min_completed * requested - 1e-9):
            raise SchedulerError(
                f"simulation {rec.simulation_id} failed after {rec.failures} attempts ({one_line(reason, 200)}); "
                f"{lost} of {requested} simulations given up, so min_completed={self.min_completed} cannot "
                "be met (raise data.retries, set data.on_failure=redraw or lower data.min_completed)"
            )

    @staticmethod
    def _notify(hook: Any, **kwargs: Any) -> None:
        """Call an event hook; a plugin that fails there fails the run, named (never a peer's fault)."""
        try:
            hook(**kwargs)
        except Exception as exc:
            raise SchedulerError(f"plugin hook {hook.name} failed: {type(exc).__name__}: {one_line(str(exc))}") from exc

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
