"""The trainer's side of what simulations send: each message's header checked against the
attempt its connection and key belong to, a ``HELLO`` answered with the ``JOB`` (and the
buffer's shared memory), samples handed to the :mod:`.receiver`, ``DONE`` acknowledged, and
failures and liveness verdicts turned into retries, a given-up simulation or the run's end.

:class:`SimulationMessages` is the scheduler's collaborator for everything that happens on its
socket; it runs in the scheduler's thread, under the scheduler's lock.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Any

import zmq

from engage.core.online import protocol
from engage.core.online.buffer import TrainingBuffer
from engage.core.online.credit import Credit
from engage.core.online.fleet import Fleet, Running
from engage.core.online.frames import (
    MalformedSample,
    SampleSpec,
    discard_rest,
    log_block,
    one_line,
    read_header,
    read_payload,
)
from engage.core.online.protocol import Kind, ProtocolError
from engage.core.online.receiver import SampleReceiver
from engage.core.online.security import PeerWarnings
from engage.core.online.state import RunState
from engage.core.online.steering import SchedulerError, Steering
from engage.core.plugins import DISABLE_ENV, declared_plugins, plugin_that_raised

log = logging.getLogger("engage.online")


class _Impostor(Exception):
    """A message whose claimed simulation is not the one its key was issued to."""


class SimulationMessages:
    """Acts on each message of the scheduler's socket (see the module doc).

    ``job`` holds what every ``JOB`` carries besides the simulation's own record
    (``heartbeat_interval``, ``server_timeout``, ``coalesce_bytes``); :attr:`segment` is set
    once the scheduler's endpoint has it. ``on_failure`` and
    ``min_completed`` decide, when a simulation is given up, whether the run can still succeed.
    """

    def __init__(
        self,
        *,
        fleet: Fleet,
        steering: Steering,
        state: RunState,
        credit: Credit,
        receiver: SampleReceiver,
        buffer: TrainingBuffer,
        spec: SampleSpec,
        hooks: Any,
        job: dict[str, Any],
        on_failure: str,
        min_completed: float,
        simulator_spec: dict[str, Any] | None = None,
        held_out: bool = False,
    ):
        self.fleet, self.steering, self.state = fleet, steering, state
        #: whether these are held-out simulations (every one must complete; none is redrawn)
        self.held_out = held_out
        self.credit, self.receiver, self.buffer = credit, receiver, buffer
        self.spec_samples, self.hooks, self.job = spec, hooks, job
        self.on_failure = on_failure
        #: the share of the budget that must complete: once more have failed for good, the run
        #: cannot succeed and ends at once (under ``on_failure="redraw"`` replacements run instead)
        self.min_completed = float(min_completed)
        self.warnings = PeerWarnings()
        #: what a simulation process builds its simulator from (the ``JOB``'s ``simulator``;
        #: the scheduler makes one when none was given and processes are not launched otherwise)
        self.simulator_spec = simulator_spec
        #: the shared memory a simulation that can map it is granted
        self.segment: Any = None
        self.last_check = 0.0

    @staticmethod
    def send(sock: zmq.Socket, active: Running, frames: list[bytes]) -> None:
        if active.identity is not None:
            try:
                sock.send_multipart([active.identity, *frames], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # a client that vanished is caught by the liveness checks

    def handle(self, sock: zmq.Socket, identity: bytes, user: str | None = None, more: bool = True) -> None:
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
                self.hello(sock, identity, header, read_payload(sock), user)
                return
            if header.simulation_id != active.record.simulation_id or header.attempt != active.record.attempt:
                raise ProtocolError(
                    f"header names simulation {header.simulation_id} attempt {header.attempt}, "
                    f"the connection belongs to {active.record.simulation_id} attempt {active.record.attempt}"
                )
            active.last_seen = time.monotonic()
            if active.done:
                # finished: its record is final, and nothing it sends now counts (a second DONE
                # would count it finished twice, a late sample fail what has finished)
                discard_rest(sock)
                if header.kind != Kind.HEARTBEAT:
                    self.state.counts.dropped_messages += 1
                    self.warnings.warn(
                        active.user_id or str(active.record.simulation_id),
                        "dropped a %s message of simulation %d attempt %d, which had finished (%d dropped so far)",
                        header.kind.name,
                        active.record.simulation_id,
                        active.record.attempt,
                        self.state.counts.dropped_messages,
                    )
                return
            if header.kind == Kind.SAMPLE or header.kind == Kind.SAMPLES:
                self.receiver.receive(sock, active, header)
                return
            payload = read_payload(sock)
            if header.kind == Kind.DONE:
                self.done(sock, active, header)
            elif header.kind == Kind.ERROR:
                self.fail(sock, active, f"simulation reported: {one_line(payload.decode(errors='replace'))}")
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
            # a malformed HELLO on the connection of the attempt its key belongs to fails that
            # attempt now, not after its start-up time
            starting = self.fleet.starting(user) if active is None and user else None
            if active is not None or starting is not None:
                self.fail(sock, active or starting, f"malformed data: {one_line(what)}")
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

    def hello(
        self, sock: zmq.Socket, identity: bytes, header: protocol.Header, payload: bytes, user: str | None = None
    ) -> None:
        active = self.fleet.expects(header.simulation_id, header.attempt) if header.kind == Kind.HELLO else None
        if active is None:
            # a stale attempt or a stranger: tell it to go away
            reason = f"simulation {header.simulation_id} attempt {header.attempt} is not expected"
            sock.send_multipart([identity, *protocol.encode_text(Kind.STOP, header.simulation_id, 0, reason)])
            if user is not None:  # a second connection with an attempt's key, or one that finished
                counts = self.state.counts
                counts.dropped_messages += 1
                self.warnings.warn(
                    user,
                    "dropped a %s message of a second connection holding the key of attempt %s (%d dropped so far)",
                    header.kind.name,
                    user,
                    counts.dropped_messages,
                )
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
            simulator=self.simulator_spec,
            resume_from=rec.resume_from,
            **self.job,
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
        self.send(sock, active, job.encode(rec.simulation_id, rec.attempt))

    def flush(self) -> None:
        """Put the samples of this drain into the buffer and tell plugins, once per simulation."""
        arrived = self.receiver.flush()
        if arrived:
            size = len(self.buffer)
            for simulation_id, count in arrived.items():
                self.notify(
                    self.hooks.engage_samples_arrived, simulation_id=simulation_id, count=count, buffer_size=size
                )

    def done(self, sock: zmq.Socket, active: Running, header: protocol.Header) -> None:
        self.flush()  # the samples before DONE are in the buffer when the simulation counts as finished
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
        self.send(sock, active, protocol.encode_text(Kind.ACK, rec.simulation_id, rec.attempt, index=header.index))
        rec.status, rec.ended_at, rec.samples_sent = "finished", time.time(), header.index
        self.buffer.simulation_ended(rec.simulation_id)
        self.state.counts.finished += 1
        self.state.write(rec)
        self.steering.finished(rec)
        self.notify(self.hooks.engage_simulation_finished, record=rec)

    # ------------------------------------------------------------------ liveness and failures
    def check(self, sock: zmq.Socket) -> None:
        self.last_check = time.monotonic()
        verdicts = self.fleet.inspect()
        for active in verdicts.gone:
            self.credit.release(active)
            self.fleet.forget(active)
        for active, reason in verdicts.failed:
            self.fail(sock, active, reason)
        for active in verdicts.beat:
            rec = active.record
            self.send(sock, active, protocol.encode_text(Kind.HEARTBEAT, rec.simulation_id, rec.attempt))

    def fail(self, sock: zmq.Socket, active: Running, reason: str) -> None:
        rec = active.record
        self.send(sock, active, protocol.encode_text(Kind.STOP, rec.simulation_id, rec.attempt, reason))
        self.credit.release(active)
        retry = self.fleet.failed(active, reason)
        log.warning(
            "simulation %d attempt %d failed: %s%s\n%s",
            rec.simulation_id,
            rec.attempt,
            reason,
            "; retrying" if retry is not None else "; giving up",
            log_block(rec.stderr_tail[-2000:]),
        )
        self.state.write(rec, final=retry is None)
        self.notify(self.hooks.engage_simulation_failed, record=rec, error=reason)
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
            if self.held_out:
                raise SchedulerError(
                    f"held-out simulation {rec.simulation_id} failed after {rec.failures} attempts "
                    f"({one_line(reason, 200)}); every held-out simulation must complete (raise data.retries, "
                    "or lower data.val_simulations)"
                )
            raise SchedulerError(
                f"simulation {rec.simulation_id} failed after {rec.failures} attempts ({one_line(reason, 200)}); "
                f"{lost} of {requested} simulations given up, so min_completed={self.min_completed} cannot "
                "be met (raise data.retries, set data.on_failure=redraw or lower data.min_completed)"
            )

    @staticmethod
    def notify(hook: Any, **kwargs: Any) -> None:
        """Call an event hook; a plugin that fails there fails the run, named (never a peer's fault)."""
        try:
            hook(**kwargs)
        except Exception as exc:
            plugin = plugin_that_raised(hook, exc)
            who = f"plugin {plugin!r} failed in {hook.name}" if plugin else f"plugin hook {hook.name} failed"
            # an installed plugin can be set aside; one registered by code (an observer) cannot
            fix = f"; fix it, or set {DISABLE_ENV}={plugin}" if plugin in declared_plugins() else ""
            raise SchedulerError(f"{who}: {type(exc).__name__}: {one_line(str(exc))}{fix}") from exc
