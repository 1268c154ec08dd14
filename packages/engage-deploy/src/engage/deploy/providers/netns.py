"""The ``netns`` provider: every host a Linux network namespace on this machine, each layer a
subnet, links between layers shaped and delayed like a real edge-to-cloud network.

Layout (``X`` is a free ``10.X.0.0/16``, picked so that it collides with no route or address here)::

    root namespace ── mgmt veth 10.X.0.1 ──┐
                                           │ 10.X.0.2
      router namespace <prefix>-net: one bridge per layer (10.X.<layer>.1/24), ip_forward on,
      one TUN device per constrained direction, the delay/loss forwarder, htb rate limits
        │ br1 (cloud)                 │ br2 (edge)
      <prefix>-cloud-1 10.X.1.2     <prefix>-edge-1 10.X.2.2, <prefix>-edge-2 10.X.2.3

Hosts of one layer talk over their bridge at full speed. Traffic from layer A to layer B enters
the router namespace on A's bridge, a policy-routing rule sends it into the TUN device of the
``A -> B`` constraint, whose ``htb`` qdisc applies the rate; the forwarder
(:mod:`engage.deploy.netem.forwarder`) applies the one-way delay and the loss and hands it back to
the kernel, which routes it to B's bridge. This machine reaches every host at its address through
the management link, which no constraint touches (SSH and monitoring are not slowed down).

Each host has a cgroup with its CPU (``cpu.max`` / ``cpu.cfs_quota_us``) and memory
(``memory.max`` / ``memory.limit_in_bytes``) limits; every process started on the host is moved
into it before it executes. cgroup v2 and v1 hierarchies both work; without a writable one the
limits are skipped with a warning.

If ``/usr/sbin/sshd`` exists (Debian's ``openssh-server``), each host also runs its own sshd on
its address with a generated host key and a generated client key, and EnOSlib reaches it over
SSH; otherwise EnOSlib runs Ansible locally with a Python interpreter that enters the namespace
(``options.sshd``: ``auto`` (default), ``true`` to require it, ``false`` to never start it).

Needs root and ``ip`` (iproute2). Everything is removed on :meth:`NetnsProvider.destroy`, also
after a failed deploy; names carry a per-instance prefix, so parallel deployments never collide.

Example (as root)::

    >>> import tempfile
    >>> from engage.deploy.infrastructure import Infrastructure, InfrastructureError
    >>> infra = Infrastructure.from_dict({"provider": "netns",
    ...     "layers": [{"name": "cloud"}, {"name": "edge", "hosts": 2, "cpu": 0.5, "memory": "256MiB"}],
    ...     "network": [{"src": "edge", "dst": "cloud", "delay": "10ms", "rate": "20mbit"}]})
    >>> with NetnsProvider(infra, tempfile.mkdtemp()) as provider:  # doctest: +SKIP
    ...     proc = provider.run(provider.host("edge-1"), ["ip", "-o", "link"])
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engage.core.tracking.store import inherited_environ
from engage.deploy.infrastructure import Infrastructure, InfrastructureError
from engage.deploy.netem.link import LinkSpec
from engage.deploy.netem.shaping import htb_commands, run_tc
from engage.deploy.processes import terminate
from engage.deploy.providers.base import Host, Provider, ProviderError

log = logging.getLogger(__name__)

_LOCK_PATH = Path("/run/lock/engage-netns.lock")
_SSHD = "/usr/sbin/sshd"
_CPU_PERIOD_US = 100_000
_MGMT_TABLE_BASE = 100


def netns_available() -> str | None:
    """``None`` when this machine can run the ``netns`` provider, else the reason it cannot."""
    if os.name != "posix" or not sys.platform.startswith("linux"):
        return "the netns provider needs Linux"
    if os.geteuid() != 0:
        return "the netns provider needs root (network namespaces, veth, tc)"
    if shutil.which("ip") is None:
        return "the netns provider needs the 'ip' command (Debian package iproute2)"
    if shutil.which("tc") is None:
        return "the netns provider needs the 'tc' command (Debian package iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "the netns provider needs /dev/net/tun for its delay/loss forwarder"
    return None


def _run(argv: list[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise ProviderError(f"netns: '{' '.join(argv)}' failed: {message[-1] if message else result.returncode}")
    return result


# --------------------------------------------------------------------------- cgroups


@dataclass
class CgroupLimits:
    """Per-host cgroups under one parent, on cgroup v2 (``cpu.max``, ``memory.max``) or v1
    (``cpu.cfs_quota_us``, ``memory.limit_in_bytes``). ``dirs`` maps a host to the directories a
    process must join (one on v2, one per controller on v1)."""

    version: int
    parents: list[Path]
    dirs: dict[str, list[Path]] = field(default_factory=dict)

    @classmethod
    def detect(cls, name: str) -> CgroupLimits | str:
        """Prepare a parent cgroup called ``name``; returns the reason instead when impossible."""
        root = Path("/sys/fs/cgroup")
        if (root / "cgroup.controllers").exists():
            controllers = (root / "cgroup.controllers").read_text().split()
            if not {"cpu", "memory"} <= set(controllers):
                return f"cgroup v2 at {root} lacks the cpu or memory controller ({' '.join(controllers)})"
            parent = root / name
            try:
                # the root cgroup may delegate controllers while holding processes; our parent holds none
                (root / "cgroup.subtree_control").write_text("+cpu +memory")
                parent.mkdir(exist_ok=True)
                (parent / "cgroup.subtree_control").write_text("+cpu +memory")
            except OSError as exc:
                return f"cgroup v2 at {root} is not writable ({exc.strerror})"
            return cls(version=2, parents=[parent])
        mounts = [root / "cpu", root / "memory"]
        if all((m / "cgroup.procs").exists() for m in mounts):
            parents = []
            own = _own_cgroups()
            try:
                for mount in mounts:
                    # below this process's own cgroup, so whatever limits it has still apply
                    base = mount / own.get(mount.name, "/").lstrip("/")
                    parent = base / name
                    parent.mkdir(exist_ok=True)
                    parents.append(parent)
            except OSError as exc:
                for parent in parents:
                    with contextlib.suppress(OSError):
                        parent.rmdir()
                return f"cgroup v1 hierarchies under {root} are not writable ({exc.strerror})"
            return cls(version=1, parents=parents)
        return f"no cgroup v2 or v1 cpu/memory hierarchy under {root}"

    def add_host(self, host: str, cpu: float | None, memory: int | None) -> None:
        """Create the cgroup of ``host`` with its limits (``None``: unlimited)."""
        dirs = [parent / host for parent in self.parents]
        for d in dirs:
            d.mkdir(exist_ok=True)
        self.dirs[host] = dirs
        if self.version == 2:
            (d,) = dirs
            quota = "max" if cpu is None else str(max(1000, round(cpu * _CPU_PERIOD_US)))
            (d / "cpu.max").write_text(f"{quota} {_CPU_PERIOD_US}")
            if memory is not None:
                (d / "memory.max").write_text(str(memory))
                # without this the limit only pushes pages to swap instead of stopping the host
                if (d / "memory.swap.max").exists():
                    (d / "memory.swap.max").write_text("0")
            return
        cpu_dir, mem_dir = dirs
        if cpu is not None:
            (cpu_dir / "cpu.cfs_period_us").write_text(str(_CPU_PERIOD_US))
            (cpu_dir / "cpu.cfs_quota_us").write_text(str(max(1000, round(cpu * _CPU_PERIOD_US))))
        if memory is not None:
            (mem_dir / "memory.limit_in_bytes").write_text(str(memory))
            if (mem_dir / "memory.memsw.limit_in_bytes").exists():
                with contextlib.suppress(OSError):
                    (mem_dir / "memory.memsw.limit_in_bytes").write_text(str(memory))

    def limits(self, host: str) -> dict[str, str]:
        """The limits as the kernel reports them, in cgroup v2 terms: ``cpu.max`` and ``memory.max``."""
        dirs = self.dirs[host]
        if self.version == 2:
            return {k: (dirs[0] / k).read_text().strip() for k in ("cpu.max", "memory.max")}
        cpu_dir, mem_dir = dirs
        quota = int((cpu_dir / "cpu.cfs_quota_us").read_text())
        period = (cpu_dir / "cpu.cfs_period_us").read_text().strip()
        memory = int((mem_dir / "memory.limit_in_bytes").read_text())
        return {
            "cpu.max": f"{'max' if quota < 0 else quota} {period}",
            # v1 reports "no limit" as a huge page-rounded number
            "memory.max": "max" if memory >= 2**62 else str(memory),
        }

    def procs_files(self, host: str) -> list[Path]:
        """The ``cgroup.procs`` files a process writes its pid to, to join ``host``'s cgroup."""
        return [d / "cgroup.procs" for d in self.dirs[host]]

    def remove(self) -> None:
        """Kill what is left in the host cgroups and remove them and the parent."""
        for dirs in self.dirs.values():
            for d in dirs:
                _kill_cgroup(d)
        for parent in self.parents:
            for child in sorted(parent.glob("*/"), reverse=True) if parent.exists() else []:
                if child.is_dir():
                    _kill_cgroup(child)
                    _rmdir_retry(child)
            _rmdir_retry(parent)
        self.dirs = {}


