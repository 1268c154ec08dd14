"""The central workflow on ``netns``: simulators on edge hosts stream their samples to a trainer
on a cloud host, over two link settings; the measured stream throughput follows the links.

Each simulator sends 64x64 float32 fields (16 KiB samples with a small header) as fast as its
link lets it; the receiver on ``cloud-1`` counts whole samples per connection. Rate limits apply
per host pair (EnOSlib ``NetemHTB`` semantics), so two edge hosts at ``R`` each deliver ``2 R``.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from engage.deploy.infrastructure import Infrastructure
from engage.deploy.providers.netns import NetnsProvider, netns_available

_REASON = netns_available()
pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

PORT = 5555
SECONDS = 3.0

SIMULATOR = r"""
import socket, struct, sys, time
import numpy as np
address, port, seconds, sim_id = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(sim_id)
field = rng.standard_normal((64, 64)).astype("<f4")
sock = socket.create_connection((address, port), timeout=30)
end, index = time.monotonic() + seconds, 0
while time.monotonic() < end:
    # one explicit-time heat-equation step, so the stream carries evolving fields, not a constant
    inner = field[1:-1, 1:-1]
    inner += 0.1 * (field[:-2, 1:-1] + field[2:, 1:-1] + field[1:-1, :-2] + field[1:-1, 2:] - 4 * inner)
    sock.sendall(struct.pack("<iiI", sim_id, index, field.nbytes) + field.tobytes())
    index += 1
sock.close()
"""

TRAINER = r"""
import json, select, socket, struct, sys, time
from engage.deploy.netem.measure import goodput
address, port, expected = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
server = socket.create_server((address, port))
print("listening", flush=True)
conns, streams = [], {}
while len(streams) < expected or any(not s["closed"] for s in streams.values()):
    readable, _, _ = select.select([server, *conns], [], [], 30)
    if not readable:
        break
    for sock in readable:
        if sock is server:
            conn, _ = server.accept()
            conns.append(conn)
            streams[conn] = {"buf": b"", "samples": 0, "times": [], "totals": [], "closed": False, "bytes": 0}
            continue
        s = streams[sock]
        data = sock.recv(1 << 16)
        if not data:
            s["closed"] = True
            conns.remove(sock)
            continue
        s["buf"] += data
        while len(s["buf"]) >= 12:
            sim_id, index, nbytes = struct.unpack_from("<iiI", s["buf"])
            if len(s["buf"]) < 12 + nbytes:
                break
            s["buf"] = s["buf"][12 + nbytes:]
            s["samples"] += 1
            s["bytes"] += 12 + nbytes
            s["times"].append(time.monotonic())
            s["totals"].append(s["bytes"])
report = [{"samples": s["samples"], **goodput(s["times"], s["totals"])} for s in streams.values()]
print(json.dumps(report), flush=True)
"""


def _stream(tmp_path, rate: str) -> list[dict]:
    infra = Infrastructure.from_dict(
        {
            "provider": "netns",
            "layers": [
                {"name": "cloud", "hosts": 1, "cpu": 1.5, "memory": "1GiB", "services": [{"name": "trainer"}]},
                {"name": "edge", "hosts": 2, "cpu": 0.5, "memory": "256MiB", "services": [{"name": "simulator"}]},
            ],
            "network": [{"src": "edge", "dst": "cloud", "delay": "10ms", "rate": rate}],
        }
    )
    infra.validate()
    with NetnsProvider(infra, tmp_path / rate) as provider:
        cloud = provider.host("cloud-1")
        trainer_log = tmp_path / f"trainer-{rate}.log"
        trainer = provider.run(
            cloud, [sys.executable, "-c", TRAINER, cloud.address, str(PORT), "2"], log_path=trainer_log
        )
        deadline = time.monotonic() + 20
        while "listening" not in trainer_log.read_text() and time.monotonic() < deadline:
            assert trainer.poll() is None, trainer_log.read_text()
            time.sleep(0.05)
        simulators = [
            provider.run(
                host,
                [sys.executable, "-c", SIMULATOR, cloud.address, str(PORT), str(SECONDS), str(i)],
                log_path=tmp_path / f"{host.name}-{rate}.log",
            )
            for i, host in enumerate(provider.hosts_of("edge"))
        ]
        for sim in simulators:
            assert sim.wait(timeout=30) == 0
        assert trainer.wait(timeout=30) == 0, trainer_log.read_text()
    return json.loads(trainer_log.read_text().splitlines()[-1])


def test_stream_throughput_follows_the_link_rate(tmp_path):
    slow = _stream(tmp_path, "4mbit")
    fast = _stream(tmp_path, "20mbit")
    print(json.dumps({"4mbit": slow, "20mbit": fast}))
    assert len(slow) == len(fast) == 2 and all(s["samples"] > 0 for s in slow + fast)
    # each edge host has its own rate-limited path to the cloud host
    for stream in slow:
        assert abs(stream["goodput_bps"] - 4e6) <= 0.15 * 4e6, stream
    for stream in fast:
        assert abs(stream["goodput_bps"] - 20e6) <= 0.15 * 20e6, stream
    slow_total = sum(s["goodput_bps"] for s in slow)
    fast_total = sum(s["goodput_bps"] for s in fast)
    assert 4.0 <= fast_total / slow_total <= 6.0, (slow_total, fast_total)
