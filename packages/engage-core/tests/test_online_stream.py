"""Online streaming: wire protocol, training buffer, scheduler with real simulation processes and faults."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import numpy as np
import pytest

from engage.core.online import allocator, protocol
from engage.core.online.buffer import TrainingBuffer
from engage.core.online.journal import Journal
from engage.core.online.scheduler import SimulationScheduler
from engage.core.online.shared_memory import SharedSegment, attach
from engage.core.samplers.uniform import UniformSampler
from engage.core.simulators.function import FunctionSimulator


def ramp_simulator(**kwargs) -> FunctionSimulator:
    return FunctionSimulator(
        "test_online_helpers:ramp", {"x": {"low": 1, "high": 2}}, sample_shape=(8, 8), samples_per_run=6, kwargs=kwargs
    )


def drain(buffer: TrainingBuffer, timeout: float = 120) -> list[dict]:
    batches = []
    while (batch := buffer.get_batch(4, timeout=timeout)) is not None:
        batches.append(batch)
    return batches


def stream_all(sim, tmp_path, capacity: int = 64, **kwargs) -> tuple[list[dict], SimulationScheduler, Journal]:
    """Run ``sim``'s simulations into a FIFO buffer until they end: its batches, the scheduler
    and its journal."""
    buffer = TrainingBuffer(capacity=capacity, policy="fifo")
    journal = Journal(str(tmp_path / "journal.jsonl"))
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space, seed=0), buffer, journal=journal, workdir=str(tmp_path), **kwargs
    )
    scheduler.start()
    batches = drain(buffer)
    scheduler.join(30)
    return batches, scheduler, journal


# --------------------------------------------------------------------------- protocol


def test_header_round_trip_and_errors():
    array = np.zeros((3, 5), dtype=np.float64)
    header = protocol.decode_header(protocol.encode_header(protocol.Kind.SAMPLE, 9, 2, 4, array=array))
    assert (header.simulation_id, header.attempt, header.index, header.shape, header.nbytes) == (9, 2, 4, (3, 5), 120)
    assert header.dtype == np.dtype("<f8")
    several = protocol.decode_header(protocol.encode_header(protocol.Kind.SAMPLES, 9, 2, 4, array=array, count=7))
    assert (several.kind, several.shape, several.nbytes) == (protocol.Kind.SAMPLES, (3, 5), 7 * 120)
    with pytest.raises(protocol.ProtocolError, match="magic"):
        protocol.decode_header(b"XXXX" + bytes(52))
    with pytest.raises(protocol.ProtocolError, match="56"):
        protocol.decode_header(b"short")
    with pytest.raises(protocol.ProtocolError, match="big-endian"):
        protocol.dtype_code(np.dtype(">f4"))
    with pytest.raises(protocol.ProtocolError, match=r"negative simulation id or sample index \(9, -1\)"):
        protocol.decode_header(protocol.encode_header(protocol.Kind.SAMPLES, 9, 2, -1, array=array, count=2))


@pytest.mark.parametrize(
    "payload, why",
    [
        (b'{"pid": 1e999}', "out of range"),
        (b'{"pid": NaN}', "NaN is not a number"),
        (b'{"pid": -Infinity}', "-Infinity is not a number"),
        (b'{"a": ' + b"[" * 9 + b"]" * 9 + b"}", "nested deeper than 8"),
        (b'{"a": ' + b"[" * 60_000, "not UTF-8 JSON"),
        (b"[1]", "must be an object"),
    ],
)
def test_a_peers_json_is_bounded_in_depth_and_numbers(payload, why):
    with pytest.raises(protocol.ProtocolError, match=why):
        protocol.decode_json(payload)
    hello = {"pid": 12, "host": "node-1", "protocol": 1, "shm": {"name": "x", "slots": [1.5, 2]}}
    assert protocol.decode_json(json.dumps(hello).encode()) == hello


# --------------------------------------------------------------------------- buffer


def put(buffer: TrainingBuffer, value: float, sim: int = 0) -> None:
    buffer.put(np.full((2,), value, np.float32), parameters=np.zeros(1), simulation_id=sim, time=0.0)


def test_fifo_serves_in_order_once():
    buffer = TrainingBuffer(capacity=8, policy="fifo")
    for v in range(6):
        put(buffer, v)
    assert buffer.get_batch(3)["target"][:, 0].tolist() == [0, 1, 2]
    assert buffer.get_batch(3)["target"][:, 0].tolist() == [3, 4, 5]
    assert len(buffer) == 0 and buffer.credit() == 8
    large = TrainingBuffer(capacity=4096, policy="fifo")  # the oldest of many, still in order
    for v in range(3000):
        put(large, v)
    assert large.get_batch(500)["target"][:, 0].tolist() == list(range(500))
    assert large.get_batch(700)["target"][:, 0].tolist() == list(range(500, 1200))


def test_firo_is_random_and_backpressure_when_full():
    buffer = TrainingBuffer(capacity=16, policy="firo", seed=1)
    for v in range(16):
        put(buffer, v)
    assert buffer.credit() == 0
    with pytest.raises(OverflowError):
        put(buffer, 99)
    values = buffer.get_batch(8)["target"][:, 0].tolist()
    assert values != sorted(values) and len(set(values)) == 8
    assert buffer.credit() == 8


def test_reservoir_evicts_only_read_samples_and_caps_reads():
    buffer = TrainingBuffer(capacity=4, policy="reservoir", max_reads=3, seed=0)
    for v in range(4):
        put(buffer, v)
    assert buffer.credit() == 0  # nothing read yet: nothing may be evicted
    buffer.get_batch(2)
    assert buffer.credit() == 2
    put(buffer, 10)
    put(buffer, 11)
    assert buffer.evicted == 2 and len(buffer) == 4
    for _ in range(12):
        buffer.get_batch(1)
    assert buffer.reads == 14 and len(buffer) < 4  # samples leave after 3 reads


def test_watermark_and_rate_limit_block_the_reader():
    buffer = TrainingBuffer(capacity=8, policy="reservoir", watermark=4, rate_limit=2.0)
    for v in range(3):
        put(buffer, v)
    with pytest.raises(TimeoutError):
        buffer.get_batch(1, timeout=0.2)
    put(buffer, 3)
    for _ in range(8):
        buffer.get_batch(1, timeout=1)  # 4 inserted x 2 reads each
    with pytest.raises(TimeoutError):
        buffer.get_batch(1, timeout=0.2)
    buffer.close()
    assert buffer.get_batch(1, timeout=1) is not None


@pytest.mark.timing
@pytest.mark.parametrize("arrival", ["put", "commit"])
def test_a_waiting_reader_is_woken_once_its_batch_is_there(arrival):
    buffer = TrainingBuffer(capacity=8, policy="fifo")
    buffer.prepare((2,), np.float32, 1)
    wakes: list[int] = []  # samples held each time the reader woke
    wait = buffer._cond.wait

    def counting_wait(timeout=None):
        woken = wait(timeout)
        wakes.append(len(buffer))
        return woken

    def arrive(value: int) -> None:
        if arrival == "put":
            put(buffer, value, sim=value)
        else:
            (slot,) = buffer.reserve(1)
            buffer.slot(slot)[:] = value
            buffer.commit([(slot, np.zeros(1), value, 0.0)])

    buffer._cond.wait = counting_wait
    got: list[dict] = []
    reader = threading.Thread(target=lambda: got.append(buffer.get_batch(4, timeout=10)))
    reader.start()
    time.sleep(0.05)
    for value in range(3):
        arrive(value)
        time.sleep(0.02)
    assert wakes == []  # three samples cannot serve a batch of four: the reader slept on
    arrived = time.perf_counter()
    arrive(3)
    reader.join(5)
    assert got and got[0]["simulation_id"].tolist() == [0, 1, 2, 3] and wakes == [4]
    assert time.perf_counter() - arrived < 0.4  # woken, not found by its periodic check (0.5 s)


def test_buffer_state_round_trip():
    buffer = TrainingBuffer(capacity=8, policy="firo", seed=3)
    for v in range(5):
        put(buffer, v, sim=v)
    buffer.get_batch(2)
    restored = TrainingBuffer(capacity=8, policy="firo")
    restored.load_state_dict(buffer.state_dict())
    assert len(restored) == 3 and restored.inserted == 5 and restored.reads == 2
    assert sorted(restored.get_batch(3)["simulation_id"].tolist()) == sorted(
        buffer.get_batch(3)["simulation_id"].tolist()
    )


def test_large_owned_samples_are_kept_by_reference_and_others_copied():
    # zero_copy_bytes=32: every 8x8 float32 sample (256 bytes) is "large" here
    buffer = TrainingBuffer(capacity=4, policy="fifo", zero_copy_bytes=32)
    owned, lent = np.full((8, 8), 1.0, np.float32), np.full((8, 8), 2.0, np.float32)
    buffer.put(owned, parameters=np.zeros(1), simulation_id=0, time=0.0, owned=True)
    buffer.put(lent, parameters=np.zeros(1), simulation_id=1, time=0.0)
    # the contract: an owned sample is never written again, a lent one may be at once
    lent[:] = -1.0
    refs = buffer._store.refs  # a ReferenceStorage
    assert refs[0] is owned and not np.shares_memory(refs[1], lent)
    batch = buffer.get_batch(2)
    assert batch["target"].shape == (2, 8, 8) and batch["target"].flags.writeable
    assert batch["target"][:, 0, 0].tolist() == [1.0, 2.0] and not np.shares_memory(batch["target"], owned)
    assert refs == [None] * 4  # read once under fifo: the slots let go of the samples
    small = TrainingBuffer(capacity=4, policy="fifo")  # default threshold: 256-byte samples are copied
    small.put(owned, parameters=np.zeros(1), simulation_id=0, time=0.0, owned=True)
    assert small.writes_in_place and not np.shares_memory(small._store.data, owned)


@pytest.mark.parametrize("held_by_reference", [True, False])
def test_shared_storage_takes_samples_of_any_size_and_what_is_held(held_by_reference):
    # zero_copy_bytes=32 would keep 256-byte samples by reference; shared storage holds them all
    buffer = TrainingBuffer(capacity=4, policy="fifo", zero_copy_bytes=32 if held_by_reference else 1 << 20)
    for step in range(2):
        buffer.put(np.full((8, 8), step, np.float32), parameters=np.zeros(1), simulation_id=0, time=step, owned=True)
    segment = SharedSegment.create(4 * 256)
    try:
        buffer.prepare((8, 8), "float32", 1, storage=segment.buffer)  # the samples held move over
        assert buffer.writes_in_place and np.shares_memory(buffer._store.data, np.frombuffer(segment.buffer, np.uint8))
        [slot] = buffer.reserve(1)
        attach(segment.name)[slot * 256 : (slot + 1) * 256] = np.full((8, 8), 7, np.float32).tobytes()  # another writer
        buffer.commit([(slot, np.zeros(1, np.float32), 1, 2.0)])
        assert buffer.get_batch(3)["target"][:, 0, 0].tolist() == [0.0, 1.0, 7.0]
        with pytest.raises(ValueError, match="buffer storage of 1024 bytes is too small"):
            TrainingBuffer(capacity=5).prepare((8, 8), "float32", 1, storage=segment.buffer)
    finally:
        segment.unlink()
    assert not os.path.exists(f"/dev/shm/{segment.name}")


def test_reservoir_reserves_by_evicting_read_samples_only_when_asked():
    buffer = TrainingBuffer(capacity=4, policy="reservoir")
    buffer.prepare((2,), "float32", 1)
    for step in range(4):
        buffer.put(np.full(2, step, np.float32), parameters=np.zeros(1), simulation_id=0, time=step)
    assert buffer.reserve(2) == []  # full: nothing is free
    buffer.get_batch(2)  # two samples read once: evictable
    assert buffer.reserve(3) == [] and buffer.credit() == 2
    slots = buffer.reserve(3, evict=True)
    assert len(slots) == 2 and len(buffer) == 2 and buffer.evicted == 2 and buffer.credit() == 0
    buffer.release(slots)
    assert buffer.credit() == 2


@pytest.mark.parametrize("zero_copy_bytes", [0, 1 << 20], ids=["by-reference", "in-place"])
def test_batches_gather_into_a_reused_array(zero_copy_bytes):
    buffer = TrainingBuffer(capacity=8, policy="fifo", zero_copy_bytes=zero_copy_bytes)
    for v in range(5):
        put(buffer, v)
    buffer.close()
    out = np.full((4, 2), -1.0, np.float32)
    first = buffer.get_batch(3, out=out)
    assert np.shares_memory(first["target"], out) and first["target"][:, 0].tolist() == [0, 1, 2]
    second = buffer.get_batch(3, out=out)  # the stream ended with two left: a smaller batch
    assert second["target"][:, 0].tolist() == [3, 4] and out[:, 0].tolist() == [3, 4, 2, -1]
    with pytest.raises(ValueError, match=r"get_batch\(out=...\) has shape \(4, 3\)"):
        buffer.get_batch(1, out=np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="fewer than the 8 asked for"):
        buffer.get_batch(8, out=out)


@pytest.mark.parametrize("zero_copy_bytes", [0, 1 << 20], ids=["by-reference", "in-place"])
@pytest.mark.parametrize("policy", ["fifo", "reservoir"])
def test_a_batch_without_its_samples_reads_them_all_the_same(zero_copy_bytes, policy):
    buffer = TrainingBuffer(capacity=4, policy=policy, seed=0, zero_copy_bytes=zero_copy_bytes)
    for v in range(4):
        put(buffer, v, sim=v)
    batch = buffer.get_batch(3, target=False)
    assert "target" not in batch and len(batch["simulation_id"]) == 3 and buffer.reads == 3
    if policy == "fifo":
        # read once: they left, in order, and their slots take new samples
        assert batch["simulation_id"].tolist() == [0, 1, 2] and len(buffer) == 1 and buffer.credit() == 3
        put(buffer, 9)
        assert buffer.get_batch(2)["target"][:, 0].tolist() == [3, 9]
    else:
        # read samples stay, and may now be evicted: a full reservoir takes new samples again
        assert len(buffer) == 4 and buffer.credit() == 3


def test_by_reference_storage_evicts_and_round_trips():
    buffer = TrainingBuffer(capacity=3, policy="reservoir", seed=0, zero_copy_bytes=0)
    for v in range(3):
        put(buffer, v, sim=v)
    buffer.get_batch(2)
    put(buffer, 7, sim=7)  # evicts one of the two samples read
    assert buffer.evicted == 1 and sum(ref is not None for ref in buffer._store.refs) == 3
    state = buffer.state_dict()
    assert state["data"].shape == (3, 2)
    restored = TrainingBuffer(capacity=3, policy="reservoir", zero_copy_bytes=0)
    restored.load_state_dict(state)
    assert sorted(restored.get_batch(3)["target"][:, 0].tolist()) == sorted(state["data"][:, 0].tolist())
    empty = TrainingBuffer(capacity=2, policy="fifo", zero_copy_bytes=0)
    put(empty, 1)
    empty.get_batch(1)
    assert empty.state_dict()["data"].shape == (0, 2)
    with pytest.raises(ValueError, match="zero_copy_bytes"):
        TrainingBuffer(zero_copy_bytes=-1)


@pytest.mark.parametrize("policy", ["fifo", "firo", "reservoir"])
def test_a_batch_is_gathered_while_the_receiver_refills_other_slots(policy):
    """The gather runs outside the buffer's lock: a receiver thread writing as fast as it can
    must never overwrite a slot a batch is still being gathered from (each sample is filled
    with its own number, which its ``time`` also holds) nor lose one."""
    buffer = TrainingBuffer(
        capacity=32, policy=policy, max_reads=2 if policy != "reservoir" else None, seed=3, zero_copy_bytes=1 << 20
    )
    buffer.prepare((256, 256), np.float32, 1)  # 256 KiB samples in the block: a gather takes a while
    total, seen = 600, set()

    def receive() -> None:
        try:
            for number in range(total):
                while not (slots := buffer.reserve(1, evict=True)):
                    time.sleep(0.0005)
                buffer.slot(slots[0])[:] = number
                buffer.commit([(slots[0], np.zeros(1, np.float32), 0, float(number))])
        except Exception as exc:  # the reader must hear of it rather than wait
            buffer.close(f"receiver failed: {exc!r}")
        else:
            buffer.close()

    receiver = threading.Thread(target=receive)
    receiver.start()
    out = np.empty((8, 256, 256), np.float32)
    # (reservoir samples never leave: its reader stops when the stream ends)
    while not (policy == "reservoir" and buffer.closed):
        batch = buffer.get_batch(8, timeout=60, out=out)
        if batch is None:
            break
        numbers = batch["time"][:, 0]
        assert (batch["target"][:, ::64, ::64] == numbers[:, None, None]).all()
        seen.update(numbers.astype(int).tolist())
    receiver.join()
    assert buffer.credit() == 32 or policy == "reservoir"
    if policy != "reservoir":
        assert seen == set(range(total))  # nothing unread was lost


@pytest.mark.parametrize("policy", ["fifo", "firo", "reservoir"])
def test_buffer_bookkeeping_holds_over_a_random_stream(policy):
    """Samples written in place and put, read in batches of random size: every sample is read at
    most ``max_reads`` times, FIFO serves the oldest in order, nothing unread is lost, and the
    slots add up (occupied + free + reserved = capacity) after every step."""
    rng = np.random.default_rng(7)
    capacity, max_reads = 64, 2
    buffer = TrainingBuffer(capacity=capacity, policy=policy, max_reads=max_reads, seed=5)
    buffer.prepare((2,), np.float32, 1)
    written, reads = 0, {}
    for _ in range(400):
        if rng.random() < 0.5:
            slots = buffer.reserve(int(rng.integers(1, 20)))
            for slot in slots:
                buffer.slot(slot)[:] = written
                written += 1
            keep = int(rng.integers(0, len(slots) + 1))
            buffer.commit([(slot, np.array([1.0], np.float32), 3, 0.5) for slot in slots[:keep]])
            buffer.release(slots[keep:])
            written -= len(slots) - keep  # values of released slots are written again
        elif buffer.credit() > 0:
            put(buffer, written, sim=3)
            written += 1
        elif len(buffer):
            oldest = sorted(set(range(written)) - set(reads) | {v for v, c in reads.items() if c < max_reads})
            batch = buffer.get_batch(int(rng.integers(1, len(buffer) + 1)), timeout=1)
            values = batch["target"][:, 0].astype(int).tolist()
            assert len(set(values)) == len(values)
            if policy == "fifo":
                assert values == oldest[: len(values)]
            for value in values:
                reads[value] = reads.get(value, 0) + 1
            assert batch["simulation_id"].tolist() == [3] * len(values)
        occupied, read_once = buffer.slots.occupied, buffer.slots.read_once
        for index_set in (occupied, read_once):
            assert len(set(index_set.view().tolist())) == index_set.n
            assert (index_set.pos[index_set.view()] == np.arange(index_set.n)).all()
            assert (index_set.pos >= 0).sum() == index_set.n
        assert occupied.n == len(buffer) and set(read_once.view().tolist()) <= set(occupied.view().tolist())
        assert len(buffer) + len(buffer.slots.free) + buffer.slots.reserved == capacity
        evictable = read_once.n if policy == "reservoir" else 0
        assert buffer.credit() == capacity - len(buffer) - buffer.slots.reserved + evictable
        # what the run's outcome reports as received and never read: none of it was dropped
        assert buffer.unread() == written - len(reads)
    assert max(reads.values()) <= max_reads
    # every sample read max_reads times has left (fifo, firo) or may be evicted (reservoir)
    present = set(buffer.state_dict()["data"][:, 0].int().tolist())
    assert all(value not in present for value, count in reads.items() if count == max_reads)
    if policy != "reservoir":
        assert present == {v for v in range(written) if reads.get(v, 0) < max_reads}
    assert buffer.inserted == written


def test_a_bad_commit_changes_nothing():
    buffer = TrainingBuffer(capacity=4, policy="fifo")
    buffer.prepare((2,), np.float32, 1)
    slots = buffer.reserve(2)
    with pytest.raises(ValueError, match="with repeats"):
        buffer.commit([(slots[0], np.zeros(1), 0, 0.0), (slots[0], np.zeros(1), 0, 0.0)])
    with pytest.raises(ValueError, match="with repeats"):  # apart, not next to each other
        buffer.commit([(s, np.zeros(1), 0, 0.0) for s in (slots[0], slots[1], slots[0])])
    with pytest.raises(ValueError, match=r"parameters of shape \(3,\); the buffer holds \(1,\)"):
        buffer.commit([(slot, np.zeros(3), 0, 0.0) for slot in slots])
    assert len(buffer) == 0 and buffer.credit() == 2  # both slots still reserved, none lost
    buffer.commit([(slot, np.zeros(1), 0, 0.0) for slot in slots])
    assert len(buffer) == 2 and buffer.credit() == 2


def test_a_buffer_that_cannot_fit_in_memory_is_refused_naming_the_field(monkeypatch, caplog):
    import psutil

    from engage.core.online import OnlineDataModule
    from engage.core.simulators import HeatEquation

    gib = 2**30
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": 8 * gib})())
    sim = HeatEquation(grid=1024, steps=4)  # 4 MiB samples: 2048 of them take 8 GiB
    with pytest.raises(ValueError, match=r"data.capacity: a full buffer of 4096 samples .* takes 16.0 GiB") as error:
        OnlineDataModule(sim, UniformSampler(sim.space), capacity=4096)
    assert "lower data.capacity to 1024 or less" in str(error.value)
    huge = HeatEquation(grid=65536, steps=4)  # 16 GiB a sample: no capacity helps
    with pytest.raises(ValueError, match=r"one sample takes 16\.0 GiB: the samples must be smaller"):
        OnlineDataModule(huge, UniformSampler(huge.space), capacity=64)
    with caplog.at_level("WARNING", logger="engage.online"):
        OnlineDataModule(sim, UniformSampler(sim.space), capacity=1536)  # 6 GiB of 8: allowed, with a warning
    assert "consider data.capacity=1024" in caplog.text
    caplog.clear()
    OnlineDataModule(sim, UniformSampler(sim.space), capacity=512)  # 2 GiB: nothing to say
    assert caplog.text == ""


# --------------------------------------------------------------------------- scheduler with processes


@pytest.mark.parametrize("shared_memory", [True, False])
def test_samples_arrive_intact_with_backpressure(tmp_path, helpers_on_path, shared_memory):
    sim = ramp_simulator()
    buffer = TrainingBuffer(capacity=8, policy="fifo")
    journal = Journal(str(tmp_path / "journal.jsonl"))
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space, seed=0), buffer, simulations=3, concurrency=3, journal=journal,
        heartbeat_interval=0.2, heartbeat_timeout=1.5, credit_window=4, workdir=str(tmp_path),
        shared_memory=shared_memory,
    )  # fmt: skip
    scheduler.start()
    assert scheduler.address.startswith("tcp://127.0.0.1:")
    time.sleep(3)  # the buffer stays full for longer than the heartbeat timeout
    assert len(buffer) == 8 and scheduler.failed == 0  # blocked simulations are not silent ones
    batches = drain(buffer)
    scheduler.join(30)
    targets = np.concatenate([b["target"] for b in batches])
    times = np.concatenate([b["time"] for b in batches])[:, 0]
    ids = np.concatenate([b["simulation_id"] for b in batches])
    assert len(targets) == 18 and scheduler.finished == 3
    latest = journal.latest()
    for sid in range(3):
        x = latest[sid]["parameters"]["x"]
        mine = ids == sid
        # every sample equals x * step, so order, values and time stamps are checked at once
        np.testing.assert_allclose(targets[mine][:, 0, 0], x * times[mine] * 6, rtol=1e-5)
        assert latest[sid]["status"] == "finished" and latest[sid]["samples_received"] == 6
        assert latest[sid]["bytes_received"] == 6 * targets[0].nbytes and latest[sid]["stream_bytes_per_s"] > 0
    assert scheduler.shared_memory_samples == (18 if shared_memory else 0)


def test_killed_simulation_is_retried_and_resumes(tmp_path, helpers_on_path):
    sim = ramp_simulator(crash_marker=str(tmp_path / "crashed"))
    batches, scheduler, journal = stream_all(sim, tmp_path, simulations=1)
    entries = journal.read()
    failed = [e for e in entries if e["status"] == "failed"]
    assert len(failed) == 1 and "signal 9" in failed[0]["error"] and failed[0]["final"] is False
    assert journal.latest()[0]["status"] == "finished" and journal.latest()[0]["attempt"] == 2
    steps = sorted(np.concatenate([b["time"] for b in batches])[:, 0] * 6)
    np.testing.assert_allclose(steps, [1, 2, 3, 4, 5, 6])  # resumed after the 2 received: none twice
    # both attempts wrote into shared memory; the slots the killed one held came back
    assert scheduler.shared_memory_samples == 6 and scheduler.buffer.credit() == 64


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("shape", "has shape (4, 4), the simulator declares (8, 8)"),
        ("truncated", "100 payload bytes (header says 256), expected 256"),
        ("extra-frame", "message of more than 2 frames"),
        ("header-only", "message of 1 frame"),
        ("several-partial", "the header says 384 payload bytes, not a whole number of samples of 256 bytes"),
        ("several-truncated", "is truncated or padded: 384 payload bytes, the header says 512"),
        ("slots-payload", "a message of samples in shared memory carries no payload, this one has 256 bytes"),
        ("slots-unmapped", "sent samples in shared memory without having mapped this trainer's segment"),
        ("silent", "heartbeat timeout"),
    ],
)
def test_faulty_simulation_is_detected_and_retried(tmp_path, helpers_on_path, mode, message, caplog):
    batches, scheduler, journal = stream_all(
        helpers_on_path.Rogue(mode), tmp_path, simulations=1, heartbeat_interval=0.2, heartbeat_timeout=2.0
    )
    failure = next(e for e in journal.read() if e["status"] == "failed")
    assert message in failure["error"]
    assert message in caplog.text
    assert sum(len(b["target"]) for b in batches) == 6 and scheduler.finished == 1
    assert scheduler.buffer.credit() == 64  # the failed attempt's shared-memory slots came back


def test_quick_samples_travel_several_to_a_message_in_order(tmp_path, helpers_on_path):
    steps = 300
    sim = FunctionSimulator(
        "test_online_helpers:ramp", {"x": {"low": 1, "high": 2}}, sample_shape=(8, 8), samples_per_run=steps,
        kwargs={"steps": steps},
    )  # fmt: skip
    batches, scheduler, journal = stream_all(sim, tmp_path, capacity=1024, simulations=2, concurrency=2)
    targets = np.concatenate([b["target"] for b in batches])
    times = np.concatenate([b["time"] for b in batches])[:, 0]
    ids = np.concatenate([b["simulation_id"] for b in batches])
    assert len(targets) == scheduler.samples == 2 * steps and scheduler.finished == 2
    assert scheduler.sample_messages < scheduler.samples / 4  # a fast simulation's samples are coalesced
    for sid, entry in journal.latest().items():
        mine = ids == sid
        np.testing.assert_allclose(times[mine] * steps, np.arange(1, steps + 1))  # all, once, in order
        np.testing.assert_allclose(targets[mine][:, 0, 0], entry["parameters"]["x"] * times[mine] * steps, rtol=1e-5)


def test_the_trainer_can_turn_coalescing_off(tmp_path, helpers_on_path):
    sim = FunctionSimulator(
        "test_online_helpers:ramp", {"x": {"low": 1, "high": 2}}, sample_shape=(8, 8), samples_per_run=100,
        kwargs={"steps": 100},
    )  # fmt: skip
    batches, scheduler, _ = stream_all(sim, tmp_path, capacity=256, simulations=1, coalesce_bytes=0)
    assert sum(len(b["target"]) for b in batches) == scheduler.sample_messages == 100  # the job told the client
    with pytest.raises(ValueError, match=r"data\.coalesce_bytes: must be >= 0"):
        SimulationScheduler(sim, UniformSampler(sim.space), TrainingBuffer(), coalesce_bytes=-1)


def test_a_slow_simulation_sends_each_sample_at_once(tmp_path, helpers_on_path):
    sim = ramp_simulator(delay=0.01)  # slower than the client's coalescing gap
    batches, scheduler, _ = stream_all(sim, tmp_path, simulations=1)
    assert sum(len(b["target"]) for b in batches) == scheduler.sample_messages == 6


@pytest.mark.parametrize("shared_memory", [True, False])
def test_samples_arrive_the_same_through_shared_memory_or_the_socket(tmp_path, helpers_on_path, shared_memory):
    steps = 300
    sim = FunctionSimulator(
        "test_online_helpers:ramp", {"x": {"low": 1, "high": 2}}, sample_shape=(8, 8), samples_per_run=steps,
        kwargs={"steps": steps},
    )  # fmt: skip
    # a buffer smaller than the stream: slots are granted, filled, read and granted again
    batches, scheduler, journal = stream_all(
        sim, tmp_path, capacity=128, simulations=2, concurrency=2, shared_memory=shared_memory
    )
    targets = np.concatenate([b["target"] for b in batches])
    times = np.concatenate([b["time"] for b in batches])[:, 0]
    ids = np.concatenate([b["simulation_id"] for b in batches])
    assert len(targets) == scheduler.samples == 2 * steps and scheduler.finished == 2
    assert scheduler.shared_memory_samples == (2 * steps if shared_memory else 0)
    # coalesced either way (a message a sample without); how many a message depends on the
    # machine's load: 3 a message on a loaded 2-core host, more when idle
    assert scheduler.sample_messages < scheduler.samples / 2
    for sid, entry in journal.latest().items():
        mine = ids == sid
        np.testing.assert_allclose(times[mine] * steps, np.arange(1, steps + 1))  # all, once, in order
        np.testing.assert_allclose(targets[mine][:, 0, 0], entry["parameters"]["x"] * times[mine] * steps, rtol=1e-5)
        np.testing.assert_array_equal(targets[mine], targets[mine][:, :1, :1] * np.ones((1, 8, 8), "f4"))
    assert scheduler.buffer.credit() == 128  # every slot is back
    if shared_memory:
        assert not os.path.exists(f"/dev/shm/{scheduler.segment.name}")  # the name goes with the run
    else:
        assert scheduler.segment is None


def test_samples_kept_by_reference_arrive_intact_and_their_frames_reuse_memory(tmp_path, helpers_on_path, monkeypatch):
    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(allocator, "retain_freed_memory", lambda frame, keep: asked.append((frame, keep)) or True)
    steps = 40
    sim = FunctionSimulator(
        "test_online_helpers:ramp", {"x": {"low": 1, "high": 2}}, sample_shape=(8, 8), samples_per_run=steps,
        kwargs={"steps": steps},
    )  # fmt: skip
    # zero_copy_bytes=0: every 256-byte sample stays in the frame it arrived in
    buffer = TrainingBuffer(capacity=32, policy="fifo", zero_copy_bytes=0)
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space, seed=0), buffer, simulations=2, concurrency=2, shared_memory=False,
        workdir=str(tmp_path),
    )  # fmt: skip
    scheduler.start()
    batches = drain(buffer)
    scheduler.join(30)
    assert not buffer.writes_in_place and asked == [(256, 32 * 256)]
    targets = np.concatenate([b["target"] for b in batches])
    times = np.concatenate([b["time"] for b in batches])[:, 0]
    assert len(targets) == 2 * steps and scheduler.finished == 2
    ids = np.concatenate([b["simulation_id"] for b in batches])
    # every sample once, in order, intact: no frame's memory was reused while the buffer held it
    np.testing.assert_array_equal(targets, targets[:, :1, :1] * np.ones((1, 8, 8), "f4"))
    for sid in set(ids.tolist()):
        mine = ids == sid
        np.testing.assert_allclose(times[mine] * steps, np.arange(1, steps + 1))
        x = targets[mine][:, 0, 0] / (times[mine] * steps)  # ramp: x * (t + 1)
        np.testing.assert_allclose(x, x[0], rtol=1e-5)


def test_no_room_for_shared_memory_streams_over_sockets_and_says_why(tmp_path, helpers_on_path, monkeypatch, caplog):
    def no_room(size: int, prefix: str = "engage") -> SharedSegment:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SharedSegment, "create", staticmethod(no_room))
    batches, scheduler, _ = stream_all(ramp_simulator(), tmp_path, simulations=1)
    assert sum(len(b["target"]) for b in batches) == 6 and scheduler.shared_memory_samples == 0
    assert "stream over sockets: no shared memory of" in caplog.text and "enlarge /dev/shm" in caplog.text


def test_a_simulation_without_the_trainers_shared_memory_uses_its_socket(tmp_path, helpers_on_path):
    batches, scheduler, _ = stream_all(helpers_on_path.Rogue("elsewhere"), tmp_path, simulations=2)
    assert scheduler.segment is not None  # the trainer offered it; the simulations could not map it
    assert sum(len(b["target"]) for b in batches) == 12 and scheduler.finished == 2
    assert scheduler.shared_memory_samples == 0


def test_processes_started_elsewhere_get_no_shared_memory(tmp_path, helpers_on_path):
    from engage.core.executors import LocalExecutor

    class BehindALink(LocalExecutor):
        shares_memory = False  # e.g. a host in a network namespace: its samples must cross the link

    batches, scheduler, _ = stream_all(ramp_simulator(), tmp_path, simulations=1, executor=BehindALink())
    assert scheduler.segment is None and scheduler.shared_memory_samples == 0
    assert sum(len(b["target"]) for b in batches) == 6


def test_samples_sent_again_after_a_retry_are_skipped(tmp_path, helpers_on_path):
    # attempt 1 sends 2 samples and dies; attempt 2 sends them again, in a message with the next 2
    batches, _, journal = stream_all(helpers_on_path.Rogue("overlap"), tmp_path, simulations=1)
    latest = journal.latest()[0]
    assert latest["status"] == "finished" and latest["attempt"] == 2 and latest["samples_received"] == 6
    times = np.concatenate([b["time"] for b in batches])[:, 0]
    targets = np.concatenate([b["target"] for b in batches])[:, 0, 0]
    np.testing.assert_allclose(times * 6, [1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(targets, latest["parameters"]["x"] * times * 6, rtol=1e-5)


def test_permanent_failure_is_reported_and_redrawn(tmp_path, helpers_on_path):
    sim = helpers_on_path.Rogue("shape")
    sim.launch_command = lambda address, sid, attempt: [
        sys.executable, "-m", "test_online_helpers", address, str(sid), "1", "shape"
    ]  # fmt: skip
    buffer = TrainingBuffer(capacity=64, policy="fifo")
    sampler = UniformSampler(sim.space)
    scheduler = SimulationScheduler(
        sim, sampler, buffer, simulations=1, retries=1, on_failure="redraw", workdir=str(tmp_path)
    )
    scheduler.max_samples = None
    scheduler.start()
    time.sleep(1)
    deadline = time.time() + 60
    while scheduler.failed < 2 and time.time() < deadline:
        time.sleep(0.2)
    scheduler.stop()
    assert scheduler.failed >= 2 and len(sampler.failed) >= 2  # each redrawn point failed for good
    assert buffer.inserted == 0  # nothing malformed reached the buffer


def test_executor_options_that_do_not_fit_name_the_field(tmp_path, helpers_on_path):
    from engage.core.online import OnlineDataModule

    sim = ramp_simulator()
    # checked when the DataModule is made, before any run or folder exists
    with pytest.raises(ValueError, match=r"data.executor_options.layer: unknown key; allowed: log_dir"):
        OnlineDataModule(
            sim, UniformSampler(sim.space), simulations=1, executor="local", executor_options={"layer": "edge"},
            workdir=str(tmp_path),
        )  # fmt: skip
    assert not list(tmp_path.iterdir())


def test_a_read_policy_of_ones_own_is_an_object_the_buffer_asks():
    from engage.core.online.policies import ReadPolicy

    class Newest(ReadPolicy):
        name = "newest"

        def choose(self, occupied, arrival, n, rng):
            return occupied[np.argsort(-arrival)[:n]]

    buffer = TrainingBuffer(capacity=4, policy=Newest())
    for i in range(3):
        buffer.put(np.full(2, i, "float32"), parameters=np.zeros(1), simulation_id=0, time=float(i))
    assert buffer.get_batch(2)["target"][:, 0].tolist() == [2.0, 1.0]
    assert (buffer.policy, buffer.max_reads, len(buffer)) == ("newest", 1, 1)
