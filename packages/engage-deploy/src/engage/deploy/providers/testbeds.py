"""Real testbeds through EnOSlib's own providers: Grid'5000 (``g5k``), Chameleon bare metal
(``chameleon``), Vagrant VMs (``vagrant``) and machines you already have over SSH (``static``).

Each layer becomes an EnOSlib role with ``hosts`` machines; hosts are named ``<layer>-<i>`` in
the order EnOSlib returns them. Jobs are started over SSH (``remote`` hosts: the job folder is
copied there and back through fsspec's SFTP filesystem), network constraints are applied with
EnOSlib's ``NetemHTB`` (``tc`` netem + htb on the hosts), and ``destroy`` releases the
reservation. ``infrastructure.options`` carries each testbed's settings; see
``conf/infrastructure/<provider>.yaml`` and ``docs/deploy.md`` for complete examples.

Example (translation only; nothing is reserved until ``deploy``)::

    >>> from engage.deploy.infrastructure import Infrastructure
    >>> infra = Infrastructure.from_dict({"provider": "static", "layers": [{"name": "edge", "hosts": 1}],
    ...     "options": {"hosts": {"edge-1": {"address": "192.0.2.7", "user": "me"}}}})
    >>> conf = StaticProvider(infra, "/tmp/static-doc").enoslib_configuration()
    >>> conf.machines[0].address, conf.machines[0].alias
    ('192.0.2.7', 'edge-1')
"""

from __future__ import annotations

import os
import sys
from typing import Any, ClassVar

from engage.deploy.infrastructure import Infrastructure
from engage.deploy.providers.base import Host, Provider, ProviderError


class EnoslibTestbedProvider(Provider):
    """Common part: EnOSlib provider object, hosts over SSH, NetemHTB constraints, SFTP files."""

    #: the keys of ``infrastructure.options`` this provider requires
    required_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, infrastructure: Infrastructure, workdir: str | os.PathLike[str]) -> None:
        super().__init__(infrastructure, workdir)
        self.options = dict(infrastructure.options or {})
        missing = [k for k in self.required_options if k not in self.options]
        if missing:
            raise ProviderError(
                f"infrastructure.options.{missing[0]} is required by the {self.name} provider; "
                f"see conf/infrastructure/{self.name}.yaml for an example"
            )
        self.enoslib_provider: Any = None
        self.networks: Any = None
        self.netem: Any = None
        self.warnings: list[str] = []

    # --------------------------------------------------------------- to be provided per testbed

    def enoslib_configuration(self) -> Any:
        raise ProviderError(f"{type(self).__name__} has no EnOSlib configuration")

    def enoslib_provider_class(self) -> Any:
        raise ProviderError(f"{type(self).__name__} has no EnOSlib provider")

    # --------------------------------------------------------------- lifecycle

    def deploy(self) -> list[Host]:
        conf = self.enoslib_configuration()
        self.enoslib_provider = self.enoslib_provider_class()(conf)
        roles, self.networks = self.enoslib_provider.init()
        self.hosts = []
        for layer in self.infrastructure.layers:
            machines = sorted(roles[layer.name], key=lambda h: h.alias or h.address)
            if len(machines) < layer.hosts:
                raise ProviderError(f"{self.name}: layer {layer.name} got {len(machines)} hosts of {layer.hosts}")
            for name, machine in zip(layer.host_names(), machines):
                self.hosts.append(
                    Host(
                        name=name,
                        layer=layer.name,
                        address=machine.address,
                        cpu=layer.cpu,
                        memory=layer.memory_bytes,
                        exec_prefix=self.ssh_prefix(machine),
                        enoslib_host=machine,
                        remote=True,
                    )
                )
        return self.hosts

    def ssh_prefix(self, machine: Any) -> list[str]:
        """``ssh`` to ``machine`` as EnOSlib would reach it (user, key, port, jump host)."""
        prefix = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"]
        if machine.keyfile:
            prefix += ["-i", str(machine.keyfile)]
        if machine.port:
            prefix += ["-p", str(machine.port)]
        jump = self.options.get("jump")
        if jump:
            prefix += ["-J", str(jump)]
        user = machine.user or self.options.get("user")
        prefix.append(f"{user}@{machine.address}" if user else machine.address)
        return prefix

    def netem_constraints(self) -> list[dict[str, Any]]:
        """The ``NetemHTB.add_constraints`` arguments for each constraint."""
        out = []
        for c in self.infrastructure.network:
            out.append(
                {
                    "src": c.src,
                    "dest": c.dst,
                    "delay": c.delay,
                    "rate": c.rate or "10gbit",
                    "loss": f"{c.loss * 100:g}%" if c.loss else None,
                    "symmetric": c.symmetric,
                }
            )
        return out

    def apply_network(self) -> None:
        constraints = self.netem_constraints()
        if not constraints:
            return
        import enoslib as en

        roles = self.roles()
        self.netem = en.NetemHTB()
        for spec in constraints:
            self.netem.add_constraints(
                src=roles[spec["src"]],
                dest=roles[spec["dest"]],
                delay=spec["delay"],
                rate=spec["rate"],
                loss=spec["loss"],
                symmetric=spec["symmetric"],
            )
        self.netem.deploy()

    def destroy(self) -> None:
        try:
            if self.netem is not None:
                self.netem.destroy()
        finally:
            self.netem = None
            if self.enoslib_provider is not None and self.options.get("release", True):
                self.enoslib_provider.destroy()
            self.enoslib_provider = None
            self.hosts = []

    def filesystem(self, host: Host) -> Any:
        """SFTP to ``host`` (paramiko, as EnOSlib's Ansible uses)."""
        import fsspec

        machine = host.enoslib_host
        kwargs: dict[str, Any] = {"username": machine.user or self.options.get("user")}
        if machine.keyfile:
            kwargs["key_filename"] = str(machine.keyfile)
        if machine.port:
            kwargs["port"] = int(machine.port)
        return fsspec.filesystem("sftp", host=machine.address, **kwargs)

    def remote_workdir(self, host: Host) -> str:
        """Where job folders go on ``host`` (``options.remote_workdir``, default ``/tmp/engage``)."""
        return str(self.options.get("remote_workdir", "/tmp/engage"))