def _own_cgroups() -> dict[str, str]:
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            out[controller] = path
    return out


def _kill_cgroup(d: Path) -> None:
    procs = d / "cgroup.procs"
    with contextlib.suppress(OSError):
        for pid in procs.read_text().split():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)


def _rmdir_retry(d: Path, timeout: float = 5.0) -> None:
    # a cgroup can only go once its killed processes have exited
    end = time.monotonic() + timeout
    while d.exists():
        try:
            d.rmdir()
            return
        except OSError:
            if time.monotonic() > end:
                log.warning("could not remove cgroup %s", d)
                return
            time.sleep(0.05)


# --------------------------------------------------------------------------- addresses


def choose_subnet(candidates: range = range(231, 255)) -> ipaddress.IPv4Network:
    """The first ``10.X.0.0/16`` (``X`` in ``candidates``) that overlaps no route and no address of
    this machine; call it while holding the allocation lock, so two deployments never pick the same."""
    taken = []
    for argv in (["ip", "-4", "-o", "route", "show", "table", "all"], ["ip", "-4", "-o", "addr", "show"]):
        for line in _run(argv, check=False).stdout.splitlines():
            for word in line.split():
                with contextlib.suppress(ValueError):
                    if word[0].isdigit() and ("/" in word or word.count(".") == 3):
                        taken.append(ipaddress.ip_network(word, strict=False))
    for x in candidates:
        net = ipaddress.ip_network(f"10.{x}.0.0/16")
        if not any(net.overlaps(t) for t in taken if t.prefixlen > 0):
            return net
    raise ProviderError("netns: no free 10.X.0.0/16 subnet; set infrastructure.options.subnet to an unused /16")


