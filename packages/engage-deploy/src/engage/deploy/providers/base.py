"""What every provider offers: hosts to run on, network constraints, processes, cleanup.

A provider turns an :class:`~engage.deploy.infrastructure.Infrastructure` into running
:class:`Host` objects (``deploy``), applies its network constraints (``apply_network``),
starts processes on a host (``run``) and releases everything (``destroy``). Used as a context
manager it deploys and applies the network on entry and always destroys on exit.

Example (the ``local`` provider, nothing to set up)::

    >>> import tempfile
    >>> from engage.deploy.infrastructure import Infrastructure
    >>> from engage.deploy.providers import get_provider
    >>> infra = Infrastructure()
    >>> with get_provider(infra.provider)(infra, tempfile.mkdtemp()) as provider:
    ...     proc = provider.run(provider.hosts[0], ["python", "-c", "print('hi')"])
    ...     proc.wait()
    0
"""

from __future__ import annotations

import abc
import os
import posixpath
import shlex
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from engage.core import lifeline
from engage.core.tracking.store import inherited_environ
from engage.deploy.infrastructure import Infrastructure


class ProviderError(RuntimeError):
    """A provider could not deploy, reach or clean up its hosts; the message says why in one line."""


@dataclass
class Host:
    """One host of a deployed infrastructure.

    ``name`` is ``<layer>-<i>``; ``address`` is how other hosts reach it; ``cpu`` (cores) and
    ``memory`` (bytes) are its limits (``None``: not limited); ``exec_prefix`` is prepended to
    every command started on it (``["ip", "netns", "exec", "ns"]``, ``["ssh", "user@host"]``);
    ``enoslib_host`` is the :class:`enoslib.Host` Ansible-based actions use (set by
    :meth:`Provider.attach_enoslib`, which :meth:`Provider.roles` calls on first use). ``remote`` hosts do
    not share this machine's environment or filesystem: environment variables and the working
    directory are put on the command line, and files travel through :meth:`Provider.filesystem`.
    """

    name: str
    layer: str
    address: str
    cpu: float | None = None
    memory: int | None = None
    exec_prefix: list[str] = field(default_factory=list)
    enoslib_host: Any = None
    remote: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def address_towards(host: str, port: int = 9) -> str:
    """This machine's address on its route to ``host`` (a name or an IPv4 address): the source
    address the kernel would send from. A UDP ``connect`` sends no packet. ``OSError`` when
    ``host`` does not resolve or no route leads there."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((socket.gethostbyname(host), port))
        return str(probe.getsockname()[0])


def put_tree(fs: Any, local: Path, remote: str) -> None:
    """Copy the file or folder ``local`` to ``remote`` on the fsspec filesystem ``fs`` (this
    machine's, or a host's over SFTP), keeping each file's and folder's permission bits.

    A folder's contents go into ``remote`` whether or not it exists, and ``remote`` holds them
    alone afterwards: a retried job's folder lands where its first attempt's did (not in a folder
    of its own inside it), and what the first attempt left there and the second was not sent
    (its result, its run's id) is removed first. SFTP makes files with its server's umask: a
    job's ``0600`` contract (it may hold MLflow credentials) would land readable by every user of
    the host. The folder stays ``0700`` while it is filled, so nobody reads a file before its
    mode is set. Folders that another process creates at the same time (two jobs of a sweep
    sending their folders under one new sweep folder) are no error.

    >>> import os, stat, tempfile
    >>> import fsspec
    >>> scratch = Path(tempfile.mkdtemp())
    >>> (scratch / "job").mkdir()
    >>> _ = (scratch / "job" / "job.json").write_text("{}")
    >>> os.chmod(scratch / "job" / "job.json", 0o600)
    >>> there = scratch / "there"
    >>> put_tree(fsspec.filesystem("file"), scratch / "job", str(there))
    >>> _ = (there / "result.pkl").write_text("the first attempt's")
    >>> put_tree(fsspec.filesystem("file"), scratch / "job", str(there))  # a second attempt
    >>> sorted(p.name for p in there.iterdir()), oct((there / "job.json").stat().st_mode & 0o777)
    (['job.json'], '0o600')
    """
    _makedirs(fs, str(Path(remote).parent))
    if not local.is_dir():
        fs.put(str(local), remote)
        _chmod(fs, remote, local.stat().st_mode)
        return
    _makedirs(fs, remote)
    _chmod(fs, remote, 0o700)
    sent = {path.relative_to(local).as_posix() for path in local.rglob("*") if not path.is_dir()}
    for found in fs.find(remote):
        if posixpath.relpath(found, remote) not in sent:
            fs.rm_file(found)  # left by an earlier attempt
    # file by file: fsspec's recursive put hands folders to SFTP's put_file, which fails on them
    paths = sorted(local.rglob("*"))
    for path in paths:
        there = f"{remote}/{path.relative_to(local).as_posix()}"
        if path.is_dir():
            fs.makedirs(there, exist_ok=True)
        else:
            fs.put_file(str(path), there)
    for path in reversed(paths):  # files before the folders holding them
        _chmod(fs, f"{remote}/{path.relative_to(local).as_posix()}", path.stat().st_mode)
    _chmod(fs, remote, local.stat().st_mode)


def _makedirs(fs: Any, path: str) -> None:
    """``fs.makedirs(path, exist_ok=True)``, where another process may create the same folders at
    once: fsspec looks for each folder, then makes it, and fails when it appeared in between
    (once at most for each level of ``path``); another failure is raised."""
    for _ in range(len(Path(path).parts)):
        try:
            fs.makedirs(path, exist_ok=True)
            return
        except OSError:
            if fs.isdir(path):
                return
    fs.makedirs(path, exist_ok=True)


def _chmod(fs: Any, path: str, mode: int) -> None:
    """Set ``path``'s permission bits on ``fs`` to those of ``mode``."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols:
        os.chmod(path, mode & 0o7777)
    elif "sftp" in protocols:
        fs.ftp.chmod(path, mode & 0o7777)  # fsspec's SFTP filesystem holds paramiko's SFTP client
    else:
        raise ProviderError(f"cannot set the permissions of {path} on a {protocols[0]} filesystem")


class Provider(abc.ABC):
    """Base of every provider. Subclasses implement :meth:`deploy`, :meth:`apply_network` and
    :meth:`destroy`; :meth:`run` works for any host whose ``exec_prefix`` starts a command there.

    ``workdir`` is a local folder the provider may use for its own state (keys, configs, logs).
    """

    #: the name under which the provider is registered (``infrastructure.provider``)
    name: ClassVar[str] = ""
    #: whether :meth:`run` starts a process of this machine (False: a batch system's job, which
    #: has no local pid to sample or signal and no fork server; it is stopped with ``cancel()``)
    local_processes: ClassVar[bool] = True

    def __init__(self, infrastructure: Infrastructure, workdir: str | os.PathLike[str]) -> None:
        self.infrastructure = infrastructure
        self.workdir = Path(workdir)
        self.hosts: list[Host] = []

    @property
    def ranks_per_job(self) -> int:
        """Processes each job of a sweep runs as, one rank each (a batch system's multi-node job
        starts them itself); 1 on hosts that run a job as one process."""
        return 1

    @property
    def array_limit(self) -> int:
        """For a batch system that takes a launch's jobs as one job array (its ``run_array``),
        how many of them run at once; 0 on providers that start each job on its own."""
        return 0

    def cancel_pending(self, jobs: Sequence[Any]) -> None:  # noqa: B027 - no queue: nothing pends
        """Cancel those of ``jobs`` (this provider's handles) that its batch system has not
        started yet, leaving the others running; nothing where jobs start at once."""

    def array_indices(self, indices: Sequence[int]) -> list[int]:
        """Which of a launch's job ``indices`` one job array can hold (all of them, or those
        below a batch system's limit on task ids); none where :attr:`array_limit` is 0."""
        return []

    @classmethod
    def check(cls, infrastructure: Infrastructure) -> None:
        """Refuse, before anything is created, what this provider cannot deploy: raise
        :class:`~engage.deploy.infrastructure.InfrastructureError` with one line naming the key.
        :meth:`Infrastructure.validate` has checked what every provider shares; a provider with
        options of its own (a batch system's partition) checks them here."""
        return None

    # ------------------------------------------------------------------ lifecycle

    @abc.abstractmethod
    def deploy(self) -> list[Host]:
        """Reserve or create the hosts, set ``self.hosts`` and return them."""

    @abc.abstractmethod
    def apply_network(self) -> None:
        """Apply ``infrastructure.network`` between the deployed hosts."""

    @abc.abstractmethod
    def destroy(self) -> None:
        """Release everything :meth:`deploy` created; safe to call twice and after a failed deploy."""

    def __enter__(self) -> Provider:
        try:
            self.deploy()
            self.apply_network()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    # ------------------------------------------------------------------ queries

    def host(self, name: str) -> Host:
        """The deployed host called ``name`` (``edge-1``)."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise ProviderError(f"no host named {name!r}; hosts are {', '.join(h.name for h in self.hosts) or 'none'}")

    def hosts_of(self, layer: str) -> list[Host]:
        """The deployed hosts of ``layer``."""
        return [h for h in self.hosts if h.layer == layer]

    def planned_launcher_address(self) -> str | None:
        """The address at which processes on the hosts will reach this machine, known before
        :meth:`deploy` (the sweep's MLflow server listens there from its start, while the hosts are
        deployed), or ``None`` where only the deployed hosts tell (then ask
        :meth:`launcher_address` after :meth:`deploy`). A provider that answers may set up what
        carries the address here; :meth:`destroy` removes it."""
        return None

    def launcher_address(self) -> str:
        """The address at which processes on the hosts reach this machine (the sweep's MLflow
        server): the source address of this machine's route to the first non-loopback host, else
        ``127.0.0.1``."""
        for host in self.hosts:
            if host.address and not host.address.startswith("127.") and host.address != "localhost":
                try:
                    return address_towards(host.address)
                except OSError:
                    continue
        return "127.0.0.1"

    def enoslib_configuration(self) -> Any:
        """The :class:`enoslib.StaticConf` (or a testbed's configuration) describing the hosts."""
        raise ProviderError(f"the {self.name} provider's hosts are not reached through EnOSlib")

    def attach_enoslib(self) -> None:
        """Give every deployed host its :class:`enoslib.Host`, through EnOSlib's Static provider on
        :meth:`enoslib_configuration`. Done when EnOSlib is first needed (:meth:`roles`), not when
        deploying: importing EnOSlib costs most of a CPU second that a sweep which runs no
        EnOSlib action need not pay."""
        import enoslib as en

        roles, _ = en.Static(self.enoslib_configuration()).init()
        by_alias = {h.alias: h for h in roles["all"]}
        for host in self.hosts:
            host.enoslib_host = by_alias[host.name]

    def roles(self) -> Any:
        """An :class:`enoslib.Roles` with one role per layer, for EnOSlib actions."""
        import enoslib as en

        if any(host.enoslib_host is None for host in self.hosts):
            self.attach_enoslib()
        by_layer: dict[str, list[Any]] = {}
        for host in self.hosts:
            if host.enoslib_host is not None:
                by_layer.setdefault(host.layer, []).append(host.enoslib_host)
        return en.Roles(by_layer)

    # ------------------------------------------------------------------ processes and files

    def command_for(
        self,
        host: Host,
        command: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> list[str]:
        """The local argv that starts ``command`` on ``host``.

        Local-ish hosts inherit the environment through ``Popen``; for remote hosts the variables
        and the working directory go into a ``sh -c`` line since SSH does not forward them.
        """
        if not host.remote:
            return [*host.exec_prefix, *command]
        parts = []
        if cwd is not None:
            parts.append(f"cd {shlex.quote(str(cwd))} &&")
        if env:
            parts.append("env " + " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items()))
        parts.append(shlex.join(command))
        return [*host.exec_prefix, "sh", "-c", shlex.quote(" ".join(parts))]

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
        """Start ``command`` on ``host`` and return the local process that stands for it.

        ``env`` is added to the current environment; stdout goes to ``log_path`` (and stderr too,
        unless ``stderr_path`` is given); without ``log_path`` both are inherited. The process
        gets its own session so the whole tree can be signalled. On a remote host, the command's
        standard input stays open as long as this process holds the returned one's (a lifeline,
        :func:`engage.core.lifeline.hold`): it ends when the local process is stopped, this
        process dies or :func:`engage.core.lifeline.let_go` closes it, which a command that watches
        it (the job runner's ``--exit-with-stdin``) takes for its end.
        """
        argv = self.command_for(host, command, env, cwd)
        full_env = {**inherited_environ(), **(env or {})}
        stdout = stderr = None
        try:
            if log_path is not None:
                Path(log_path).parent.mkdir(parents=True, exist_ok=True)
                stdout = open(log_path, "ab")  # handed to the child, closed below
                if stderr_path is not None:
                    Path(stderr_path).parent.mkdir(parents=True, exist_ok=True)
                    stderr = open(stderr_path, "ab")
            process = subprocess.Popen(
                argv,
                env=full_env,
                cwd=None if host.remote else cwd,
                stdout=stdout,
                stderr=stderr if stderr is not None else (subprocess.STDOUT if stdout is not None else None),
                stdin=subprocess.PIPE if host.remote else subprocess.DEVNULL,
                start_new_session=True,
            )
            if host.remote:
                lifeline.hold(process)
            return process
        finally:
            # the child holds its own descriptors; ours are no longer needed
            for handle in (stdout, stderr):
                if handle is not None:
                    handle.close()

    def filesystem(self, host: Host) -> Any:
        """An fsspec filesystem with ``host``'s files: this machine's for local hosts."""
        import fsspec

        return fsspec.filesystem("file")

    def put(self, host: Host, local_path: str | os.PathLike[str], remote_path: str) -> None:
        """Copy a local file or folder to ``remote_path`` on ``host`` (nothing to do if it is the
        same path), as :func:`put_tree` does."""
        if not host.remote and Path(local_path).resolve() == Path(remote_path).resolve():
            return
        put_tree(self.filesystem(host), Path(local_path), remote_path)

    def get(self, host: Host, remote_path: str, local_path: str | os.PathLike[str]) -> None:
        """Copy a file or folder from ``host`` to this machine (nothing to do if it is the same
        path). A file arrives whole or not at all: a missing or unreadable one raises ``OSError``
        and leaves nothing at ``local_path`` (SFTP would leave an empty file there)."""
        if not host.remote and Path(local_path).resolve() == Path(remote_path).resolve():
            return
        fs = self.filesystem(host)
        local = Path(local_path)
        local.parent.mkdir(parents=True, exist_ok=True)
        if fs.isdir(remote_path):
            fs.get(remote_path, str(local), recursive=True)
            return
        partial = local.with_name(f"{local.name}.part")
        try:
            fs.get_file(remote_path, str(partial))
            partial.replace(local)
        finally:
            partial.unlink(missing_ok=True)

    def describe(self) -> dict[str, Any]:
        """What was deployed, for the experiment folder and MLflow."""
        return {
            "provider": self.name,
            "hosts": [
                {
                    "name": h.name,
                    "layer": h.layer,
                    "address": h.address,
                    "cpu": h.cpu,
                    "memory": h.memory,
                    "remote": h.remote,
                }
                for h in self.hosts
            ],
        }
