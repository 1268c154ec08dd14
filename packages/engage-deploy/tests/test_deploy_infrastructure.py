"""Infrastructure descriptions: units, one-line validation errors, the local provider."""

from __future__ import annotations

import re
import sys

import pytest

from engage.deploy.infrastructure import (
    Infrastructure,
    InfrastructureError,
    parse_duration,
    parse_rate,
    parse_size,
)
from engage.deploy.providers import get_provider, provider_names

EDGE_CLOUD = {
    "provider": "local",
    "layers": [
        {"name": "cloud", "hosts": 1, "cpu": 4, "memory": "4GiB", "services": [{"name": "trainer"}]},
        {"name": "edge", "hosts": 2, "cpu": 1, "memory": "512MiB", "services": [{"name": "simulator", "quantity": 2}]},
    ],
    "network": [{"src": "edge", "dst": "cloud", "delay": "20ms", "rate": "50mbit", "loss": 0.01}],
}


def test_units() -> None:
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1.5s") == pytest.approx(1.5)
    assert parse_duration("250us") == pytest.approx(250e-6)
    assert parse_duration(5) == pytest.approx(0.005)
    assert parse_rate("100mbit") == 100e6
    assert parse_rate("1gbit") == 1e9
    assert parse_rate("1mbps") == 8e6
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("2G") == 2 * 2**30
    assert parse_size("1MB") == 10**6
    with pytest.raises(InfrastructureError, match="unknown unit 'parsecs'"):
        parse_duration("3parsecs")
    with pytest.raises(InfrastructureError, match="cannot read"):
        parse_rate("fast")
    with pytest.raises(InfrastructureError, match=r"'-5ms' is negative; use a value >= 0"):
        parse_duration("-5ms")


def test_hosts_and_roundtrip() -> None:
    infra = Infrastructure.from_dict(EDGE_CLOUD)
    infra.validate()
    assert infra.host_names() == ["cloud-1", "edge-1", "edge-2"]
    assert infra.layer("edge").memory_bytes == 512 * 2**20
    constraint = infra.constraint_between("cloud", "edge")
    assert constraint is not None and constraint.delay_s == pytest.approx(0.02) and constraint.rate_bps == 50e6
    assert Infrastructure.from_dict(infra.to_dict()) == infra
    assert Infrastructure().host_names() == ["local-1"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(provider="docker"), "unknown provider 'docker'; known providers: chameleon, g5k, local"),
        (
            lambda d: d["layers"][1].update(hosts=0),
            "infrastructure.layers[1].hosts is 0 (layer 'edge'); a layer needs hosts >= 1",
        ),
        (lambda d: d["network"][0].update(dst="fog"), "infrastructure.network[0].dst: no layer named 'fog'"),
        (lambda d: d["network"][0].update(delay="20 lightyears"), "infrastructure.network[0].delay: unknown unit"),
        (lambda d: d["network"][0].update(loss=5), "loss is 5; use a fraction in [0, 1)"),
        (lambda d: d["layers"][0].update(memory="lots"), "infrastructure.layers[0].memory: cannot read 'lots'"),
        (lambda d: d["layers"][0].update(gpus=2), "infrastructure.layers[0]: unknown key 'gpus'"),
        (lambda d: d.update(layers=[]), "infrastructure.layers is empty"),
    ],
)
def test_validation_errors_are_one_line(change, message) -> None:
    import copy

    data = copy.deepcopy(EDGE_CLOUD)
    change(data)
    with pytest.raises(InfrastructureError, match=re.escape(message)) as info:
        Infrastructure.from_dict(data).validate()
    assert "\n" not in str(info.value)


def test_registry_lists_every_provider() -> None:
    assert provider_names() == ["chameleon", "g5k", "local", "netns", "slurm", "static", "vagrant"]
    with pytest.raises(InfrastructureError, match="unknown provider 'docker'"):
        get_provider("docker")


def test_local_provider_runs_on_every_host(tmp_path) -> None:
    infra = Infrastructure.from_dict(EDGE_CLOUD)
    with get_provider("local")(infra, tmp_path) as provider:
        assert [h.name for h in provider.hosts] == ["cloud-1", "edge-1", "edge-2"]
        assert provider.hosts[1].enoslib_host is None  # EnOSlib is imported when first used
        assert sorted(provider.roles()) == ["cloud", "edge"]
        assert provider.hosts[1].enoslib_host.alias == "edge-1"
        assert provider.warnings and "does not emulate network constraints" in provider.warnings[0]
        log = tmp_path / "out.log"
        proc = provider.run(
            provider.host("edge-2"),
            [sys.executable, "-c", "import os; print(os.environ['X'])"],
            env={"X": "42"},
            log_path=log,
        )
        assert proc.wait(timeout=30) == 0
        assert log.read_text().strip() == "42"
    assert provider.hosts == []
