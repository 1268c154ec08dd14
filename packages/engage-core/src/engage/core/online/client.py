"""The Python simulation client: stream a simulation's samples to a training process.

A simulation process connects to the address the trainer printed, says hello, receives its job
(parameters, and for Python simulators which one to build), then sends each sample as soon as
the trainer grants it credit. While it waits for credit it sends heartbeats, so a trainer
that applies backpressure never mistakes it for a hung simulation.

The command line runs any :class:`~engage.core.simulators.base.Simulator`::

    python -m engage.core.online.client --address tcp://trainer-host:5555 --simulation-id 12

and the library lets any Python code act as a simulation::

    from engage.core.online.client import SimulationClient

    with SimulationClient("tcp://127.0.0.1:5555", simulation_id=12) as client:
        job = client.connect()
        for step in range(100):
            client.send(my_solver_step(job.parameters))
        client.done()
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import pickle
import sys
import time
import traceback
from collections.abc import Iterable
from typing import Any

import numpy as np
import zmq

from engage.core.hosts import node_name
from engage.core.online import protocol
from engage.core.online.link import PARENT_PID_ENV, TrainerGone, TrainerLink
from engage.core.online.protocol import Job, Kind
from engage.core.online.security import KEY_FILE_ENV, KEYS_ENV, load_client_keys
from engage.core.online.shared_memory import available
from engage.core.online.slot_writer import SlotWriter

EXIT_STOPPED = 3  # the trainer told this simulation to stop
EXIT_TRAINER_GONE = 4  # the trainer stopped answering or its parent process died


class StopRequested(RuntimeError):
    """The training process asked this simulation to stop; the message says why."""


class SimulationClient:
    """One simulation's connection to the trainer (a ZeroMQ ``DEALER`` socket).

    ``send`` blocks until the trainer has granted credit for one more sample; that is the
    backpressure: a full training buffer holds simulations back instead of dropping data.

    Small samples that come quickly travel several to a message (``SAMPLES``, up to
    ``coalesce_bytes`` of them): a sample sent less than ``coalesce_gap`` seconds after the one
    before is held back, and leaves in one message with those around it at the first
    :meth:`send` that comes later than that, at :meth:`flush`, :meth:`done` or :meth:`error`, when
    the message is full, or when the last credit is spent. A slow simulation thus sends each
    sample at once, and a fast one pays the transport's cost per message once per few samples.
    ``coalesce_bytes=0`` sends one sample per message. A trainer's job sets ``coalesce_bytes``
    (its ``data.coalesce_bytes``), over the argument.

    With ``shared_memory`` (the default), the client offers to write into the trainer's shared
    memory; a trainer on the same host grants it its segment in the ``JOB``, and the client then
    writes each sample straight into a slot of the training buffer: its credit comes as slot
    numbers, and its messages carry no payload. Elsewhere the segment does not resolve and
    samples travel over the socket. :attr:`in_shared_memory` says which. There,
    messages carry no payload, so a quick simulation announces what it wrote once per
    ``coalesce_gap`` (and whenever its credit runs out), however many samples that is.
    """

    def __init__(
        self,
        address: str,
        simulation_id: int,
        attempt: int = 1,
        *,
        heartbeat_interval: float = 1.0,
        server_timeout: float = 60.0,
        connect_timeout: float = 60.0,
        coalesce_bytes: int = protocol.COALESCE_BYTES,
        coalesce_gap: float = 0.001,
        shared_memory: bool = True,
        keys: dict[str, str] | None = None,
    ):
        if coalesce_bytes < 0 or coalesce_gap < 0:
            raise ValueError(
                f"coalesce_bytes ({coalesce_bytes}) and coalesce_gap ({coalesce_gap}) must be >= 0; "
                "0 turns coalescing off"
            )
        self.simulation_id = int(simulation_id)
        self.attempt = int(attempt)
        self.connect_timeout = connect_timeout
        self.credits = 0
        self.sent = 0
        #: the connection; its CURVE keys are the ones the trainer issued to this attempt (by
        #: default from the environment it started this process with), none over ``ipc://``
        keys = keys if keys is not None else load_client_keys()
        if keys is None and not address.startswith("ipc://"):
            raise ValueError(
                f"no keys for {address}: the trainer gives them in {KEY_FILE_ENV} or {KEYS_ENV} (only an ipc:// "
                "trainer needs none)"
            )
        self.link = TrainerLink(address, keys, heartbeat_interval, server_timeout)
        #: the samples' (shape, dtype) and the bytes of their header before and after the index
        self._header: tuple[tuple[tuple[int, ...], np.dtype] | None, bytes, bytes] = (None, b"", b"")
        self.coalesce_bytes = int(coalesce_bytes)
        self.coalesce_gap = float(coalesce_gap)
        self._staging: np.ndarray | None = None  # samples held back to leave in one SAMPLES message
        self._staged = 0
        self._last_call = -float("inf")
        #: whether to offer writing into the trainer's shared memory
        self.shared_memory = bool(shared_memory)
        #: the trainer's shared memory, once granted (a segment on this host)
        self._slots = SlotWriter()

    # ------------------------------------------------------------------ public API
    def connect(self) -> Job:
        """Say hello and wait for the job; :class:`TrainerGone` if nobody answers in time."""
        # in a batch job, the node's name as the batch system knows it (nodes may share a hostname)
        host = node_name()
        hello = {"pid": os.getpid(), "host": host, "protocol": protocol.VERSION}
        if self.shared_memory and available():
            hello["shared_memory"] = True
        link = self.link
        link.send(protocol.encode_json(Kind.HELLO, self.simulation_id, self.attempt, hello))
        deadline = time.monotonic() + self.connect_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TrainerGone(f"no job from {link.address} within {self.connect_timeout:.0f}s")
            message = self._receive(timeout=min(left, link.heartbeat_interval))
            if message is None:
                continue
            header, payload = message
            if header.kind == Kind.JOB:
                job = Job.decode(payload, link.heartbeat_interval, link.server_timeout)
                link.heartbeat_interval, link.server_timeout = job.heartbeat_interval, job.server_timeout
                if job.coalesce_bytes is not None:
                    self.coalesce_bytes = max(0, int(job.coalesce_bytes))  # the trainer's setting wins
                self._slots.map(job.shared_memory)
                return job

    def send(self, sample: np.ndarray, fresh: bool = False) -> None:
        """Send one sample (waits for credit, heartbeating meanwhile).

        With ``fresh``, the caller promises never to write ``sample``'s memory again, so a large
        sample is handed to the transport without waiting until it has left (see
        :attr:`~engage.core.simulators.base.Simulator.fresh_samples`).
        """
        now = time.monotonic()
        gap = self.coalesce_gap
        slots = self._slots
        if (
            slots.written
            and self.credits > 1
            and self.sent & 31
            and now - self._last_call < gap
            and now - slots.first_written_at < gap
            and type(sample) is np.ndarray
            and sample.shape == slots.shape
            and sample.dtype == slots.dtype
        ):
            # the steady state of a quick simulation on the trainer's host: the sample joins the
            # ones written since the last announcement (a copy into its slot and three counters;
            # every condition that would announce, poll or wait was ruled out above)
            self._last_call = now
            slots.view[slots.free.popleft()] = sample  # type: ignore[index]
            slots.written += 1
            self.credits -= 1
            self.sent += 1
            return
        array = np.ascontiguousarray(sample)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        quick, self._last_call = now - self._last_call < self.coalesce_gap, now
        if slots.slot_bytes and array.nbytes == slots.slot_bytes and (array.shape, array.dtype) == self._header[0]:
            self._write_to_slot(array, quick, now)  # the common case, checked when the shape was first seen
            return
        header = self._sample_header(array)  # validates dtype and ndim before waiting
        if slots.slot_bytes:
            if array.nbytes == slots.slot_bytes:
                self._write_to_slot(array, quick, now)
                return
            # a sample that does not fit a slot goes over the socket, for the trainer to judge it;
            # it spends the next slot, as every sample of this connection does
            self.flush()
            self._wait_for_credit()
            slots.skip()
            self.link.send([header, array])
            self.credits -= 1
            self.sent += 1
            return
        if self._staged and (not quick or not self._staging_holds(array)):
            self.flush()  # the simulation slowed down (or changed shape): what waits leaves now
        if quick and protocol.samples_per_message(array.nbytes, self.coalesce_bytes) > 1:
            self._stage(array)
            return
        self._wait_for_credit()
        # a large sample leaves zero-copy, straight from the array; unless the caller never writes
        # it again (ZeroMQ then keeps it alive until it is sent), wait until ZeroMQ let go of the
        # memory, since the simulator may overwrite the array for its next sample
        large = array.nbytes >= zmq.COPY_THRESHOLD
        tracker = self.link.send([header, array], copy=not large, track=large and not fresh)
        if tracker is not None:
            tracker.wait()
        self.credits -= 1
        self.sent += 1

    @property
    def in_shared_memory(self) -> bool:
        """Whether samples go into the trainer's shared memory (known after :meth:`connect`)."""
        return self._slots.active

    def flush(self) -> None:
        """Send the samples :meth:`send` holds back, now (one ``SAMPLES`` message)."""
        if self._slots.written:
            self._announce_slots()
        count = self._staged
        if not count:
            return
        self._staged = 0
        staging = self._staging
        first = self.sent - count
        if count == 1:
            header = protocol.encode_header(Kind.SAMPLE, self.simulation_id, self.attempt, first, array=staging[0])
        else:
            header = protocol.encode_header(
                Kind.SAMPLES, self.simulation_id, self.attempt, first, array=staging[0], count=count
            )
        self.link.send([header, staging[:count]])  # copied: the staging array is reused at once

    def done(self, wait: bool = True) -> None:
        """Tell the trainer this simulation sent all its samples and, with ``wait``, block until
        it acknowledges them all: samples still on their way over a slow link would otherwise be
        lost when this process exits. :class:`TrainerGone` if no acknowledgement comes."""
        self.flush()
        self.link.send(protocol.encode_text(Kind.DONE, self.simulation_id, self.attempt, index=self.sent))
        while wait:
            received = self._receive(self.link.heartbeat_interval)
            if received is not None and received[0].kind == Kind.ACK:
                return

    def error(self, text: str) -> None:
        """Report a failure in one line (the trainer logs it with this process's stderr); the
        samples held back go first, so a retry need not compute them again."""
        self.flush()
        self.link.send(protocol.encode_text(Kind.ERROR, self.simulation_id, self.attempt, text[:4000]))

    def close(self) -> None:
        self._slots.unmap()
        self.link.close()

    def __enter__(self) -> SimulationClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _write_to_slot(self, array: np.ndarray, quick: bool, now: float) -> None:
        slots = self._slots
        if slots.written and (not quick or not slots.fits(array)):
            self._announce_slots()  # the simulation slowed down: what is written is announced now
        self._wait_for_credit()
        slots.write(array, now)
        self.credits -= 1
        self.sent += 1
        # a slow simulation announces each sample at once; a quick one what it wrote in the last
        # coalesce_gap (messages carry no payload here, so only time bounds how many; coalesce_bytes
        # 0 still means one sample a message), and always when the next sample would wait for
        # credit: never hold one back then
        if (
            not quick
            or self.credits <= 0
            or now - slots.first_written_at >= self.coalesce_gap
            or not self.coalesce_bytes
        ):
            self._announce_slots()

    def _announce_slots(self) -> None:
        count = self._slots.take_written()
        kind = Kind.SAMPLE if count == 1 else Kind.SAMPLES
        header = protocol.encode_header(
            kind, self.simulation_id, self.attempt, self.sent - count, array=self._slots.view[0], count=count,
            flags=protocol.FLAG_IN_SLOTS,
        )  # fmt: skip
        self.link.send([header, b""])

    def _stage(self, array: np.ndarray) -> None:
        self._wait_for_credit()  # a staged sample holds its credit
        staging = self._staging
        if not self._staging_holds(array):
            count = protocol.samples_per_message(array.nbytes, self.coalesce_bytes)
            staging = self._staging = np.empty((count, *array.shape), array.dtype)
        staging[self._staged] = array
        self._staged += 1
        self.credits -= 1
        self.sent += 1
        if self._staged == len(staging) or self.credits <= 0:
            self.flush()  # full, or the next sample would wait for credit: never hold one back then

    def _staging_holds(self, array: np.ndarray) -> bool:
        staging = self._staging
        return staging is not None and staging.shape[1:] == array.shape and staging.dtype == array.dtype

    def _sample_header(self, array: np.ndarray) -> bytes:
        # a simulation's samples share all header fields but the index: pack them once
        key = (array.shape, array.dtype)
        if self._header[0] != key:
            full = protocol.encode_header(Kind.SAMPLE, self.simulation_id, self.attempt, 0, array=array)
            self._header = (key, full[:24], full[32:])
        _, prefix, suffix = self._header
        return prefix + self.sent.to_bytes(8, "little", signed=True) + suffix

    def _receive(self, timeout: float) -> tuple[protocol.Header, bytes] | None:
        """The trainer's next message within ``timeout`` seconds, credit and stops acted on."""
        message = self.link.receive(timeout)
        if message is None:
            return None
        header, payload = message
        if header.kind == Kind.CREDIT:
            if self._slots.active:
                slots = np.frombuffer(payload, dtype="<i8")
                if len(slots) != header.index:
                    raise protocol.ProtocolError(f"CREDIT of {header.index} names {len(slots)} shared-memory slots")
                self._slots.grant(slots)
            self.credits += header.index
        elif header.kind == Kind.STOP:
            raise StopRequested(payload.decode(errors="replace") or "stopped by the trainer")
        return message

    def _wait_for_credit(self) -> None:
        # take what has arrived without blocking (every few samples: a poll per sample costs more
        # than the send), then block (heartbeating) while no credit is left
        link = self.link
        if self.credits <= 0 or self.sent % 32 == 0:
            while link.pending():
                self._receive(0)
        while self.credits <= 0:
            link.heartbeat(self.simulation_id, self.attempt)
            self._receive(link.heartbeat_interval)