@contextlib.contextmanager
def _allocation_lock():
    _LOCK_PATH.parent.mkdir(parents=True, exist_ok=True)
    with open(_LOCK_PATH, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- provider

#: the provider's options (``infrastructure.options``)
OPTIONS = ("subnet", "seed", "sshd")


def netns_options(infrastructure: Infrastructure) -> tuple[str | None, int, str]:
    """``(subnet or None, seed, sshd)`` of ``infrastructure.options``; an unknown or malformed
    option is :class:`InfrastructureError`, one line naming it."""
    options = dict(infrastructure.options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InfrastructureError(
            f"infrastructure.options.{unknown[0]}: not a netns option; options are {', '.join(OPTIONS)}"
        )
    seed = options.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InfrastructureError(f"infrastructure.options.seed is {seed!r}; give a whole number, e.g. 0")
    sshd = str(options.get("sshd", "auto")).lower()
    if sshd not in ("auto", "true", "false"):
        raise InfrastructureError(f"infrastructure.options.sshd is {options.get('sshd')!r}; use auto, true or false")
    subnet = options.get("subnet")
    if subnet is not None:
        try:
            network = ipaddress.ip_network(str(subnet))
        except ValueError:
            network = None
        if network is None or network.prefixlen != 16 or not network.subnet_of(ipaddress.ip_network("10.0.0.0/8")):
            raise InfrastructureError(
                f"infrastructure.options.subnet is {subnet!r}; give a 10.X.0.0/16 such as '10.231.0.0/16'"
            )
    return subnet, seed, sshd


class NetnsProvider(Provider):
    """Hosts as network namespaces with cgroup limits, links emulated in a router namespace.

    ``infrastructure.options`` it reads: ``subnet`` (a ``10.X.0.0/16``, default: the first free
    one from ``10.231.0.0/16``), ``seed`` (of the loss draws, default 0), ``sshd`` (``auto``,
    ``true``, ``false``).

    Example::

        >>> infra = Infrastructure.from_dict({"provider": "netns", "layers": [{"name": "edge"}]})
        >>> provider = NetnsProvider(infra, "/tmp/netns-doc")
        >>> provider.namespace("edge-1").startswith(provider.prefix)
        True
    """

    name = "netns"

    def __init__(self, infrastructure: Infrastructure, workdir: str | os.PathLike[str]) -> None:
        super().__init__(infrastructure, workdir)
        # 6 characters: interface names in the root namespace must stay under 16
        self.prefix = "eg" + secrets.token_hex(2)
        self.router = f"{self.prefix}-net"
        self.mgmt = f"{self.prefix}m"
        self.subnet: ipaddress.IPv4Network | None = None
        self.cgroups: CgroupLimits | None = None
        self.warnings: list[str] = []
        self.links: list[dict[str, Any]] = []
        self.use_sshd = False
        self._namespaces: list[str] = []
        self._forwarder: subprocess.Popen | None = None
        self._sshd: dict[str, subprocess.Popen] = {}
        self._procs: list[subprocess.Popen] = []
        self._state_dir = self.workdir / f"netns-{self.prefix}"
        self._atexit_registered = False

    # ------------------------------------------------------------------ names

    def namespace(self, host: str) -> str:
        """The network namespace of ``host`` (``<prefix>-edge-1``)."""
        return f"{self.prefix}-{host}"

    def _layer_index(self) -> dict[str, int]:
        return {layer.name: i for i, layer in enumerate(self.infrastructure.layers, start=1)}

    def layer_subnet(self, layer: str) -> ipaddress.IPv4Network:
        """The /24 of ``layer`` (its bridge is ``.1``, its hosts ``.2`` onwards)."""
        assert self.subnet is not None, "deploy() first"
        base = int(self.subnet.network_address) + (self._layer_index()[layer] << 8)
        return ipaddress.ip_network(f"{ipaddress.IPv4Address(base)}/24")

    # ------------------------------------------------------------------ deploy

    @classmethod
    def check(cls, infrastructure: Infrastructure) -> None:
        """The provider's options, before anything is created (:func:`netns_options`)."""
        netns_options(infrastructure)

    def _options(self) -> tuple[str | None, int, str]:
        try:
            return netns_options(self.infrastructure)
        except InfrastructureError as exc:  # deployed without the launcher's check first
            raise ProviderError(str(exc)) from None

    def planned_launcher_address(self) -> str:
        """This machine's end of the management link, ``10.X.0.1``: the subnet is chosen and the
        router namespace with its link made now (the address exists from here on)."""
        self._reserve_subnet()
        assert self.subnet is not None
        return str(self.subnet[1])

    def _reserve_subnet(self) -> None:
        """Choose the subnet and make the router namespace and the management link, once."""
        if self.router in self._namespaces:
            return
        reason = netns_available()
        if reason:
            raise ProviderError(reason)
        if len(self.infrastructure.layers) > 250 or any(layer.hosts > 250 for layer in self.infrastructure.layers):
            raise ProviderError("netns: at most 250 layers of at most 250 hosts each fit one /16 subnet")
        subnet, _seed, sshd = self._options()
        if sshd == "true" and not os.path.exists(_SSHD):
            raise ProviderError(f"infrastructure.options.sshd is true but {_SSHD} is missing; install openssh-server")
        if not self._atexit_registered:
            atexit.register(self.destroy)
            self._atexit_registered = True
        with _allocation_lock():
            self.subnet = ipaddress.ip_network(subnet) if subnet else choose_subnet()  # checked by netns_options
            self._create_router()

    def deploy(self) -> list[Host]:
        self._reserve_subnet()
        _subnet, _seed, sshd = self._options()
        self.use_sshd = sshd == "true" or (sshd == "auto" and os.path.exists(_SSHD))
        self._state_dir.mkdir(parents=True, exist_ok=True)
        self._setup_cgroups()
        layer_index = self._layer_index()
        self.hosts = []
        for layer in self.infrastructure.layers:
            i = layer_index[layer.name]
            net = self.layer_subnet(layer.name)
            bridge = f"br{i}"
            _run(["ip", "-n", self.router, "link", "add", bridge, "type", "bridge"])
            _run(["ip", "-n", self.router, "addr", "add", f"{net[1]}/24", "dev", bridge])
            _run(["ip", "-n", self.router, "link", "set", bridge, "up"])
            for j, host_name in enumerate(layer.host_names(), start=2):
                self.hosts.append(self._create_host(layer, host_name, bridge, net, j))
        self._write_state()
        if self.use_sshd:
            self._start_sshd()
        else:
            message = (
                f"{_SSHD} not found (Debian package openssh-server): EnOSlib reaches the netns hosts with "
                "Ansible's local connection through 'ip netns exec' instead of SSH"
                if sshd == "auto"
                else "options.sshd is false: EnOSlib reaches the netns hosts through 'ip netns exec'"
            )
            self.warnings.append(message)
            log.info(message)
        return self.hosts

    def _create_router(self) -> None:
        assert self.subnet is not None
        self._add_namespace(self.router)
        r = ["ip", "netns", "exec", self.router]
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"):
            _run([*r, "sysctl", "-qw", key])
        # the router is a transit hop, not a redirecting gateway
        _run([*r, "sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"])
        _run([*r, "sysctl", "-qw", "net.ipv4.conf.default.send_redirects=0"])
        root_ip, router_ip = self.subnet[1], self.subnet[2]
        _run(["ip", "link", "add", self.mgmt, "type", "veth", "peer", "name", "mgmt", "netns", self.router])
        _run(["ip", "addr", "add", f"{root_ip}/24", "dev", self.mgmt])
        _run(["ip", "link", "set", self.mgmt, "up"])
        _run(["ip", "-n", self.router, "addr", "add", f"{router_ip}/24", "dev", "mgmt"])
        _run(["ip", "-n", self.router, "link", "set", "mgmt", "up"])
        _run(["ip", "route", "add", str(self.subnet), "via", str(router_ip), "dev", self.mgmt])

    def _add_namespace(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._namespaces.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _setup_cgroups(self) -> None:
        wanted = any(layer.cpu is not None or layer.memory is not None for layer in self.infrastructure.layers)
        result = CgroupLimits.detect(f"engage-{self.prefix}")
        if isinstance(result, str):
            message = f"per-host CPU and memory limits are not enforced: {result}"
            if wanted:
                self.warnings.append(message)
                log.warning(message)
            return
        self.cgroups = result
        for layer, host in self.infrastructure.iter_hosts():
            self.cgroups.add_host(host, layer.cpu, layer.memory_bytes)

    def _create_host(self, layer: Any, host_name: str, bridge: str, net: ipaddress.IPv4Network, j: int) -> Host:
        ns = self.namespace(host_name)
        self._add_namespace(ns)
        port = f"h{len(self.hosts) + 1}"
        address = str(net[j])
        _run(["ip", "-n", self.router, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _run(["ip", "-n", self.router, "link", "set", port, "master", bridge, "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "-n", ns, "route", "add", "default", "via", str(net[1])])
        enter = self._write_enter_script(host_name, ns)
        return Host(
            name=host_name,
            layer=layer.name,
            address=address,
            cpu=layer.cpu,
            memory=layer.memory_bytes,
            exec_prefix=[str(enter)],
            enoslib_host=None,
            extra={"netns": ns, "enter": str(enter)},
        )

    def _write_enter_script(self, host: str, ns: str) -> Path:
        """``enter CMD...`` runs CMD in ``host``: joins its cgroups, then its network namespace.

        A script rather than a ``preexec_fn`` so that Ansible (as its Python interpreter), SSH
        sessions and shells can use it as well as :meth:`run`.
        """
        lines = ["#!/bin/sh", "# joins the host's cgroups, then runs the command in its network namespace"]
        if self.cgroups is not None:
            # from inside another host (a trainer starting simulations on edge hosts) /sys is that
            # namespace's own, without the cgroup mounts: reach them through this process's root
            here = os.getpid()
            lines += [
                f"echo $$ 2>/dev/null > {procs} || echo $$ > /proc/{here}/root{procs}"
                for procs in self.cgroups.procs_files(host)
            ]
        lines.append(f'exec ip netns exec {ns} "$@"')
        path = self._state_dir / host / "enter"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o755)
        # Ansible takes its interpreter as one path, so entering the host needs a script of its own
        python = path.parent / "python"
        python.write_text(f'#!/bin/sh\nexec {path} {sys.executable} "$@"\n')
        python.chmod(0o755)
        return path

    def _write_state(self) -> None:
        state = {"prefix": self.prefix, "subnet": str(self.subnet), "namespaces": self._namespaces, "mgmt": self.mgmt}
        (self._state_dir / "state.json").write_text(json.dumps(state, indent=2))

    # ------------------------------------------------------------------ sshd and EnOSlib

    def _start_sshd(self) -> None:
        keys = self._state_dir / "ssh"
        keys.mkdir(exist_ok=True)
        client_key = keys / "id_ed25519"
        host_key = keys / "host_ed25519"
        for key in (client_key, host_key):
            if not key.exists():
                _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        (keys / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
        (keys / "authorized_keys").chmod(0o600)
        for host in self.hosts:
            config = keys / f"sshd_{host.name}.conf"
            config.write_text(
                "\n".join(
                    [
                        f"ListenAddress {host.address}",
                        "Port 22",
                        f"HostKey {host_key}",
                        f"AuthorizedKeysFile {keys / 'authorized_keys'}",
                        "PermitRootLogin prohibit-password",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "UsePAM no",
                        # the keys live in a workdir that StrictModes would find too open
                        "StrictModes no",
                        f"PidFile {keys / f'sshd_{host.name}.pid'}",
                        "Subsystem sftp internal-sftp",
                    ]
                )
                + "\n"
            )
            Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
            self._sshd[host.name] = subprocess.Popen(
                [*host.exec_prefix, _SSHD, "-D", "-e", "-f", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=open(keys / f"sshd_{host.name}.log", "ab"),
                start_new_session=True,
                env=inherited_environ(),
            )
        for host in self.hosts:
            self._wait_tcp(host, 22, timeout=10.0)

    def _wait_tcp(self, host: Host, port: int, timeout: float) -> None:
        import socket

        end = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection((host.address, port), timeout=1).close()
                return
            except OSError as exc:
                if time.monotonic() > end:
                    raise ProviderError(
                        f"netns: sshd of {host.name} at {host.address}:{port} is not answering ({exc})"
                    ) from None
                time.sleep(0.05)

    def enoslib_configuration(self) -> Any:
        """The :class:`enoslib.StaticConf` of the deployed hosts (over SSH when sshd runs)."""
        import enoslib as en

        machines = []
        for host in self.hosts:
            if self.use_sshd:
                keyfile = str(self._state_dir / "ssh" / "id_ed25519")
                entry = {
                    "address": host.address,
                    "user": "root",
                    "keyfile": keyfile,
                    "extra": {
                        "ansible_python_interpreter": sys.executable,
                        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                    },
                }
            else:
                # Ansible runs its modules with this interpreter, so they execute inside the host
                entry = {
                    "address": host.address,
                    "extra": {
                        "ansible_connection": "local",
                        "ansible_python_interpreter": str(Path(host.extra["enter"]).parent / "python"),
                    },
                }
            machines.append({"roles": [host.layer, "all"], "alias": host.name, **entry})
        assert self.subnet is not None
        network = {
            "roles": ["netns"],
            "cidr": str(self.subnet),
            "start": str(self.subnet[3]),
            "end": str(self.subnet[-2]),
            "gateway": str(self.subnet[2]),
            "dns": str(self.subnet[2]),
        }
        return en.StaticConf.from_dictionary({"resources": {"machines": machines, "networks": [network]}})

    # ------------------------------------------------------------------ network

    def apply_network(self) -> None:
        if not self.hosts:
            raise ProviderError("netns: apply_network() before deploy()")
        _subnet, seed, _sshd = self._options()
        layer_index = self._layer_index()
        specs = []
        self.links = []
        for k, (src, dst, constraint) in enumerate(self._directions(), start=1):
            device = f"t{k}"
            table = str(_MGMT_TABLE_BASE + k)
            r = ["ip", "-n", self.router]
            _run([*r, "tuntap", "add", "mode", "tun", "name", device])
            _run([*r, "link", "set", device, "up"])
            _run(["ip", "netns", "exec", self.router, "sysctl", "-qw", f"net.ipv4.conf.{device}.rp_filter=0"])
            _run([*r, "route", "add", "default", "dev", device, "table", table])
            # only packets arriving from src's bridge: the same packet coming back out of the TUN
            # device must take the main table to dst's bridge, not loop into the TUN again
            rule = ["rule", "add", "iif", f"br{layer_index[src]}", "to", str(self.layer_subnet(dst))]
            _run([*r, *rule, "lookup", table, "priority", table])
            rate = constraint.rate_bps
            if rate is not None:
                pairs = [(s.address, d.address) for s in self.hosts_of(src) for d in self.hosts_of(dst)]
                try:
                    run_tc(htb_commands(device, rate, pairs, constraint.delay_s), netns=self.router)
                except RuntimeError as exc:
                    raise ProviderError(f"netns: rate limit of {src} -> {dst}: {exc}") from exc
            name = f"{src}->{dst}"
            specs.append(
                # seeded by the option and the link's name (``"<seed>:<A>-><B>"``), not its place in
                # the list: adding or reordering constraints keeps each link's drops
                LinkSpec(name=name, device=device, delay=constraint.delay_s, loss=constraint.loss, seed=seed)
            )
            self.links.append(
                {
                    "name": name,
                    "device": device,
                    "delay_s": constraint.delay_s,
                    "loss": constraint.loss,
                    "rate_bps": rate,
                }
            )
        if specs:
            self._start_forwarder(specs)

    def _directions(self) -> list[tuple[str, str, Any]]:
        out = []
        for constraint in self.infrastructure.network:
            for src, dst in constraint.directions():
                out.append((src, dst, constraint))
        return out

    def _start_forwarder(self, specs: list[LinkSpec]) -> None:
        spec_path = self._state_dir / "links.json"
        spec_path.write_text(json.dumps({"links": [s.to_dict() for s in specs]}, indent=2))
        argv = ["ip", "netns", "exec", self.router, sys.executable, "-m", "engage.deploy.netem.forwarder"]
        argv += [str(spec_path), "--stats", str(self._state_dir / "forwarder-stats.json")]
        log_path = self._state_dir / "forwarder.log"
        with open(log_path, "ab") as err:
            self._forwarder = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=err, start_new_session=True, env=inherited_environ()
            )
        assert self._forwarder.stdout is not None
        # the forwarder prints "ready" once it holds every TUN device; until then links drop everything
        readable, _, _ = select.select([self._forwarder.stdout], [], [], 30.0)
        ready = self._forwarder.stdout.readline().decode().strip() if readable else ""
        if ready != "ready":
            _stop(self._forwarder)
            tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
            raise ProviderError(f"netns: the delay/loss forwarder did not start: {tail[0]}")

    def network_command(self, host: Host, command: Sequence[str]) -> list[str]:
        """The argv that runs ``command`` in ``host``'s network namespace but not in its cgroups:
        for measuring links without the host's CPU limit adding its own delays."""
        return ["ip", "netns", "exec", self.namespace(host.name), *command]

    def forwarder_stats(self) -> dict[str, Any]:
        """Per-link counters of the forwarder (available after :meth:`destroy`)."""
        path = self._state_dir / "forwarder-stats.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def cgroup_limits(self, host: str) -> dict[str, str]:
        """``{"cpu.max": ..., "memory.max": ...}`` of ``host`` as the kernel reports them (empty
        when limits are not enforced here)."""
        return self.cgroups.limits(host) if self.cgroups is not None else {}

    def run(
        self,
        host: Host,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        *,
        stderr_path: str | os.PathLike[str] | None = None,
    ) -> subprocess.Popen:
        """Start ``command`` on ``host`` (inside its cgroup and namespace); :meth:`destroy` ends it."""
        proc = super().run(host, command, env, cwd, log_path, stderr_path=stderr_path)
        self._procs.append(proc)
        return proc

    # ------------------------------------------------------------------ teardown

    def destroy(self) -> None:
        if self._forwarder is not None:
            _stop(self._forwarder)
            self._forwarder = None
        for proc in self._sshd.values():
            _stop(proc)
        self._sshd = {}
        # processes started in a namespace outlive its deletion: end them first
        for ns in reversed(self._namespaces):
            pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        # reap them: a cgroup v1 directory cannot be removed while it still holds a zombie
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs = []
        if self.cgroups is not None:
            self.cgroups.remove()
            self.cgroups = None
        for ns in reversed(self._namespaces):
            _run(["ip", "netns", "del", ns], check=False)
        self._namespaces = []
        # deleting the router namespace removes the veth pair; this covers a deploy that failed halfway
        if Path(f"/sys/class/net/{self.mgmt}").exists():
            _run(["ip", "link", "del", self.mgmt], check=False)
        self.hosts = []


def _stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        terminate(proc.pid, grace_s=timeout)
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
