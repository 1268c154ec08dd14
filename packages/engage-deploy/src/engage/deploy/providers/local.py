"""The ``local`` provider: every host is this machine, reached through EnOSlib's Static provider
with Ansible's local connection. Nothing to set up; network constraints cannot be emulated
between processes of one machine, so they are reported and left out (use ``netns`` for them).
"""

from __future__ import annotations

import logging
import os
import sys

from engage.deploy.infrastructure import Infrastructure
from engage.deploy.providers.base import Host, Provider

log = logging.getLogger(__name__)


class LocalProvider(Provider):
    """Hosts ``<layer>-<i>`` all on localhost; per-host CPU and memory limits are recorded but not enforced.

    Example::

        >>> import tempfile
        >>> infra = Infrastructure.from_dict({"layers": [{"name": "edge", "hosts": 2}]})
        >>> provider = LocalProvider(infra, tempfile.mkdtemp())
        >>> [h.name for h in provider.deploy()]
        ['edge-1', 'edge-2']
    """

    name = "local"

    def __init__(self, infrastructure: Infrastructure, workdir: str | os.PathLike[str]) -> None:
        super().__init__(infrastructure, workdir)
        self.warnings: list[str] = []

    def enoslib_configuration(self):
        """The :class:`enoslib.StaticConf` describing every host as localhost."""
        import enoslib as en

        machines = [
            {
                "roles": [layer.name, "all"],
                "address": "localhost",
                "alias": name,
                # Ansible's interpreter discovery may pick a broken shim: use this interpreter
                "extra": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            }
            for layer, name in self.infrastructure.iter_hosts()
        ]
        network = {
            "roles": ["local"],
            "cidr": "127.0.0.0/8",
            "start": "127.0.0.2",
            "end": "127.255.255.254",
            "gateway": "127.0.0.1",
            "dns": "127.0.0.1",
        }
        return en.StaticConf.from_dictionary({"resources": {"machines": machines, "networks": [network]}})

    def planned_launcher_address(self) -> str:
        """Every host is this machine: the loopback."""
        return "127.0.0.1"

    def deploy(self) -> list[Host]:
        self.hosts = [
            Host(name=name, layer=layer.name, address="127.0.0.1", cpu=layer.cpu, memory=layer.memory_bytes)
            for layer, name in self.infrastructure.iter_hosts()
        ]
        return self.hosts

    def apply_network(self) -> None:
        if self.infrastructure.network:
            message = (
                "the local provider runs every host on this machine and does not emulate network constraints "
                f"({len(self.infrastructure.network)} ignored); use infrastructure.provider=netns to apply them"
            )
            self.warnings.append(message)
            log.warning(message)

    def destroy(self) -> None:
        self.hosts = []