class G5kProvider(EnoslibTestbedProvider):
    """Grid'5000 through ``enoslib.G5k``. Options: ``site``, ``cluster`` (or per-layer
    ``clusters: {layer: cluster}``), ``walltime``, ``job_name``, ``env_name`` (deploys that
    image when set), ``network`` (``prod`` by default)."""

    name = "g5k"
    required_options = ("site", "cluster")

    def enoslib_configuration(self) -> Any:
        import enoslib as en

        clusters = self.options.get("clusters", {})
        settings: dict[str, Any] = {
            "job_name": self.options.get("job_name", "engage"),
            "walltime": self.options.get("walltime", "01:00:00"),
        }
        if self.options.get("env_name"):
            settings.update(job_type=["deploy"], env_name=self.options["env_name"])
        conf = en.G5kConf.from_settings(**settings)
        network = en.G5kNetworkConf(
            id="engage_net", type=self.options.get("network", "prod"), roles=["engage"], site=self.options["site"]
        )
        conf.add_network_conf(network)
        for layer in self.infrastructure.layers:
            # the site is given, so EnOSlib need not ask the Grid'5000 API where a cluster is
            conf.add_machine(
                roles=[layer.name],
                cluster=clusters.get(layer.name, self.options["cluster"]),
                site=self.options["site"],
                nodes=layer.hosts,
                primary_network=network,
            )
        return conf.finalize()

    def enoslib_provider_class(self) -> Any:
        import enoslib as en

        return en.G5k


