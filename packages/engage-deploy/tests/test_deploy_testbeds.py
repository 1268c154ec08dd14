"""Testbed providers: infrastructure translated into EnOSlib's own configuration objects, and
the deploy / network / destroy sequence with only the testbed's network calls mocked."""

from __future__ import annotations

import shlex
from pathlib import Path
from unittest import mock

import enoslib as en
import pytest
import yaml

from engage.deploy.infrastructure import Infrastructure
from engage.deploy.providers import get_provider
from engage.deploy.providers.base import ProviderError
from engage.deploy.providers.testbeds import G5kProvider

CONF = Path(__file__).parents[1] / "src" / "engage" / "deploy" / "conf" / "infrastructure"


def shipped(name: str) -> Infrastructure:
    infra = Infrastructure.from_dict(yaml.safe_load((CONF / f"{name}.yaml").read_text()))
    infra.validate()
    return infra


@pytest.fixture
def no_g5k_api():
    # the only network call EnOSlib makes while building a G5k configuration
    with mock.patch("enoslib.infra.enos_g5k.configuration.is_exotic_cluster", return_value=False) as patched:
        yield patched


def test_g5k_configuration(no_g5k_api, tmp_path) -> None:
    infra = shipped("g5k")
    conf = G5kProvider(infra, tmp_path).enoslib_configuration()
    assert isinstance(conf, en.G5kConf)
    data = conf.to_dict()
    machines = {m["roles"][0]: m for m in data["resources"]["machines"]}
    assert set(machines) == {layer.name for layer in infra.layers}
    assert machines["edge"]["nodes"] == infra.layer("edge").hosts
    assert machines["cloud"]["cluster"] == infra.options["clusters"]["cloud"]
    assert data["walltime"] == infra.options["walltime"]
    assert data["resources"]["networks"][0]["site"] == infra.options["site"]
    assert no_g5k_api.called


def test_other_testbed_configurations(tmp_path) -> None:
    vagrant = get_provider("vagrant")(shipped("vagrant"), tmp_path).enoslib_configuration()
    machines = {m.roles[0]: m for m in vagrant.machines}
    assert machines["edge"].flavour_desc == {"core": 1, "mem": 512} and machines["edge"].number == 2
    chameleon = get_provider("chameleon")(shipped("chameleon"), tmp_path).enoslib_configuration()
    assert isinstance(chameleon, en.CBMConf) and chameleon.machines[0].number >= 1
    static = get_provider("static")(shipped("static"), tmp_path).enoslib_configuration()
    assert [m.alias for m in static.machines] == ["cloud-1", "edge-1", "edge-2"]
    with pytest.raises(ProviderError, match=r"infrastructure\.options\.site is required by the g5k provider"):
        G5kProvider(Infrastructure.from_dict({"provider": "g5k", "options": {"cluster": "x"}}), tmp_path)


def test_g5k_deploy_network_destroy_with_the_testbed_mocked(no_g5k_api, tmp_path) -> None:
    infra = shipped("g5k")
    fake_hosts = {
        layer.name: [en.Host(f"{layer.name}-{i}.rennes.grid5000.fr", user="root") for i in range(layer.hosts)]
        for layer in infra.layers
    }
    fake = mock.MagicMock()
    fake.return_value.init.return_value = (en.Roles(fake_hosts), en.Networks())
    netem = mock.MagicMock()
    with mock.patch.object(en, "G5k", fake), mock.patch.object(en, "NetemHTB", netem):
        with G5kProvider(infra, tmp_path) as provider:
            edge1 = provider.host("edge-1")
            assert edge1.remote and edge1.exec_prefix[0] == "ssh" and edge1.exec_prefix[-1].startswith("root@edge-")
            argv = provider.command_for(edge1, ["python", "-c", "print(1)"], env={"A": "b c"}, cwd="/tmp/w")
            # ssh joins its arguments into one line for the remote shell: the script is quoted once
            assert argv[-3:-1] == ["sh", "-c"]
            assert shlex.split(argv[-1]) == ["cd /tmp/w && env A='b c' python -c 'print(1)'"]
        calls = netem.return_value.add_constraints.call_args_list
        assert len(calls) == len(infra.network)
        first = calls[0].kwargs
        constraint = infra.network[0]
        assert first["delay"] == constraint.delay and first["rate"] == constraint.rate
        assert first["symmetric"] == constraint.symmetric and first["loss"] == f"{constraint.loss * 100:g}%"
        assert {h.address for h in first["src"]} == {h.address for h in fake_hosts[constraint.src]}
        netem.return_value.deploy.assert_called_once()
        netem.return_value.destroy.assert_called_once()
        fake.return_value.destroy.assert_called_once()
