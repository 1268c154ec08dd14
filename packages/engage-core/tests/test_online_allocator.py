"""The allocator setting that lets network frames reuse freed memory (engage.core.online.allocator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from engage.core.online import allocator

# Receives 4 MiB frames over TCP and hands them to a consumer thread that drops them 16 at a
# time (as the training buffer keeps samples by reference until a batch has read them), then
# prints the minor page faults per frame over the last 100 frames.
FRAMES = textwrap.dedent(
    """
    import json, queue, resource, sys, threading
    import numpy as np, zmq
    from engage.core.online.allocator import retain_freed_memory

    SIZE, COUNT = 4 << 20, 300
    retained = retain_freed_memory(SIZE, 64 * SIZE) if sys.argv[1] == "retain" else None
    context = zmq.Context()
    receiver = context.socket(zmq.PULL)
    port = receiver.bind_to_random_port("tcp://127.0.0.1")

    def send():
        sender = context.socket(zmq.PUSH)
        sender.connect(f"tcp://127.0.0.1:{port}")
        frame = np.ones(SIZE, np.uint8)
        for _ in range(COUNT):
            sender.send(frame, copy=False)
        sender.close(linger=-1)

    def consume():
        batch = []
        while (frame := frames.get()) is not None:
            batch.append(frame)
            if len(batch) == 16:
                batch = []

    frames = queue.Queue()
    threads = [threading.Thread(target=send), threading.Thread(target=consume)]
    for thread in threads:
        thread.start()
    for i in range(COUNT):
        if i == COUNT - 100:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        frames.put(receiver.recv(copy=False))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    frames.put(None)
    for thread in threads:
        thread.join()
    print(json.dumps({"retained": retained, "faults_per_frame": faults / 100}), flush=True)
    # the socket closes before its context, not in interpreter teardown: a context terminated
    # while it still has a socket waits forever (and pyzmq's thread that frees zero-copy frames
    # may be mid-send then)
    receiver.close(linger=0)
    context.term()
    """
)


def _faults_per_frame(mode: str) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", FRAMES, mode], capture_output=True, text=True, timeout=120, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator.configured_elsewhere() is not None, reason="needs glibc's allocator, left to itself")
def test_frames_reuse_freed_memory_instead_of_faulting_in_new_pages():
    retained = _faults_per_frame("retain")
    assert retained["retained"] is True
    # a 4 MiB frame is 1024 pages: reused memory faults (almost) none of them in again
    assert retained["faults_per_frame"] < 32, retained
    untouched = _faults_per_frame("leave")
    print(f"page faults per 4 MiB frame: {retained['faults_per_frame']} retained, {untouched['faults_per_frame']} not")


def test_an_allocator_configured_by_the_environment_is_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    reason = allocator.configured_elsewhere()
    assert reason is not None and ("MALLOC_TRIM_THRESHOLD_ configures it" in reason or "not glibc" in reason)
    assert allocator.retain_freed_memory(4 << 20, 1 << 30) is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=1")
    assert allocator.configured_elsewhere() is not None
    assert allocator.retain_freed_memory(4 << 20, 1 << 30) is False


def test_frames_too_large_for_the_heaps_and_bad_sizes():
    # frames this large are mapped one by one whatever the thresholds: nothing is changed
    assert allocator.retain_freed_memory(64 << 20, 1 << 30) is False
    with pytest.raises(ValueError, match="frame_bytes"):
        allocator.retain_freed_memory(0, 1 << 30)