def import_object(path: str) -> Any:
    """``package.module:attr`` or ``package.module.attr`` to the object it names."""
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import {module_name!r} (from {path!r}): {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"{module_name!r} has no attribute {attr!r} (from {path!r})") from None
    return obj


def build_simulator(spec: dict[str, Any]):
    """The simulator a job describes: ``{"target": path, "kwargs": {...}}`` or ``{"pickle": file}``."""
    if "pickle" in spec:
        if not os.path.exists(spec["pickle"]):
            raise FileNotFoundError(
                f"simulator file {spec['pickle']} is not on this host; describe the simulator by import path "
                f"(data.simulator_spec or a launch_spec() method) to run it elsewhere"
            )
        with open(spec["pickle"], "rb") as f:
            try:
                return pickle.load(f)
            except (ImportError, AttributeError) as exc:  # a module or class this interpreter cannot find
                raise ImportError(
                    f"the simulator cannot be rebuilt in its process ({type(exc).__name__}: {exc}); its class must "
                    "be importable in a fresh interpreter: a module on PYTHONPATH, not the script being run"
                ) from None
    target = spec.get("target") or spec.get("_target_")
    if not target:
        raise ValueError(f"simulator spec {spec!r} has neither 'target' nor 'pickle'")
    kwargs = {k: v for k, v in (spec.get("kwargs") or {}).items()}
    return import_object(target)(**kwargs)


