"""Misbehaving simulations for the online tests, importable by simulation processes.

Run as ``python -m test_online_helpers ADDRESS ID ATTEMPT MODE`` (the tests put this directory on
``PYTHONPATH``); on attempt 1 it misbehaves as MODE says, on later attempts it behaves.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

from engage.core.online import protocol
from engage.core.online.client import SimulationClient, stream
from engage.core.simulators.base import Simulator
from engage.core.space import ParameterSpace

SHAPE = (8, 8)
STEPS = 6


def ramp(parameters: dict, steps: int = STEPS, crash_marker: str | None = None, delay: float = 0.0, nan_at: int = -1):
    """``steps`` fields equal to ``x * (t + 1)``; with ``crash_marker``, the first run to create
    the marker SIGKILLs itself after two samples; sample ``nan_at`` holds one NaN."""
    for t in range(steps):
        if crash_marker and t == 2 and not os.path.exists(crash_marker):
            open(crash_marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(delay)
        field = np.full(SHAPE, parameters["x"] * (t + 1), dtype=np.float32)
        if t == nan_at:
            field[0, 0] = np.nan
        yield field


class Rogue(Simulator):
    """Declares ``(8, 8)`` float32 samples; its processes run :func:`main` with a misbehaviour."""

    space = ParameterSpace.from_config({"x": {"low": 1, "high": 2}})
    sample_shape = SHAPE
    dtype = np.dtype("float32")
    samples_per_run = STEPS

    def __init__(self, mode: str):
        self.mode = mode

    def simulate(self, parameters):
        for t in range(STEPS):
            yield np.full(SHAPE, parameters[0] * (t + 1), dtype=np.float32)

    def launch_command(self, address: str, simulation_id: int, attempt: int) -> list[str]:
        return [sys.executable, "-m", "test_online_helpers", address, str(simulation_id), str(attempt), self.mode]


def main(address: str, simulation_id: int, attempt: int, mode: str) -> None:
    if mode == "elsewhere":  # on a host without the trainer's shared memory: its segment is not here
        import engage.core.online.slot_writer as slot_writer

        def nowhere(name, size=None):
            raise FileNotFoundError(name)

        slot_writer.attach = nowhere
    # a client that did not ask for the trainer's shared memory (and later writes "into" it)
    client = SimulationClient(
        address,
        simulation_id,
        attempt,
        connect_timeout=30,
        shared_memory=not (mode == "slots-unmapped" and attempt == 1),
    )
    job = client.connect()
    x = job.vector[0]
    good = (np.full(SHAPE, x * (t + 1), dtype=np.float32) for t in range(STEPS))
    if attempt > 1 and mode == "overlap":
        # a client that ignores resume_from: the trainer must skip what it already has (credit
        # comes for the samples left, 4: samples 0-3, then 4-5)
        samples = np.stack(list(good))
        for start, stop in ((0, 4), (4, STEPS)):
            while client.credits < stop - start:
                client._receive(1.0)
            header = protocol.encode_header(
                protocol.Kind.SAMPLES, simulation_id, attempt, start, array=samples[0], count=stop - start
            )
            client.link.socket.send_multipart([header, samples[start:stop]])
            client.credits -= stop - start
        client.sent = STEPS
        client.done()
        client.close()
        return
    if attempt > 1 or mode in ("good", "elsewhere"):
        stream(client, good, job.resume_from)
        client.close()
        return
    if mode == "shape":
        client.send(np.zeros((4, 4), dtype=np.float32))
    elif mode == "truncated":
        client._wait_for_credit()
        header = protocol.encode_header(protocol.Kind.SAMPLE, simulation_id, attempt, 0, array=np.zeros(SHAPE, "f4"))
        client.link.socket.send_multipart([header, b"\0" * 100])
    elif mode in ("extra-frame", "header-only"):
        client._wait_for_credit()
        sample = np.zeros(SHAPE, "f4")
        header = protocol.encode_header(protocol.Kind.SAMPLE, simulation_id, attempt, 0, array=sample)
        client.link.socket.send_multipart([header, sample, b"more"] if mode == "extra-frame" else [header])
    elif mode in ("several-partial", "several-truncated"):
        client._wait_for_credit()
        samples = np.zeros((2, *SHAPE), "f4")
        header = protocol.encode_header(protocol.Kind.SAMPLES, simulation_id, attempt, 0, array=samples[0], count=2)
        if mode == "several-partial":  # one and a half samples, the header agreeing
            header = header[:48] + (384).to_bytes(8, "little")
        client.link.socket.send_multipart([header, samples.tobytes()[:384]])
    elif mode in ("slots-payload", "slots-unmapped"):
        client._wait_for_credit()
        sample = np.zeros(SHAPE, "f4")
        header = protocol.encode_header(
            protocol.Kind.SAMPLE, simulation_id, attempt, 0, array=sample, flags=protocol.FLAG_IN_SLOTS
        )
        client.link.socket.send_multipart([header, sample if mode == "slots-payload" else b""])
    elif mode == "overlap":
        client.coalesce_bytes = 0
        for sample in list(good)[:2]:
            client.send(sample)
        client.flush()
        time.sleep(1)  # both samples arrive before the process dies
        os._exit(1)
    elif mode == "silent":
        client.send(next(good))
        time.sleep(600)
    time.sleep(30)  # the trainer must notice on its own and kill us
    client.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
