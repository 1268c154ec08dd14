"""Every configured link constraint of the ``netns`` provider, measured.

``delay`` is one-way per direction (EnOSlib ``Netem`` semantics): a symmetric 20 ms constraint
gives a 40 ms round trip, an asymmetric one delays only ``src -> dst``. Round-trip times must be
within 1 ms or 10 % of the configured sum, the loss of at least 2000 probes within binomial 99 %
bounds, and TCP goodput within 10 % of the configured rate. The round trips here are all 20 ms or
more, so that a busy machine's scheduling jitter (up to about 1 ms) stays inside the bound.

The forwarder and the probes run at real-time priority, but on a shared virtual machine the
host can still take the CPU away, for spells of several seconds in which every round trip
through the forwarder takes milliseconds longer: a link whose measurement misses its bound is
measured again, a second later, up to five times in all. A wrong constraint misses every time;
the attempts are in the printed results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from engage.deploy.infrastructure import Infrastructure
from engage.deploy.netem.measure import binomial_interval, measure_link
from engage.deploy.providers.netns import NetnsProvider, netns_available

_REASON = netns_available()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.timing,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
]

LINKS = {
    "provider": "netns",
    "layers": [{"name": "cloud"}, {"name": "fog"}, {"name": "edge"}],
    "network": [
        {"src": "edge", "dst": "cloud", "delay": "20ms", "loss": 0.05},
        {"src": "fog", "dst": "cloud", "delay": "10ms", "rate": "20mbit"},
        {"src": "edge", "dst": "fog", "delay": "20ms", "symmetric": False},
    ],
    # the loss draws are seeded (options.seed, default 0): a rerun drops the same packets
    "options": {"seed": 0},
}


def _close(measured_ms: float, expected_ms: float) -> bool:
    return abs(measured_ms - expected_ms) <= max(1.0, 0.1 * expected_ms)


def _rate_close(goodput_bps: float, rate_bps: float) -> bool:
    return abs(goodput_bps - rate_bps) <= 0.1 * rate_bps


def _measure(provider: NetnsProvider, src: str, dst: str, within: Callable[[dict], bool], **options) -> dict:
    """``measure_link``, again while ``within`` says the result misses its bound (5 tries, a
    second apart: the host's slow spells last several seconds)."""
    missed: list[dict] = []
    result = measure_link(provider, src, dst, **options)
    while not within(result) and len(missed) < 4:
        missed.append(result)
        time.sleep(1.0)
        result = measure_link(provider, src, dst, **options)
    return {**result, "missed_attempts": missed}


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    infra = Infrastructure.from_dict(LINKS)
    infra.validate()
    provider = NetnsProvider(infra, tmp_path_factory.mktemp("measure"))
    try:
        provider.deploy()
        provider.apply_network()
        results = {
            "edge-cloud": _measure(
                provider, "edge-1", "cloud-1", lambda r: _close(r["probe"]["rtt_median_ms"], 40.0),
                probes=2000, interval=0.0005,
            ),
            "fog-cloud": _measure(
                provider, "fog-1", "cloud-1",
                lambda r: _close(r["probe"]["rtt_median_ms"], 20.0) and _rate_close(r["stream"]["goodput_bps"], 20e6),
                probes=300, stream_seconds=3.0,
            ),
            "edge-fog": _measure(
                provider, "edge-1", "fog-1", lambda r: _close(r["probe"]["rtt_median_ms"], 20.0), probes=300
            ),
            "cloud-cloud": _measure(
                provider, "cloud-1", "cloud-1", lambda r: r["probe"]["rtt_median_ms"] < 2.0, probes=100
            ),
        }  # fmt: skip
    finally:
        provider.destroy()
    results["forwarder"] = provider.forwarder_stats()
    print(json.dumps(results, indent=1))
    return results


def test_round_trip_time_is_twice_the_one_way_delay(measured):
    assert _close(measured["edge-cloud"]["probe"]["rtt_median_ms"], 40.0), measured["edge-cloud"]
    assert _close(measured["fog-cloud"]["probe"]["rtt_median_ms"], 20.0), measured["fog-cloud"]


def test_an_asymmetric_constraint_delays_one_direction_only(measured):
    assert _close(measured["edge-fog"]["probe"]["rtt_median_ms"], 20.0), measured["edge-fog"]
    # traffic that stays on a host is not emulated at all
    assert measured["cloud-cloud"]["probe"]["rtt_median_ms"] < 2.0


def test_loss_is_within_binomial_bounds(measured):
    probe = measured["edge-cloud"]["probe"]
    assert probe["sent"] >= 2000
    # a probe is lost if either its way out or its echo is dropped
    expected = 1 - (1 - 0.05) ** 2
    low, high = probe["loss_interval_99"]
    assert low <= expected <= high, probe
    # the forwarder's own counters, one direction at a time
    for direction in ("edge->cloud", "cloud->edge"):
        stats = measured["forwarder"][direction]
        low, high = binomial_interval(stats["received"], stats["dropped"])
        assert low <= 0.05 <= high, (direction, stats)
    assert measured["forwarder"]["fog->cloud"]["dropped"] == 0
    assert measured["fog-cloud"]["probe"]["loss"] == 0.0


def test_tcp_goodput_matches_the_rate(measured):
    rate = measured["fog-cloud"]["stream"]["goodput_bps"]
    assert _rate_close(rate, 20e6), rate
