"""The ``deploy`` executor: an online-training job launched by the engage launcher starts its
simulation processes on the infrastructure's hosts (by default the layer that runs the
``simulator`` service), not beside the trainer.

The launcher hands every job the deployed hosts in ``ENGAGE_DEPLOY_HOSTS`` (JSON) and the job's
own host in ``ENGAGE_DEPLOY_HOST``; the executor starts each simulation on the next host of the
simulation layer (round robin), or, with the launcher's ``placement: optimize``, on the host of the
next ``simulator`` instance of the plan (``ENGAGE_DEPLOY_PLACEMENT``), through that host's
``exec_prefix`` (``ip netns exec`` and its cgroup for ``netns``, SSH for testbeds), and the
trainer listens on its own host's address so the simulations reach it over the emulated links.

Example (``engage run`` options)::

    engage run -m hydra/launcher=engage +infrastructure=netns_edge_cloud hydra.launcher.layer=cloud \\
        data=online data.executor=deploy
"""

from __future__ import annotations

import json
import os
import shlex
import socket
from typing import Any

from engage.core.executors import Executor, LaunchRequest, SimulationProcess, start_logged_process

HOSTS_ENV = "ENGAGE_DEPLOY_HOSTS"
HOST_ENV = "ENGAGE_DEPLOY_HOST"
#: the layer whose hosts run simulations (default: the one with a ``simulator`` service, else the last)
LAYER_ENV = "ENGAGE_DEPLOY_SIMULATION_LAYER"
#: service instance -> host, from the launcher's ``placement: optimize``
PLACEMENT_ENV = "ENGAGE_DEPLOY_PLACEMENT"


class DeployExecutor(Executor):
    """Simulations on the hosts of one layer of the launcher's infrastructure, round robin, or on
    the hosts the launcher's optimised placement gave the ``simulator`` instances (an explicit
    ``layer`` wins over the placement)."""

    def __init__(self, log_dir: str | None = None, layer: str | None = None) -> None:
        raw = os.environ.get(HOSTS_ENV)
        if not raw:
            raise ValueError(
                "data.executor=deploy needs the engage launcher: run with -m hydra/launcher=engage "
                "(ENGAGE_DEPLOY_HOSTS is not set)"
            )
        self.hosts: list[dict[str, Any]] = json.loads(raw)
        self.log_dir = log_dir
        placed = self._placed_simulators() if layer is None and not os.environ.get(LAYER_ENV) else []
        self.layer = layer or os.environ.get(LAYER_ENV) or self._default_layer()
        self.targets = placed or [h for h in self.hosts if h["layer"] == self.layer]
        if not self.targets:
            layers = sorted({h["layer"] for h in self.hosts})
            raise ValueError(f"{LAYER_ENV}={self.layer!r} names no layer with hosts; layers are {', '.join(layers)}")
        self.shares_filesystem = not any(h.get("remote") for h in self.targets)
        self._next = 0

    def _placed_simulators(self) -> list[dict[str, Any]]:
        """One entry per ``simulator#k`` instance of the launcher's plan, in instance order."""
        plan = json.loads(os.environ.get(PLACEMENT_ENV) or "{}")
        by_name = {h["name"]: h for h in self.hosts}
        instances = sorted(
            (name for name in plan if name.startswith("simulator#")), key=lambda n: int(n.split("#", 1)[1])
        )
        return [by_name[plan[name]] for name in instances if plan[name] in by_name]

    def _default_layer(self) -> str:
        for host in self.hosts:
            if "simulator" in host.get("services", []):
                return host["layer"]
        return self.hosts[-1]["layer"]

    def bind_host(self) -> str:
        """This job's host address, so simulations on other hosts reach the trainer: the one
        interface they reach it by, never every interface (a remote host's name is resolved to
        its address on the cluster's network)."""
        me = os.environ.get(HOST_ENV)
        for host in self.hosts:
            if host["name"] == me:
                if not host.get("remote"):
                    return host["address"]
                try:
                    return socket.gethostbyname(host["address"])
                except OSError as exc:
                    raise ValueError(
                        f"cannot resolve {host['address']!r}, host {me}'s address, to bind the trainer to "
                        f"({exc.strerror or exc}); give the host an IP address"
                    ) from None
        return "127.0.0.1"

    def start(self, request: LaunchRequest) -> SimulationProcess:
        host = self.targets[self._next % len(self.targets)]
        self._next += 1
        prefix = list(host.get("exec_prefix") or [])
        stdin_text = None
        if host.get("remote"):
            env_part = " ".join(f"{k}={shlex.quote(v)}" for k, v in request.env.items())
            # secrets never on the remote command line (`ps` shows it): one line each on stdin
            reads = "".join(f"IFS= read -r {name} && export {name} && " for name in request.secrets)
            command = [*prefix, f"{reads}exec env {env_part} {shlex.join(request.command)}"]
            stdin_text = "".join(f"{value}\n" for value in request.secrets.values())
        else:
            command = [*prefix, *request.command]
        process = start_logged_process(
            command, request, self.log_dir, log_suffix=f"-{host['name']}", stdin_text=stdin_text
        )
        process.host = host["name"]
        return process
