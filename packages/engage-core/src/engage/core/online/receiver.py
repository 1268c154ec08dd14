"""Receiving samples: each ``SAMPLE`` or ``SAMPLES`` message read into buffer slots, kept by
reference, or found in shared memory, and a drain's samples put into the buffer together.

Samples reach the buffer with as few copies as the transport allows: a small sample's payload is
read from the socket straight into a buffer slot reserved for it; a large one (at least the
buffer's ``zero_copy_bytes``) stays in the memory ZeroMQ received it into, which the buffer then
keeps by reference; a simulation writing into the buffer's shared memory sends only the header.
A sample counts as received when it is read; it is in the buffer after :meth:`SampleReceiver.flush`,
which the scheduler calls before anything (a DONE, a checkpoint) relies on it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import zmq

from engage.core.online import protocol
from engage.core.online.buffer import TrainingBuffer
from engage.core.online.credit import Credit
from engage.core.online.fleet import Running
from engage.core.online.frames import SampleSpec, check_sample, read_payload
from engage.core.online.protocol import Kind, ProtocolError
from engage.core.online.state import Counts
from engage.core.online.steering import SchedulerError


class Written(NamedTuple):
    """Consecutive samples of one simulation written into buffer slots, not yet committed (a
    tuple: one is made per message, however small)."""

    slots: Sequence[int]  # one per sample
    unit: np.ndarray  # the simulation's point in the unit cube
    simulation_id: int
    times: Sequence[float]  # one per sample


class SampleReceiver:
    """Reads the samples of running simulations into ``buffer`` (see the module doc)."""

    def __init__(self, spec: SampleSpec, buffer: TrainingBuffer, credit: Credit, counts: Counts):
        self.spec, self.buffer, self.credit, self.counts = spec, buffer, credit, counts
        # samples received in the current drain of the socket, put into the buffer together:
        # arrays (kept by reference or copied) and slots written in place
        self._pending: list[tuple[np.ndarray, np.ndarray, int, float]] = []
        self._written: list[Written] = []
        self._arrived: dict[int, int] = {}
        self._waiting = 0  # samples counted since the last flush: those in _pending and _written

    def receive(self, sock: zmq.Socket, active: Running, header: protocol.Header) -> None:
        """The rest of a ``SAMPLE`` or ``SAMPLES`` message from ``active``."""
        if header.flags & protocol.FLAG_IN_SLOTS:
            self.in_slots(sock, active, header)
        elif header.kind == Kind.SAMPLE:
            self.sample(sock, active, header)
        else:
            self.several(sock, active, header)

    def sample(self, sock: zmq.Socket, active: Running, header: protocol.Header) -> None:
        spec = self.spec
        spec.check_one(header)
        if active.credits <= 0:
            raise ProtocolError("sample sent without credit (the client must wait for CREDIT messages)")
        active.credits -= 1
        if header.index < active.accepted:
            read_payload(sock, copy=False)
            if active.slots:
                self.buffer.release([active.slots.popleft()])
            return  # already received from an earlier attempt
        if header.index > active.accepted:
            raise ProtocolError(f"sample {header.index} arrived after sample {active.accepted - 1}: samples missing")
        step_time = spec.time(header.index)
        slot = self.credit.next_slot(active)
        if slot is not None:
            received = sock.recv_into(self.buffer.slot(slot))
            if received != spec.nbytes or sock.getsockopt(zmq.RCVMORE):
                self.credit.return_slot(active, slot)
                check_sample(header, received, spec.shape, spec.dtype)
                raise ProtocolError("message of more than 2 frames, expected 2 (header, payload)")
            self._written.append(Written((slot,), active.unit, header.simulation_id, (step_time,)))
        else:
            # large samples (or a full reservoir, which evicts on put): ZeroMQ's own memory, kept
            # by reference in the buffer
            memory = read_payload(sock, copy=False).buffer
            if len(memory) != spec.nbytes:
                check_sample(header, len(memory), spec.shape, spec.dtype)
            sample = np.ndarray(spec.shape, spec.dtype, memory)  # a view of the frame, in one call
            self._pending.append((sample, active.unit, header.simulation_id, step_time))
        self._count(active, 1)

    def several(self, sock: zmq.Socket, active: Running, header: protocol.Header) -> None:
        """A ``SAMPLES`` message: consecutive samples from ``header.index`` in one payload, copied
        into buffer slots in one step (or kept by reference, large ones)."""
        spec = self.spec
        count = spec.count(header)
        sid = header.simulation_id
        spec.check_range(header, count)
        self.credit.spend(active, header, count, "sent with {} credits")
        frame = read_payload(sock, copy=False)
        if len(frame.buffer) != header.nbytes:
            check_sample(header, len(frame.buffer), spec.shape, spec.dtype, several=True)
        skip = min(count, active.accepted - header.index)  # received already, from an earlier attempt
        # a shared-memory client's samples sent over its socket fill its next granted slots
        granted = None if active.slots is None else self.credit.granted_slots(active, count, skip)
        if skip == count:
            return
        samples = np.frombuffer(frame.buffer, dtype=spec.dtype).reshape(count, *spec.shape)[skip:]
        n = len(samples)
        times = spec.times(header.index + skip, n)
        unit = active.unit
        written = 0
        if granted is not None:
            self.buffer.write(granted, samples)
            self._written.append(Written(granted, unit, sid, times))
            written = n
        elif self.buffer.writes_in_place:
            slots = self.credit.reserved_slots(n)
            written = len(slots)
            self.buffer.write(slots, samples[:written])
            self._written.append(Written(slots, unit, sid, times[:written]))
        # the rest (large samples, or a full reservoir, which evicts on put): views of the frame
        self._pending.extend((samples[i], unit, sid, times[i]) for i in range(written, n))
        self._count(active, n)

    def in_slots(self, sock: zmq.Socket, active: Running, header: protocol.Header) -> None:
        """A ``SAMPLE`` or ``SAMPLES`` message flagged ``FLAG_IN_SLOTS``: the client wrote the
        samples into the next slots of its credit; they become samples without a copy."""
        spec = self.spec
        count = spec.count(header, several=header.kind == Kind.SAMPLES)
        payload = read_payload(sock, copy=False)
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
        spec.check_range(header, count)
        self.credit.spend(active, header, count, "written to shared memory with {} slots granted")
        skip = min(count, active.accepted - header.index)  # received already, from an earlier attempt
        filled = self.credit.granted_slots(active, count, skip)
        n = count - skip
        if not n:
            return
        unit = active.unit
        self._written.append(Written(filled, unit, sid, spec.times(header.index + skip, n)))
        self._count(active, n)
        self.counts.shared_memory_samples += n

    def _count(self, active: Running, n: int) -> None:
        """Count ``n`` samples of one message as received, for the journal, plugins and budget."""
        rec = active.record
        self._arrived[rec.simulation_id] = self._arrived.get(rec.simulation_id, 0) + n
        active.accepted += n
        if rec.first_sample_at is None:
            rec.first_sample_at = time.time()
        rec.samples_received = active.accepted
        rec.bytes_received += n * self.spec.nbytes
        self.counts.samples += n
        self.counts.sample_messages += 1
        self._waiting += n

    def flush(self) -> dict[int, int]:
        """Put the samples of this drain into the buffer; returns how many arrived per simulation
        since the last flush."""
        try:
            if self._written:
                written, self._written = self._written, []
                counts = [len(w.slots) for w in written]
                self.buffer.commit_arrays(
                    np.concatenate([np.asarray(w.slots, np.int64) for w in written]),
                    np.repeat(np.stack([w.unit for w in written]), counts, axis=0),
                    np.repeat(np.array([w.simulation_id for w in written], np.int64), counts),
                    np.concatenate([np.asarray(w.times, np.float64) for w in written]),
                )
            if self._pending:
                # the frames' memory is the scheduler's alone: large samples are kept without a copy
                self.buffer.put_many(self._pending, owned=True)
                self._pending = []
        except Exception as exc:
            raise SchedulerError(f"the training buffer failed: {type(exc).__name__}: {exc}") from exc
        arrived, self._arrived = self._arrived, {}
        self._waiting = 0
        return arrived

    @property
    def waiting(self) -> int:
        """Samples received in this drain and not yet in the buffer."""
        return self._waiting
