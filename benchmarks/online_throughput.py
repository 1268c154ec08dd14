"""Throughput of online training's transport: simulator send -> sample in the training buffer.

Compares, with 1, 2 and 4 local simulation processes and 64x64, 256x256 and 1024x1024 float32
samples:

- ``engage``: the full path over CURVE (the default ``transport_security``: each simulation
  authenticated and its messages encrypted; client with credit flow control -> ROUTER socket in a scheduler
  thread of this process -> validation -> sample in the TrainingBuffer: read into its slot, or
  kept by reference from 256 KiB), measured as the rate at which samples enter the buffer (the
  DataModule's default capacity of 8192 samples, at most 1 GiB of them, or the whole run if
  smaller: at 4 MiB, 256 slots that are filled again and again) while a consumer thread frees it
  by taking batches without their samples (``get_batch(target=False)``: read and gone, nothing
  copied, as bare pyzmq's receiver drops its messages): the transport's own figure;
- ``engage_with_batches``: the same, while the consumer gathers each batch into one reused array
  as a training loop does: the batch's copy is the one the path has to make, and it runs on the
  same 2 cores as the transport;
- ``batches_reused``: those runs measured at the consumer, samples out of the buffer;
- ``to_batch``: the same, gathering into a new array each time, as the DataModule's loader does;
- ``raw_zmq``: the same samples, one per message, from the same number of processes to a bare
  ROUTER socket that only receives them (no flow control, no validation, no copy): the
  transport's limit here for a sender that sends each sample as it comes;
- ``raw_zmq_same_frames``: the same, with as many samples per message as the ENGAGE client puts
  in one when a simulation sends quickly (``SAMPLES`` messages of up to ``coalesce_bytes``;
  only 64x64 samples are small enough), already stacked: the transport's limit for the frames
  ENGAGE sends;
- ``raw_zmq_curve``: ``raw_zmq`` with CURVE on both ends (any client key: the encryption's
  cost alone), the baseline of ``engage``; ``engage_ipc`` and ``raw_zmq_ipc``: both over an
  ``ipc://`` socket file (``transport_security="ipc"``, local simulations, no encryption);
- ``raw_zmq_ipc_held``: ``raw_zmq_ipc`` whose receiver keeps each message until as many newer
  ones arrived as the consumer takes in a batch, as any buffer feeding batches must: libzmq
  then receives each message into memory that is no longer the one it just freed, hot in the
  cache (the cost of holding samples at all, which ``raw_zmq`` never pays);
- ``ring_copy``: copying one in-memory frame into successive slots of a numpy ring in this
  process as large as the buffer in bytes (at least 256 MiB: memory bandwidth, not the caches),
  measured in each round beside the rest, since this host's memory bandwidth drifts too;
- ``shared_memory``: the ``engage`` measurement with the same-host path on (``shared_memory=True``,
  the DataModule's default): the buffer's block in shared memory, each simulation writing its
  samples into the slots its credit names, messages without payload. Reported against bare
  pyzmq and against ``ring_copy``, the cost of the one copy a simulation then makes; and
  ``shared_memory_with_batches``, with the consumer gathering batches. It streams ten times as
  many samples as the socket measurements (``SHARED_TOTAL``, about a second), so that the
  simulations' start-up does not make most of the figure; ``shared_memory_short`` is the same
  measurement with the socket measurements' count.

Bare pyzmq runs in this process with the allocator set as the trainer sets it for frames it keeps
by reference (:mod:`engage.core.online.allocator`), so both sides reuse freed frame memory.

Then, for training itself (64x64 heat equation, :class:`~engage.core.models.HeatSurrogate`):

- ``data_wait``: the fraction of training-step time spent waiting for data when simulators
  outpace the model (first-in-random-out buffer, each sample read once);
- ``online_vs_offline``: wall time from start to a validation relative L2 error of
  ``TARGET_REL_L2``, online (simulations stream while training) and offline (the same
  simulations run first with ``SimulatedDataModule``, then epochs), same model and settings.

Each figure is the median of ``REPEAT`` interleaved repetitions; a ratio is the median of the
ratios within each repetition, whose runs follow one another (``engage_vs_raw_of_medians`` is
the ratio of the medians, for comparison).

Run: ``python benchmarks/online_throughput.py`` (``--help`` for the options; ``--quick``: one
repetition of 64x64 and 1024x1024 with 1 process, no training figures, in about a minute);
prints a table and writes ``benchmarks/results/online_throughput.json`` (``--out`` elsewhere).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

HERE = Path(__file__).resolve().parent
SIZES = {"64x64": 64, "256x256": 256, "1024x1024": 1024}
# Samples per measurement: a few seconds each over sockets. At 256 KiB, 6,000 samples lasted half
# a second over ipc, in which the simulations started one after the other still import their
# modules (about 0.1 s of CPU each) beside the first one streaming: a start-up figure, not a
# transport's. 16,000 last 1-4 s.
TOTAL = {64: 40000, 256: 16000, 1024: 800}
# The shared-memory path is ten times faster: TOTAL there lasts a tenth of a second, of which the
# simulations' start-up (tens of milliseconds each, one after another) takes a good part. These
# keep it streaming for about a second; the short count is measured too (``shared_memory_short``).
SHARED_TOTAL = {64: 400000, 256: 48000, 1024: 3200}
TARGET_REL_L2 = 0.05
REPEAT = 3


def frames(parameters: dict, side: int = 64, count: int = 100):
    """Yield the same field ``count`` times (no compute: the benchmark measures transport).

    Nothing ever writes the field, so the simulator may declare ``fresh_samples``."""
    field = np.full((side, side), parameters["x"], dtype=np.float32)
    for _ in range(count):
        yield field


def raw_sender(address: str, side: int, count: int, per_message: int = 1, server_key: str = "") -> None:
    from engage.core.online import protocol

    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 64)
    if server_key:  # a CURVE client, as an ENGAGE simulation is by default
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server_key.encode(), public, secret
    sock.connect(address)
    frame = np.zeros((per_message, side, side), dtype=np.float32)
    kind = protocol.Kind.SAMPLE if per_message == 1 else protocol.Kind.SAMPLES
    for i in range(0, count, per_message):
        header = protocol.encode_header(kind, 0, 1, i, array=frame[0], count=per_message)
        sock.send_multipart([header, frame], copy=frame.nbytes < zmq.COPY_THRESHOLD)
    sock.send_multipart([b"end", b""])
    sock.close(linger=-1)
    context.term()


def measure_raw(processes: int, side: int, per_message: int = 1, security: str = "none", hold: int = 0) -> float:
    """Bare pyzmq: ``security`` ``none`` (plain TCP), ``curve`` (CURVE over TCP, any client key:
    the encryption's cost, without ENGAGE's key checks) or ``ipc`` (a socket file). ``hold``:
    the receiver keeps each message until that many newer ones arrived (0: drops it at once)."""
    import collections
    import tempfile

    per = TOTAL[side] // processes // per_message * per_message
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.RCVHWM, 64)
    server_key = ""
    if security == "curve":
        public, secret = zmq.curve_keypair()
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
        server_key = public.decode()
    if security == "ipc":
        folder = tempfile.mkdtemp(prefix="engage-bench-")
        address = f"ipc://{folder}/raw"
        sock.bind(address)
    else:
        address = f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, __file__, "--raw-sender", address, str(side), str(per), str(per_message), server_key]
    senders = [subprocess.Popen(command, env=env) for _ in range(processes)]
    received, ended, first = 0, 0, None
    held: collections.deque = collections.deque(maxlen=hold or None)
    while ended < processes:
        message = sock.recv_multipart(copy=False)
        if message[1].bytes == b"end":
            ended += 1
            continue
        if first is None:
            first = time.perf_counter()
        received += per_message
        if hold:
            held.append(message)
    elapsed = time.perf_counter() - first
    for s in senders:
        s.wait(30)
    sock.close(0)
    context.term()
    return (received - per_message) / elapsed


def measure_engage(
    processes: int, side: int, batches: str = "reused", shared_memory: bool = False, security: str = "curve",
    total: int | None = None,
) -> tuple[float, float]:  # fmt: skip
    """Samples per second (into the buffer, out of it in batches) from the simulations' sends,
    while a consumer thread frees the buffer by taking batches: without their samples
    (``batches="none"``: they are read and leave, nothing is copied, as bare pyzmq's receiver
    drops its messages), gathered into one reused array (``"reused"``), or into a new array each
    time (``"new"``, as the DataModule's loader does).

    Into the buffer is the transport's figure: the rate at which samples sit in the buffer,
    sampled every 5 ms from its insertion counter while the consumer runs beside it."""
    from engage.core.online.buffer import TrainingBuffer
    from engage.core.online.scheduler import SimulationScheduler
    from engage.core.samplers.uniform import UniformSampler
    from engage.core.simulators.function import FunctionSimulator

    per = (total or TOTAL[side]) // processes
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    sim = FunctionSimulator(
        "online_throughput:frames", {"x": {"low": 0, "high": 1}}, (side, side), samples_per_run=per, fresh_samples=True,
        kwargs={"side": side, "count": per},
    )  # fmt: skip
    take = batch_size(side)
    capacity = min(8192, per * processes, (1 << 30) // (side * side * 4))  # the DataModule's default, <= 1 GiB
    buffer = TrainingBuffer(capacity=capacity, policy="fifo")
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space), buffer, simulations=processes, concurrency=processes,
        shared_memory=shared_memory, transport_security=security,
    )  # fmt: skip
    marks: list[tuple[float, int]] = []  # (time, samples taken so far)
    out = np.empty((take, side, side), np.float32) if batches == "reused" else None

    def consume() -> None:
        count = 0
        while (batch := buffer.get_batch(take, out=out, target=batches != "none")) is not None:
            count += len(batch["simulation_id"])
            marks.append((time.perf_counter(), count))

    inserted: list[tuple[float, int]] = []  # (time, samples in the buffer so far), on change
    total = per * processes

    def watch() -> None:
        while not inserted or inserted[-1][1] < total:
            count = buffer.inserted
            if count and (not inserted or count != inserted[-1][1]):
                inserted.append((time.perf_counter(), count))
            if scheduler.error:
                return
            time.sleep(0.005)

    consumer = threading.Thread(target=consume)
    watcher = threading.Thread(target=watch, daemon=True)
    consumer.start()
    watcher.start()
    scheduler.start()
    scheduler.join(120)
    consumer.join()
    watcher.join(5)
    if scheduler.error or buffer.inserted != total:
        raise RuntimeError(f"benchmark run lost samples: {buffer.inserted} of {total} ({scheduler.error})")
    if shared_memory and scheduler.shared_memory_samples != total:
        raise RuntimeError(f"only {scheduler.shared_memory_samples} of {total} samples came through shared memory")
    if len(marks) < 2 or len(inserted) < 2:
        raise RuntimeError("the run was too short to time: raise TOTAL for this size")
    (t0, n0), (t1, n1) = marks[0], marks[-1]
    (i0, c0), (i1, c1) = inserted[0], inserted[-1]
    return (c1 - c0) / (i1 - i0), (n1 - n0) / (t1 - t0)


def batch_size(side: int) -> int:
    """Samples the consumer takes at once, so at least as many the buffer holds until then."""
    return 64 if side < 1024 else 16


def ring_slots(side: int) -> int:
    """Slots of the ``ring_copy`` baseline: as many bytes as the buffer the shared-memory runs
    fill (the DataModule's default capacity, at most 1 GiB), and at least 256 MiB, so that the
    baseline is memory bandwidth, as the buffer's is, not a copy within the caches."""
    nbytes = side * side * 4
    return max(256 << 20, min(8192 * nbytes, 1 << 30)) // nbytes


def measure_ring(side: int) -> float:
    """Samples per second copied from one in-memory field into successive slots of a ring as
    large as the buffer (:func:`ring_slots`): the one copy the shared-memory path makes."""
    field = np.random.default_rng(0).random((side, side), dtype=np.float32)
    slots = ring_slots(side)
    ring = np.empty((slots, side, side), dtype=np.float32)
    ring[:] = field  # the steady state: first touches of the ring's pages are not copies
    n = max(TOTAL[side] * 2, 2 * slots)
    started = time.perf_counter()
    for i in range(n):
        ring[i % slots] = field
    return n / (time.perf_counter() - started)


def measure_data_wait(steps: int = 150) -> dict:
    """Training steps of the heat surrogate fed by simulators faster than the model."""
    import torch

    from engage.core.models import HeatSurrogate
    from engage.core.online.buffer import TrainingBuffer
    from engage.core.online.scheduler import SimulationScheduler
    from engage.core.samplers.uniform import UniformSampler
    from engage.core.simulators.function import FunctionSimulator

    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    torch.set_num_threads(1)  # as OnlineDataModule does on 2 cores with local simulations
    sim = FunctionSimulator(
        "online_throughput:frames", {"x": {"low": 0, "high": 1}}, (64, 64), samples_per_run=8000,
        kwargs={"side": 64, "count": 8000}, value_range=(0.0, 1.0),
    )  # fmt: skip
    buffer = TrainingBuffer(capacity=4096, policy="firo", watermark=1024)
    scheduler = SimulationScheduler(sim, UniformSampler(sim.space), buffer, simulations=2, concurrency=2)
    model = HeatSurrogate(1, (64, 64), (0.0, 1.0), width=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler.start()
    buffer.get_batch(64, timeout=120)  # past the watermark: the steady state is measured
    waited, started = buffer.wait_seconds, time.perf_counter()
    for _ in range(steps):
        batch = buffer.get_batch(64, timeout=120)
        prediction = model(torch.from_numpy(batch["parameters"]), torch.from_numpy(batch["time"]))
        loss = torch.nn.functional.mse_loss(prediction, torch.from_numpy(batch["target"]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    elapsed = time.perf_counter() - started
    scheduler.stop()
    wait = buffer.wait_seconds - waited
    return {"steps": steps, "step_ms": round(1000 * elapsed / steps, 2), "data_wait_fraction": round(wait / elapsed, 4)}


def measure_time_to_error(mode: str, simulations: int = 32, max_seconds: float = 100.0) -> dict:
    """Wall time from start (simulations included) to ``TARGET_REL_L2`` on held-out simulations."""
    import tempfile

    import lightning.pytorch as pl
    import torch

    from engage.core.data import SimulatedDataModule
    from engage.core.models import HeatSurrogate
    from engage.core.online import OnlineDataModule
    from engage.core.samplers.uniform import UniformSampler
    from engage.core.simulators import HeatEquation

    class StopAtTarget(pl.Callback):
        reached: float | None = None

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            error = trainer.callback_metrics.get("val/rel_l2")
            if error is not None and float(error) < TARGET_REL_L2 and self.reached is None:
                self.reached = time.perf_counter() - started
                trainer.should_stop = True

    started = time.perf_counter()
    pl.seed_everything(0, verbose=False)
    torch.set_num_threads(1)
    sim = HeatEquation(grid=64, steps=100)
    sampler = UniformSampler(sim.space, seed=0)
    common = {"val_simulations": 4, "batch_size": 64}
    if mode == "online":
        dm = OnlineDataModule(
            sim, sampler, simulations=simulations, concurrency=1, capacity=8192, policy="reservoir",
            batches_per_epoch=25, workdir=tempfile.mkdtemp(prefix="engage-bench-"), train_threads=1,
            min_completed=0.0,  # training stops at the target error, before every simulation has run
            **common,
        )  # fmt: skip
        interval: dict = {}
    else:
        dm = SimulatedDataModule(sim, sampler, train_simulations=simulations, **common)
        interval = {"val_check_interval": 25}
    model = HeatSurrogate(5, (64, 64), sim.value_range, width=32, lr_schedule="constant", samples_per_run=100)
    stop = StopAtTarget()
    trainer = pl.Trainer(
        max_epochs=1000, max_time={"seconds": max_seconds}, accelerator="cpu", logger=False, callbacks=[stop],
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
        **interval,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return {
        "mode": mode,
        "simulations": simulations,
        "target_rel_l2": TARGET_REL_L2,
        "seconds_to_target": None if stop.reached is None else round(stop.reached, 1),
        "final_rel_l2": round(float(trainer.callback_metrics["val/rel_l2"]), 4),
        "steps": int(trainer.global_step),
    }


def ratios(runs: list[tuple[float, ...]], column: int, baseline: int = 0) -> list[float]:
    """``run[column] / run[baseline]`` of each repetition, whose runs follow one another."""
    return [round(run[column] / run[baseline], 3) for run in runs]


def paired(runs: list[tuple[float, ...]], column: int, baseline: int = 0) -> float:
    """The median of :func:`ratios`: each repetition measures both back to back, so this cancels
    the host's drift between repetitions, which a ratio of medians mixes in."""
    return statistics.median(ratios(runs, column, baseline))


def parse_args(argv: list[str] | None = None):
    import argparse

    from _cli import check_out, whole

    parser = argparse.ArgumentParser(
        description="Throughput of online training's transport against bare pyzmq and a memory copy (JSON figures)."
    )
    parser.add_argument(
        "--quick", action="store_true", help="64x64 and 1024x1024, 1 process, 1 repetition, no training"
    )
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), help="sample sizes (default: all)")
    parser.add_argument("--processes", nargs="+", type=whole(), help="simulation processes (default: 1 2 4)")
    parser.add_argument("--repeat", type=whole(), help=f"interleaved repetitions per cell (default: {REPEAT})")
    parser.add_argument("--no-training", action="store_true", help="skip the data-wait and time-to-error figures")
    parser.add_argument("--out", help="where to write the JSON (default: benchmarks/results/online_throughput.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or ["64x64", "1024x1024"]
        args.processes = args.processes or [1]
        args.repeat = args.repeat or 1
        args.no_training = True
    args.sizes = args.sizes or list(SIZES)
    args.processes = args.processes or [1, 2, 4]
    args.repeat = args.repeat or REPEAT
    args.out = check_out(parser, args.out or HERE / "results" / "online_throughput.json")
    return args


def main(argv: list[str] | None = None) -> None:
    from engage.core.online import allocator, protocol
    from engage.core.online.buffer import ZERO_COPY_BYTES

    args = parse_args(argv)
    rows = []
    for label in args.sizes:
        side = SIZES[label]
        nbytes = side * side * 4
        if nbytes >= ZERO_COPY_BYTES:
            # the trainer sets this once it keeps frames by reference; bare pyzmq runs in this
            # same process, so it is measured with the same allocator from its first run on
            allocator.retain_freed_memory(nbytes, min(8192 * nbytes, 1 << 30))
        per_message = protocol.samples_per_message(nbytes)  # as the client decides, by default
        for processes in args.processes:
            # interleaved repetitions, medians: this machine's speed varies from second to second
            runs = []
            for _ in range(args.repeat):
                raw = measure_raw(processes, side)
                same = measure_raw(processes, side, per_message) if per_message > 1 else raw
                transport = measure_engage(processes, side, "none")[0]
                with_batches, reused = measure_engage(processes, side, "reused")
                to_batch = measure_engage(processes, side, "new")[1]
                long = SHARED_TOTAL[side]
                shared = measure_engage(processes, side, "none", shared_memory=True, total=long)[0]
                shared_with_batches, shared_batches = measure_engage(
                    processes, side, "reused", shared_memory=True, total=long
                )
                shared_short = measure_engage(processes, side, "none", shared_memory=True)[0]
                raw_curve = measure_raw(processes, side, security="curve")
                raw_ipc = measure_raw(processes, side, security="ipc")
                raw_ipc_held = measure_raw(processes, side, security="ipc", hold=batch_size(side))
                engage_ipc = measure_engage(processes, side, "none", security="ipc")[0]
                ring = measure_ring(side)  # in each round too: memory bandwidth drifts as the rest does
                runs.append(
                    (raw, transport, with_batches, reused, to_batch, same, shared, shared_with_batches, shared_batches,
                     raw_curve, raw_ipc, engage_ipc, ring, shared_short, raw_ipc_held)
                )  # fmt: skip
            (
                raw, engage, with_batches, reused, to_batch, same, shared, shared_with_batches, shared_batches,
                raw_curve, raw_ipc, engage_ipc, ring, shared_short, raw_ipc_held,
            ) = (statistics.median(values) for values in zip(*runs))  # fmt: skip
            row = {
                "size": label,
                "sample_bytes": nbytes,
                "processes": processes,
                "samples_per_message": per_message,
                "engage_samples_per_s": round(engage, 1),
                "engage_GB_per_s": round(engage * nbytes / 1e9, 3),
                "raw_zmq_samples_per_s": round(raw, 1),
                "raw_zmq_GB_per_s": round(raw * nbytes / 1e9, 3),
                "engage_vs_raw": paired(runs, 1),
                "engage_vs_raw_of_medians": round(engage / raw, 3),
                "raw_zmq_curve_samples_per_s": round(raw_curve, 1),
                "raw_zmq_curve_GB_per_s": round(raw_curve * nbytes / 1e9, 3),
                "engage_vs_raw_curve": paired(runs, 1, 9),
                "raw_zmq_ipc_samples_per_s": round(raw_ipc, 1),
                "engage_ipc_samples_per_s": round(engage_ipc, 1),
                "engage_ipc_GB_per_s": round(engage_ipc * nbytes / 1e9, 3),
                "engage_ipc_vs_raw_ipc": paired(runs, 11, 10),
                "raw_zmq_ipc_held_samples_per_s": round(raw_ipc_held, 1),
                "raw_zmq_ipc_held_vs_raw_ipc": paired(runs, 14, 10),
                "engage_ipc_vs_raw_ipc_held": paired(runs, 11, 14),
                "raw_zmq_same_frames_samples_per_s": round(same, 1),
                "engage_vs_raw_same_frames": paired(runs, 1, 5),
                "engage_with_batches_samples_per_s": round(with_batches, 1),
                "engage_with_batches_vs_raw": paired(runs, 2),
                "batches_reused_GB_per_s": round(reused * nbytes / 1e9, 3),
                "batches_reused_vs_raw": paired(runs, 3),
                "to_batch_samples_per_s": round(to_batch, 1),
                "to_batch_GB_per_s": round(to_batch * nbytes / 1e9, 3),
                "ring_copy_GB_per_s": round(ring * nbytes / 1e9, 2),
                "ring_copy_slots": ring_slots(side),
                "shared_memory_samples_per_s": round(shared, 1),
                "shared_memory_GB_per_s": round(shared * nbytes / 1e9, 3),
                "shared_memory_vs_raw": paired(runs, 6),
                "shared_memory_vs_raw_same_frames": paired(runs, 6, 5),
                "shared_memory_vs_ring_copy": paired(runs, 6, 12),
                "shared_memory_samples": SHARED_TOTAL[side] // processes * processes,
                "shared_memory_short_samples": TOTAL[side] // processes * processes,
                "shared_memory_short_samples_per_s": round(shared_short, 1),
                "shared_memory_short_vs_ring_copy": paired(runs, 13, 12),
                "shared_memory_with_batches_samples_per_s": round(shared_with_batches, 1),
                "shared_memory_with_batches_vs_raw": paired(runs, 7),
                "shared_memory_batches_GB_per_s": round(shared_batches * nbytes / 1e9, 3),
                "runs_engage_vs_raw": ratios(runs, 1),
                "runs_engage_vs_raw_same_frames": ratios(runs, 1, 5),
                "runs_engage_with_batches_vs_raw": ratios(runs, 2),
                "runs_shared_memory_vs_raw": ratios(runs, 6),
                "runs_shared_memory_vs_ring_copy": ratios(runs, 6, 12),
                "runs_shared_memory_samples_per_s": [round(r[6], 1) for r in runs],
                "runs_shared_memory_short_samples_per_s": [round(r[13], 1) for r in runs],
                "runs_engage_vs_raw_curve": ratios(runs, 1, 9),
                "runs_engage_ipc_vs_raw_ipc": ratios(runs, 11, 10),
                "runs_engage_ipc_vs_raw_ipc_held": ratios(runs, 11, 14),
            }
            rows.append(row)
            print(
                f"{label:>9} x{processes}: engage {engage:9.0f}/s {row['engage_GB_per_s']:6.2f} GB/s | raw zmq "
                f"{raw:9.0f}/s {row['raw_zmq_GB_per_s']:6.2f} GB/s | ratio {row['engage_vs_raw']:.2f} | "
                f"same frames ({per_message}/message) {same:9.0f}/s, ratio {row['engage_vs_raw_same_frames']:.2f} | "
                f"with batches {with_batches:9.0f}/s ({row['engage_with_batches_vs_raw']:.2f}), "
                f"out {row['batches_reused_GB_per_s']:6.2f} GB/s, new arrays {row['to_batch_GB_per_s']:6.2f} GB/s | "
                f"ring copy {row['ring_copy_GB_per_s']:.1f} GB/s | shared memory {shared:9.0f}/s "
                f"{row['shared_memory_GB_per_s']:6.2f} GB/s, ratio {row['shared_memory_vs_raw']:.2f}, "
                f"{row['shared_memory_vs_ring_copy']:.2f} of ring copy, with batches "
                f"{row['shared_memory_with_batches_vs_raw']:.2f} | "
                f"CURVE {row['engage_vs_raw_curve']:.2f} of bare CURVE | "
                f"ipc {row['engage_ipc_vs_raw_ipc']:.2f} of bare ipc, {row['engage_ipc_vs_raw_ipc_held']:.2f} of bare "
                f"ipc holding {batch_size(side)} messages",
                flush=True,
            )
    data_wait, training = None, None
    if not args.no_training:
        data_wait = measure_data_wait()
        print(f"data wait when simulators outpace the model: {data_wait}", flush=True)
        training = [measure_time_to_error("online"), measure_time_to_error("offline")]
        for row in training:
            print(f"time to rel L2 < {TARGET_REL_L2}: {row}", flush=True)
    result = {
        "benchmark": "online_throughput",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "rows": rows,
        "data_wait": data_wait,
        "online_vs_offline": training,
    }
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"saved {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--raw-sender":
        raw_sender(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        main()