class ChameleonProvider(EnoslibTestbedProvider):
    """Chameleon Cloud bare metal through EnOSlib's ``CBM`` provider. Options: ``rc_file`` (the
    OpenStack RC file), ``key_name``, ``lease_name``, ``walltime``, ``flavour`` (or per-layer
    ``flavours``), ``image``."""

    name = "chameleon"
    required_options = ("rc_file", "key_name")

    def enoslib_configuration(self) -> Any:
        import enoslib as en

        flavours = self.options.get("flavours", {})
        settings = {
            "key_name": self.options["key_name"],
            "lease_name": self.options.get("lease_name", "engage"),
            "rc_file": self.options["rc_file"],
            "walltime": self.options.get("walltime", "01:00:00"),
            "image": self.options.get("image", "CC-Ubuntu22.04"),
            "resources": {
                "machines": [
                    {
                        "roles": [layer.name],
                        "flavour": flavours.get(layer.name, self.options.get("flavour", "compute_skylake")),
                        "number": layer.hosts,
                    }
                    for layer in self.infrastructure.layers
                ],
                "networks": ["network_interface"],
            },
        }
        return en.CBMConf.from_dictionary(settings)

    def enoslib_provider_class(self) -> Any:
        import enoslib as en

        if not hasattr(en, "CBM"):
            raise ProviderError(
                "the chameleon provider needs EnOSlib's OpenStack extras: pip install 'enoslib[chameleon]'"
            )
        return en.CBM


class VagrantProvider(EnoslibTestbedProvider):
    """Local VMs through ``enoslib.Vagrant``; each layer's ``cpu`` and ``memory`` size its VMs.
    Options: ``backend`` (``libvirt`` or ``virtualbox``), ``box``, ``cidr``."""

    name = "vagrant"

    def enoslib_configuration(self) -> Any:
        import enoslib as en

        machines = []
        for layer in self.infrastructure.layers:
            memory_mib = (layer.memory_bytes or 1024 * 2**20) // 2**20
            machines.append(
                {
                    "roles": [layer.name],
                    "flavour_desc": {"core": max(1, round(layer.cpu or 1)), "mem": int(memory_mib)},
                    "number": layer.hosts,
                }
            )
        settings = {
            "backend": self.options.get("backend", "libvirt"),
            "box": self.options.get("box", "generic/debian12"),
            "resources": {
                "machines": machines,
                "networks": [{"roles": ["engage"], "cidr": self.options.get("cidr", "172.16.42.0/24")}],
            },
        }
        return en.VagrantConf.from_dictionary(settings)

    def enoslib_provider_class(self) -> Any:
        import enoslib as en

        return en.Vagrant


class StaticProvider(EnoslibTestbedProvider):
    """Machines you already have, over SSH, through ``enoslib.Static``. Options: ``hosts``:
    ``{<layer>-<i>: {address, user, keyfile, port}}`` for every host, ``user`` and ``keyfile``
    as defaults, ``cidr`` of their network."""

    name = "static"
    required_options = ("hosts",)

    def enoslib_configuration(self) -> Any:
        import enoslib as en

        table = self.options["hosts"]
        machines = []
        for layer, name in self.infrastructure.iter_hosts():
            if name not in table:
                raise ProviderError(
                    f"infrastructure.options.hosts.{name} is missing; give its address (and user/keyfile)"
                )
            entry = dict(table[name]) if isinstance(table[name], dict) else {"address": str(table[name])}
            machine = {"roles": [layer.name], "address": entry["address"], "alias": name}
            for key in ("user", "keyfile", "port"):
                value = entry.get(key, self.options.get(key))
                if value is not None:
                    machine[key] = value
            if entry["address"] in ("localhost", "127.0.0.1"):
                machine["extra"] = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
            machines.append(machine)
        network = {
            "roles": ["engage"],
            "cidr": self.options.get("cidr", "10.0.0.0/8"),
            "start": self.options.get("start", "10.0.0.10"),
            "end": self.options.get("end", "10.255.255.250"),
            "gateway": self.options.get("gateway", "10.0.0.1"),
            "dns": self.options.get("dns", "10.0.0.1"),
        }
        return en.StaticConf.from_dictionary({"resources": {"machines": machines, "networks": [network]}})

    def enoslib_provider_class(self) -> Any:
        import enoslib as en

        return en.Static

    def destroy(self) -> None:
        # nothing was reserved: only the constraints are removed
        self.options.setdefault("release", False)
        super().destroy()


__all__ = ["ChameleonProvider", "EnoslibTestbedProvider", "G5kProvider", "StaticProvider", "VagrantProvider"]
