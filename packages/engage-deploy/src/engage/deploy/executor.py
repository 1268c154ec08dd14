"""The ``deploy`` executor: an online-training job launched by the engage launcher starts its
simulation processes on the infrastructure's hosts (by default the layer that runs the
``simulator`` service), not beside the trainer.

The executor reads the job's contract (:class:`~engage.deploy.job.JobContract`: the deployed
hosts, the job's own host and, with the launcher's ``placement: optimize``, the host of each
service instance); it starts each simulation on the next host of the simulation layer (round
robin), or on the host of the next ``simulator`` instance of the plan, through that host's
``exec_prefix`` (``ip netns exec`` and its cgroup for ``netns``, SSH for testbeds), and the
trainer listens on its own host's address so the simulations reach it over the emulated links.

Example (``engage run`` options)::

    engage run -m hydra/launcher=engage +infrastructure=netns_edge_cloud hydra.launcher.layer=cloud \\
        data=online data.executor=deploy
"""

from __future__ import annotations

import shlex
import socket

from engage.core.executors import Executor, LaunchRequest, SimulationProcess, start_logged_process
from engage.deploy.job import HostRecord, JobContract


class DeployExecutor(Executor):
    """Simulations on the hosts of one layer of the launcher's infrastructure, round robin, or on
    the hosts the launcher's optimised placement gave the ``simulator`` instances (an explicit
    ``layer`` wins over the placement). ``job``: the contract of the sweep job this process runs
    (default: :meth:`JobContract.current`)."""

    def __init__(self, log_dir: str | None = None, layer: str | None = None, job: JobContract | None = None) -> None:
        job = job or JobContract.current()
        if job is None or not job.hosts:
            raise ValueError(
                "data.executor=deploy needs the engage launcher: run with -m hydra/launcher=engage "
                "(this process is not a job of an engage sweep)"
            )
        self.job = job
        self.hosts: tuple[HostRecord, ...] = job.hosts
        self.log_dir = log_dir
        placed = self._placed_simulators() if layer is None else []
        self.layer = layer or self._default_layer()
        self.targets = placed or [h for h in self.hosts if h.layer == self.layer]
        if not self.targets:
            layers = sorted({h.layer for h in self.hosts})
            raise ValueError(
                f"data.executor_options.layer={self.layer!r} names no layer with hosts; layers are {', '.join(layers)}"
            )
        self.shares_filesystem = not any(h.remote for h in self.targets)
        self._next = 0

    def _placed_simulators(self) -> list[HostRecord]:
        """One entry per ``simulator#k`` instance of the launcher's plan, in instance order."""
        plan = self.job.placement
        by_name = {h.name: h for h in self.hosts}
        instances = sorted(
            (name for name in plan if name.startswith("simulator#")), key=lambda n: int(n.split("#", 1)[1])
        )
        return [by_name[plan[name]] for name in instances if plan[name] in by_name]

    def _default_layer(self) -> str:
        for host in self.hosts:
            if "simulator" in host.services:
                return host.layer
        return self.hosts[-1].layer

    def bind_host(self) -> str:
        """This job's host address, so simulations on other hosts reach the trainer: the one
        interface they reach it by, never every interface (a remote host's name is resolved to
        its address on the cluster's network)."""
        host = self.job.this_host()
        if host is None:
            return "127.0.0.1"
        if not host.remote:
            return host.address
        try:
            return socket.gethostbyname(host.address)
        except OSError as exc:
            raise ValueError(
                f"cannot resolve {host.address!r}, host {host.name}'s address, to bind the trainer to "
                f"({exc.strerror or exc}); give the host an IP address"
            ) from None

    def start(self, request: LaunchRequest) -> SimulationProcess:
        host = self.targets[self._next % len(self.targets)]
        self._next += 1
        prefix = list(host.exec_prefix)
        stdin_text = None
        if host.remote:
            env_part = " ".join(f"{k}={shlex.quote(v)}" for k, v in request.env.items())
            # secrets never on the remote command line (`ps` shows it): one line each on stdin
            reads = "".join(f"IFS= read -r {name} && export {name} && " for name in request.secrets)
            command = [*prefix, f"{reads}exec env {env_part} {shlex.join(request.command)}"]
            stdin_text = "".join(f"{value}\n" for value in request.secrets.values())
        else:
            command = [*prefix, *request.command]
        process = start_logged_process(
            command, request, self.log_dir, log_suffix=f"-{host.name}", stdin_text=stdin_text
        )
        process.host = host.name
        return process
