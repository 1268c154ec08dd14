#!/usr/bin/env python3
"""A damped travelling wave on a 16x16 grid, written against the wire protocol alone.

It imports neither ENGAGE nor its client: only pyzmq and numpy, as a program in any other
language would use libzmq. ``travelling_wave.py ADDRESS SIMULATION_ID ATTEMPT [STEPS]``:
connects a ``DEALER`` socket to the trainer, sends ``HELLO``, reads its ``JOB`` (parameters
``frequency`` and ``damping``, the sample to resume from), then sends one ``SAMPLE`` per step as
credit allows, answering the trainer's heartbeats, then ``DONE``, and exits once the trainer
acknowledged every sample. The sample of step ``t`` is
``exp(-damping * t * dt) * sin(frequency * (x - t * dt)) * cos(frequency * y)`` on ``[0, 2 pi]^2``.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys

import numpy as np
import zmq

HEADER = struct.Struct("<4sBBBBqIIq4IQ")  # magic, version, kind, dtype, ndim, id, attempt, flags, index, shape, nbytes
HELLO, SAMPLE, DONE, HEARTBEAT, ERROR = 1, 2, 3, 4, 5
JOB, CREDIT, STOP, ACK = 16, 17, 18, 19
FLOAT32 = 1
GRID, DT = 16, 0.1


def header(kind: int, sid: int, attempt: int, index: int = 0, shape: tuple[int, ...] = (), nbytes: int = 0) -> bytes:
    dims = list(shape) + [0] * (4 - len(shape))
    return HEADER.pack(b"ENGM", 1, kind, FLOAT32 if shape else 0, len(shape), sid, attempt, 0, index, *dims, nbytes)


def field(frequency: float, damping: float, step: int) -> np.ndarray:
    x, y = np.meshgrid(np.linspace(0, 2 * np.pi, GRID), np.linspace(0, 2 * np.pi, GRID), indexing="ij")
    t = step * DT
    return (np.exp(-damping * t) * np.sin(frequency * (x - t)) * np.cos(frequency * y)).astype("<f4")


def main(address: str, sid: int, attempt: int, steps: int = 20) -> int:
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.IDENTITY, f"sim-{sid}-{attempt}".encode())
    sock.connect(address)
    hello = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "protocol": 1}).encode()
    sock.send_multipart([header(HELLO, sid, attempt, nbytes=len(hello)), hello])
    credits, job, beat = 0, None, 1.0

    def receive(timeout_s: float) -> int | None:
        """Handle one message from the trainer; its kind, or None after ``timeout_s``."""
        nonlocal credits, job, beat
        if not sock.poll(int(timeout_s * 1000)):
            return None
        frames = sock.recv_multipart()
        kind, index = HEADER.unpack(frames[0])[2], HEADER.unpack(frames[0])[8]
        if kind == JOB:
            job = json.loads(frames[1])
            beat = float(job.get("heartbeat_interval", 1.0))
        elif kind == CREDIT:
            credits += index
        elif kind == STOP:
            raise SystemExit(f"the trainer stopped this simulation: {frames[1].decode(errors='replace')}")
        return kind

    while job is None:
        if receive(60.0) is None:
            print("no JOB from the trainer within 60 s", file=sys.stderr)
            return 1
    frequency, damping = float(job["parameters"]["frequency"]), float(job["parameters"]["damping"])
    for step in range(int(job.get("resume_from", 0)), steps):
        while credits == 0:  # wait for credit, telling the trainer this simulation is alive
            if receive(beat) is None:
                sock.send_multipart([header(HEARTBEAT, sid, attempt), b""])
        sample = field(frequency, damping, step)
        sock.send_multipart([header(SAMPLE, sid, attempt, step, sample.shape, sample.nbytes), sample.tobytes()])
        credits -= 1
    sock.send_multipart([header(DONE, sid, attempt, steps), b""])
    for _ in range(int(60 / beat) + 1):  # every sample arrived once the trainer says so
        if receive(beat) == ACK:
            break
    else:
        print("no ACK from the trainer within 60 s", file=sys.stderr)
        return 1
    sock.close()
    context.term()
    return 0


if __name__ == "__main__":
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), steps))
