#!/usr/bin/env python3
"""A damped travelling wave on a 16x16 grid, written against the wire protocol alone.

It imports neither ENGAGE nor its client: only pyzmq and numpy, as a program in any other
language would use libzmq (``docs/protocol.md``). Usage::

    travelling_wave.py ADDRESS SIMULATION_ID ATTEMPT [STEPS]

It connects a ``DEALER`` socket to the trainer at ``ADDRESS`` (a CURVE client with the keys the
trainer gave it through its environment), sends ``HELLO``, reads its ``JOB``
(parameters ``frequency`` and ``damping``, the sample to resume from), then sends one ``SAMPLE``
per step as credit allows, with a ``HEARTBEAT`` whenever it has sent nothing for a heartbeat
interval, then ``DONE``, and exits once the trainer acknowledged every sample. A trainer silent
for ``server_timeout`` seconds or a ``STOP`` ends it; a job it cannot run is answered with
``ERROR``. The sample of step ``t`` is
``exp(-damping * t * dt) * sin(frequency * (x - t * dt)) * cos(frequency * y)`` on ``[0, 2 pi]^2``.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

import numpy as np
import zmq

HEADER = struct.Struct("<4sBBBBqIIq4IQ")  # magic, version, kind, dtype, ndim, id, attempt, flags, index, shape, nbytes
HELLO, SAMPLE, DONE, HEARTBEAT, ERROR = 1, 2, 3, 4, 5
JOB, CREDIT, STOP, ACK = 16, 17, 18, 19
FLOAT32 = 1
GRID, DT = 16, 0.1


class Stopped(Exception):
    """The trainer stopped this simulation or went silent."""


def header(kind: int, sid: int, attempt: int, index: int = 0, shape: tuple[int, ...] = (), nbytes: int = 0) -> bytes:
    dims = list(shape) + [0] * (4 - len(shape))
    return HEADER.pack(b"ENGM", 1, kind, FLOAT32 if shape else 0, len(shape), sid, attempt, 0, index, *dims, nbytes)


def field(frequency: float, damping: float, step: int) -> np.ndarray:
    x, y = np.meshgrid(np.linspace(0, 2 * np.pi, GRID), np.linspace(0, 2 * np.pi, GRID), indexing="ij")
    t = step * DT
    return (np.exp(-damping * t) * np.sin(frequency * (x - t)) * np.cos(frequency * y)).astype("<f4")


def trainer_keys() -> dict | None:
    """The CURVE keys the trainer issued to this attempt: JSON in the file ``ENGAGE_KEY_FILE``
    names, or in ``ENGAGE_KEYS``; None when the trainer listens on ``ipc://`` (no keys)."""
    text = os.environ.get("ENGAGE_KEYS")
    if not text and os.environ.get("ENGAGE_KEY_FILE"):
        with open(os.environ["ENGAGE_KEY_FILE"]) as f:
            text = f.read()
    return json.loads(text) if text else None


class Connection:
    """The conversation with the trainer: credit, heartbeats in both directions, its silence."""

    def __init__(self, address: str, sid: int, attempt: int):
        self.sid, self.attempt = sid, attempt
        self.context = zmq.Context()
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 2000)
        keys = trainer_keys()
        if keys is not None:  # a CURVE client with the keys the trainer issued to this attempt
            self.sock.curve_serverkey = keys["server"].encode()
            self.sock.curve_publickey = keys["public"].encode()
            self.sock.curve_secretkey = keys["secret"].encode()
        self.sock.connect(address)
        self.credits, self.job = 0, None
        self.beat, self.server_timeout = 1.0, 60.0
        self.heard = self.sent = time.monotonic()

    def send(self, kind: int, payload: bytes = b"", index: int = 0, shape: tuple[int, ...] = ()) -> None:
        self.sock.send_multipart([header(kind, self.sid, self.attempt, index, shape, len(payload)), payload])
        self.sent = time.monotonic()

    def receive(self) -> int | None:
        """Wait up to the next heartbeat for one message from the trainer; its kind, or None."""
        wait = max(0.0, self.sent + self.beat - time.monotonic())
        if self.sock.poll(int(wait * 1000) + 1):
            frames = self.sock.recv_multipart()
            fields = HEADER.unpack(frames[0])
            kind, index = fields[2], fields[8]
            self.heard = time.monotonic()
            if kind == JOB:
                self.job = json.loads(frames[1])
                self.beat = float(self.job.get("heartbeat_interval", self.beat))
                self.server_timeout = float(self.job.get("server_timeout", self.server_timeout))
            elif kind == CREDIT:
                self.credits += index
            elif kind == STOP:
                raise Stopped(f"the trainer stopped this simulation: {frames[1].decode(errors='replace')}")
            return kind
        if time.monotonic() - self.heard > self.server_timeout:
            raise Stopped(f"no word from the trainer for {self.server_timeout:g} s")
        if time.monotonic() - self.sent >= self.beat:
            self.send(HEARTBEAT)  # nothing sent for an interval: tell the trainer this simulation lives
        return None

    def close(self) -> None:
        self.sock.close()
        self.context.term()


def main(address: str, sid: int, attempt: int, steps: int = 20) -> int:
    conn = Connection(address, sid, attempt)
    try:
        conn.send(HELLO, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "protocol": 1}).encode())
        while conn.job is None:
            conn.receive()
        try:
            frequency = float(conn.job["parameters"]["frequency"])
            damping = float(conn.job["parameters"]["damping"])
        except (KeyError, TypeError, ValueError) as exc:
            conn.send(ERROR, f"the job needs numeric parameters frequency and damping ({exc!r})".encode())
            return 1
        for step in range(int(conn.job.get("resume_from", 0)), steps):
            sample = field(frequency, damping, step)
            while conn.credits == 0:
                conn.receive()
            conn.send(SAMPLE, sample.tobytes(), index=step, shape=sample.shape)
            conn.credits -= 1
        conn.send(DONE, index=steps)
        while conn.receive() != ACK:  # every sample arrived once the trainer says so
            pass
        return 0
    except Stopped as exc:
        print(exc, file=sys.stderr)
        return 1
    finally:
        conn.close()


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit("usage: travelling_wave.py ADDRESS SIMULATION_ID ATTEMPT [STEPS]")
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) == 5 else 20))
