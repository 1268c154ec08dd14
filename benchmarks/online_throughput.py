"""Throughput of online training's transport: simulator send -> sample in the training buffer.

Compares, with 1, 2 and 4 local simulation processes and 64x64, 256x256 and 1024x1024 float32
samples:

- ``engage``: the full path (client with credit flow control -> ROUTER socket in a scheduler
  thread of this process -> validation -> copy into the TrainingBuffer), a consumer thread
  draining batches so that the buffer never limits;
- ``raw_zmq``: the same frames from the same number of processes to a bare ROUTER socket that
  only receives them (no flow control, no validation, no copy): the transport's limit here;
- ``ring_copy``: copying one in-memory frame into a numpy ring in this process (memory bandwidth).

Run: ``python benchmarks/online_throughput.py``; prints a table and writes
``benchmarks/results/online_throughput.json``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

HERE = Path(__file__).resolve().parent
SIZES = {"64x64": 64, "256x256": 256, "1024x1024": 1024}
TOTAL = {64: 40000, 256: 6000, 1024: 400}  # samples per measurement (a few seconds each)


def frames(parameters: dict, side: int = 64, count: int = 100):
    """Yield the same field ``count`` times (no compute: the benchmark measures transport)."""
    field = np.full((side, side), parameters["x"], dtype=np.float32)
    for _ in range(count):
        yield field


def raw_sender(address: str, side: int, count: int) -> None:
    from engage.core.online import protocol

    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 64)
    sock.connect(address)
    field = np.zeros((side, side), dtype=np.float32)
    for i in range(count):
        header = protocol.encode_header(protocol.Kind.SAMPLE, 0, 1, i, array=field)
        sock.send_multipart([header, field], copy=field.nbytes < zmq.COPY_THRESHOLD)
    sock.send_multipart([b"end", b""])
    sock.close(linger=-1)
    context.term()


def measure_raw(processes: int, side: int) -> float:
    per = TOTAL[side] // processes
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.RCVHWM, 64)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    senders = [
        subprocess.Popen(
            [sys.executable, __file__, "--raw-sender", f"tcp://127.0.0.1:{port}", str(side), str(per)], env=env
        )
        for _ in range(processes)
    ]
    received, ended, first = 0, 0, None
    while ended < processes:
        message = sock.recv_multipart(copy=False)
        if message[1].bytes == b"end":
            ended += 1
            continue
        if first is None:
            first = time.perf_counter()
        received += 1
    elapsed = time.perf_counter() - first
    for s in senders:
        s.wait(30)
    sock.close(0)
    context.term()
    return (received - 1) / elapsed


def measure_engage(processes: int, side: int) -> tuple[float, float]:
    from engage.core.online.buffer import TrainingBuffer
    from engage.core.online.scheduler import SimulationScheduler
    from engage.core.samplers.uniform import UniformSampler
    from engage.core.simulators.function import FunctionSimulator

    per = TOTAL[side] // processes
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    sim = FunctionSimulator(
        "online_throughput:frames", {"x": {"low": 0, "high": 1}}, (side, side), samples_per_run=per,
        kwargs={"side": side, "count": per},
    )  # fmt: skip
    buffer = TrainingBuffer(capacity=max(256, 8 * processes * 16) if side < 1024 else 64, policy="fifo")
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space), buffer, simulations=processes, concurrency=processes,
        credit_window=64 if side < 1024 else 8,
    )  # fmt: skip
    arrivals: list[float] = []

    def consume() -> None:
        while True:
            batch = buffer.get_batch(1)
            if batch is None:
                return
            arrivals.append(time.perf_counter())

    consumer = threading.Thread(target=consume)
    consumer.start()
    scheduler.start()
    consumer.join()
    scheduler.join(30)
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    return rate, buffer.wait_seconds


def measure_ring(side: int) -> float:
    field = np.random.default_rng(0).random((side, side), dtype=np.float32)
    ring = np.empty((64, side, side), dtype=np.float32)
    n = TOTAL[side] * 2
    started = time.perf_counter()
    for i in range(n):
        ring[i % 64] = field
    return n / (time.perf_counter() - started)


def main() -> None:
    rows = []
    for label, side in SIZES.items():
        nbytes = side * side * 4
        ring = measure_ring(side)
        for processes in (1, 2, 4):
            raw = measure_raw(processes, side)
            engage, _ = measure_engage(processes, side)
            row = {
                "size": label,
                "sample_bytes": nbytes,
                "processes": processes,
                "engage_samples_per_s": round(engage, 1),
                "engage_GB_per_s": round(engage * nbytes / 1e9, 3),
                "raw_zmq_samples_per_s": round(raw, 1),
                "raw_zmq_GB_per_s": round(raw * nbytes / 1e9, 3),
                "engage_vs_raw": round(engage / raw, 3),
                "ring_copy_GB_per_s": round(ring * nbytes / 1e9, 2),
            }
            rows.append(row)
            print(
                f"{label:>9} x{processes}: engage {engage:9.0f}/s {row['engage_GB_per_s']:6.2f} GB/s | raw zmq "
                f"{raw:9.0f}/s {row['raw_zmq_GB_per_s']:6.2f} GB/s | ratio {row['engage_vs_raw']:.2f} | "
                f"ring copy {row['ring_copy_GB_per_s']:.1f} GB/s",
                flush=True,
            )
    result = {
        "benchmark": "online_throughput",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "rows": rows,
    }
    out = HERE / "results" / "online_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--raw-sender":
        raw_sender(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