def stream(
    client: SimulationClient,
    samples: Iterable[np.ndarray],
    resume_from: int = 0,
    fresh: bool = False,
    limit: int | None = None,
) -> int:
    """Send every sample (skipping the first ``resume_from``, already received from an earlier
    attempt), then ``DONE``; returns how many samples the simulation produced. ``fresh``: see
    :meth:`SimulationClient.send`. ``limit``: the samples the simulator declares
    (``samples_per_run``); one more is a ``ValueError`` (the trainer grants no credit beyond them,
    so it would wait for ever)."""
    client.sent = resume_from  # sample indices on the wire are absolute within the simulation
    samples = iter(samples)
    skipped = sum(1 for _ in itertools.islice(samples, resume_from))
    count = skipped
    send = client.send
    bounded = samples if limit is None else itertools.islice(samples, max(0, limit - skipped))
    for count, sample in enumerate(bounded, start=skipped + 1):  # noqa: B007 (the count is returned)
        send(sample, fresh)
    if limit is not None and count >= limit and next(samples, None) is not None:
        client.flush()  # what it sent is the trainer's; the attempt then fails on the error
        raise ValueError(f"the simulator yields more samples than its samples_per_run ({limit})")
    client.done()
    return count


def _die_with_parent() -> None:
    # Belt and braces with the executor: die with the process that started us (Linux), and if it
    # is already gone, exit now rather than compute for nobody.
    expected = int(os.environ.get(PARENT_PID_ENV, "0") or 0)
    if expected:
        from engage.core.executors import tie_to_parent

        if not tie_to_parent(expected):
            sys.exit(EXIT_TRAINER_GONE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engage.core.online.client",
        description="Run one simulation and stream its samples to an ENGAGE trainer.",
    )
    parser.add_argument("--address", required=True, help="the trainer's address, e.g. tcp://host:5555")
    parser.add_argument("--simulation-id", type=int, required=True)
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--simulator", help="import path of the simulator class (default: as the trainer says)")
    parser.add_argument("--simulator-kwargs", default="{}", help="JSON object of the simulator's arguments")
    parser.add_argument("--connect-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    _die_with_parent()

    try:
        client = SimulationClient(args.address, args.simulation_id, args.attempt, connect_timeout=args.connect_timeout)
    except ValueError as exc:  # no keys, or keys it cannot read: nothing was sent
        print(f"simulation {args.simulation_id}: {exc}", file=sys.stderr)
        return 2
    try:
        job = client.connect()
        spec = {"target": args.simulator, "kwargs": json.loads(args.simulator_kwargs)} if args.simulator else None
        spec = spec or job.simulator
        if not spec:
            raise ValueError("the trainer sent no simulator description; pass --simulator")
        simulator = build_simulator(spec)
        vector = np.asarray(job.vector, dtype=np.float64) if job.vector else job.parameters
        fresh = bool(getattr(simulator, "fresh_samples", False))
        declared = getattr(simulator, "samples_per_run", None)
        stream(client, simulator.run(vector), job.resume_from, fresh=fresh, limit=declared)
    except StopRequested as exc:
        print(f"simulation {args.simulation_id}: stopped by the trainer: {exc}", file=sys.stderr)
        return EXIT_STOPPED
    except TrainerGone as exc:
        print(f"simulation {args.simulation_id}: {exc}", file=sys.stderr)
        return EXIT_TRAINER_GONE
    except Exception as exc:  # report any simulator failure to the trainer, then exit non-zero
        traceback.print_exc()
        try:
            client.error(f"{type(exc).__name__}: {exc}")
        except zmq.ZMQError:
            pass
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
