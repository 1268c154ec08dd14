"""A simulation program that speaks the protocol with its own keys but misbehaves in one way
(``MODE``), for the trainer's tests: ``done-twice`` sends every sample, then ``DONE`` three
times and a sample after them; ``bad-hello`` opens with a ``HELLO`` too deeply nested to read;
``stuck`` sends one sample, then only heartbeats, as a solver stuck beside a live thread.

Usage: ``python misbehaving_simulation.py ADDRESS SIMULATION_ID ATTEMPT MODE``
"""

from __future__ import annotations

import json
import os
import sys
import time

from engage.core.simulators.executable import TRAVELLING_WAVE

sys.path.insert(0, os.path.dirname(TRAVELLING_WAVE))
from travelling_wave import DONE, HEARTBEAT, HELLO, SAMPLE, Connection, field

STEPS = 3


def main(address: str, sid: int, attempt: int, mode: str) -> int:
    conn = Connection(address, sid, attempt)
    if mode == "bad-hello":
        conn.send(HELLO, b'{"pid": ' + b"[" * 5_000 + b"]" * 5_000 + b"}")
        time.sleep(30)  # the trainer fails this attempt long before
        return 1
    conn.send(HELLO, json.dumps({"pid": os.getpid(), "host": "x", "protocol": 1}).encode())
    while conn.job is None:
        conn.receive()
    frequency, damping = float(conn.job["parameters"]["frequency"]), float(conn.job["parameters"]["damping"])
    if mode == "stuck":
        while conn.credits == 0:
            conn.receive()
        sample = field(frequency, damping, 0)
        conn.send(SAMPLE, sample.tobytes(), index=0, shape=sample.shape)
        for _ in range(300):  # a minute of heartbeats, holding the rest of its credit
            conn.send(HEARTBEAT)
            time.sleep(0.2)
        return 1
    for step in range(STEPS):
        while conn.credits == 0:
            conn.receive()
        sample = field(frequency, damping, step)
        conn.send(SAMPLE, sample.tobytes(), index=step, shape=sample.shape)
        conn.credits -= 1
    for _ in range(3):
        conn.send(DONE, index=STEPS)
    conn.send(SAMPLE, sample.tobytes(), index=STEPS, shape=sample.shape)
    time.sleep(1)  # every message reached the trainer
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
