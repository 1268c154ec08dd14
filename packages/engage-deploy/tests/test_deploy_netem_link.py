"""The pieces of the user-space network emulation that need no root: the link model, the tc
commands, the measurement arithmetic, and the measurement tools over loopback."""

from __future__ import annotations

import threading

import pytest

from engage.deploy.netem.link import LinkEmulator, LinkSpec
from engage.deploy.netem.measure import MeasureServer, binomial_interval, goodput, probe_udp, stream_tcp
from engage.deploy.netem.shaping import htb_commands, queue_limit


def test_packets_leave_after_the_delay_in_arrival_order():
    link = LinkEmulator(LinkSpec(name="edge->cloud", device="t1", delay=0.02))
    for i, now in enumerate([0.000, 0.001, 0.005]):
        assert link.receive(bytes([i]), now)
    assert link.due(0.0199) == []
    assert link.next_due() == pytest.approx(0.02)
    assert link.due(0.021) == [b"\x00", b"\x01"]
    assert link.due(1.0) == [b"\x02"]
    assert link.next_due() is None
    assert link.stats.sent == 3 and link.stats.dropped == 0


def test_loss_is_seeded_and_within_binomial_bounds():
    def kept_pattern(seed: int) -> list[bool]:
        link = LinkEmulator(LinkSpec(name="l", device="t1", loss=0.05, seed=seed))
        return [link.receive(b"x", 0.0) for _ in range(20_000)]

    first, again, other = kept_pattern(3), kept_pattern(3), kept_pattern(4)
    assert first == again, "the same seed must drop the same packets"
    assert first != other
    dropped = first.count(False)
    low, high = binomial_interval(20_000, dropped)
    assert low <= 0.05 <= high, (dropped, low, high)


def test_invalid_link_is_rejected_with_the_field_named():
    with pytest.raises(ValueError, match="loss"):
        LinkEmulator(LinkSpec(name="l", device="t1", loss=1.5))
    with pytest.raises(ValueError, match="delay"):
        LinkEmulator(LinkSpec(name="l", device="t1", delay=-1.0))


def test_htb_has_one_class_and_filter_per_host_pair():
    pairs = [("10.231.2.2", "10.231.1.2"), ("10.231.2.3", "10.231.1.2")]
    cmds = [" ".join(c) for c in htb_commands("t3", 5e6, pairs, delay=0.01)]
    classes = [c for c in cmds if c.startswith("tc class")]
    filters = [c for c in cmds if c.startswith("tc filter")]
    assert len(classes) == 3  # default + one per pair
    assert all("rate 5000000bit ceil 5000000bit" in c for c in classes)
    assert len(filters) == 2
    assert "match ip src 10.231.2.3/32 match ip dst 10.231.1.2/32 flowid 1:3" in filters[1]
    assert queue_limit(5e6, 0.01) == 64 and queue_limit(1e9, 0.05) > 1000


def test_goodput_leaves_out_the_warm_up():
    times = [0.0, 0.1, 1.0, 2.0, 3.0, 4.0]
    totals = [0, 500, 1000, 2000, 3000, 4000]
    result = goodput(times, totals, warmup=0.25)
    assert result["bytes"] == 4000
    assert result["goodput_bps"] == pytest.approx(3000 * 8 / 3.0)


def test_probe_and_stream_over_loopback():
    server = MeasureServer("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        probes = probe_udp("127.0.0.1", server.port, count=200, interval=0.0002, wait=1.0)
        assert probes["received"] == 200 and probes["loss"] == 0.0
        assert 0 < probes["rtt_median_ms"] < 20
        stream = stream_tcp("127.0.0.1", server.port, seconds=0.3)
        assert stream["bytes"] > 1_000_000 and stream["goodput_bps"] > 1e7
    finally:
        server.close()
        thread.join(timeout=2)
