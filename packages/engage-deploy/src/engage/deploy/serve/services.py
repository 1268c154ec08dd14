"""The processes of a job's serving: inference replicas and request sources, each started on its
host through the host's command prefix, with a log of its own, and stopped with the job."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from engage.deploy.job import HostRecord
from engage.deploy.serving import ReplicaRecord, ServingError


class ServiceProcesses:
    """Processes named ``replica NAME`` and ``requests HOST``, started on ``hosts`` (name ->
    record), their logs in ``folder``.

    Example::

        >>> ServiceProcesses({}, "serving").file("requests edge-1", ".json").name
        'requests-edge-1.json'
    """

    def __init__(self, hosts: Mapping[str, HostRecord], folder: str | Path) -> None:
        self.hosts = dict(hosts)
        self.folder = Path(folder)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # started, stopped and checked from the training thread and a re-placing one
        self._lock = threading.RLock()

    def __bool__(self) -> bool:
        return bool(self.processes)

    def start(self, name: str, host_name: str, argv: list[str]) -> None:
        """``python ARGV`` on ``host_name``, dying with this process, its output in ``NAME.log``."""
        from engage.core.executors import die_with_parent_command
        from engage.core.tracking.store import inherited_environ

        host = self.hosts.get(host_name)
        if host is None:
            raise ServingError(f"serving: host {host_name} is not among this job's hosts")
        command, preexec = die_with_parent_command([*host.exec_prefix, sys.executable, *argv])
        with self._lock, open(self.file(name, ".log"), "ab") as log:  # a replica started again keeps its log
            # a peer on the network: none of the job's MLflow credentials
            self.processes[name] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=preexec,
                env=inherited_environ(),
            )

    def file(self, name: str, suffix: str) -> Path:
        """The log (``.log``) of the process ``name``, or where a sender writes its requests
        (``.json``), its counts (``.counts.json``) or reads its routes (``.routes.json``)."""
        return self.folder / f"{name.replace(' ', '-')}{suffix}"

    def check_alive(self) -> None:
        """:class:`ServingError` naming the first process that ended on its own, with its log's last line."""
        for name, process in list(self.processes.items()):
            if process.poll() is not None:
                raise ServingError(
                    f"serving: {name} ended with exit code {process.returncode} ({self.last_line(name)})"
                )

    def stop(self, name: str) -> None:
        """Stop ``name`` (SIGTERM, then SIGKILL after 15 s) and forget it: a reused pid is never signalled."""
        from engage.deploy.processes import stop_process

        with self._lock:  # forgotten before it is signalled: never taken for one that ended on its own
            process = self.processes.pop(name, None)
        if process is not None:
            stop_process(process, grace_s=15.0)
            process.wait()

    def stop_all(self) -> None:
        """The sources first (they write their requests when stopped), then the replicas."""
        with self._lock:
            names = sorted(self.processes, key=lambda n: not n.startswith("requests"))
        for name in names:
            self.stop(name)

    def wait_ready(
        self,
        replica: ReplicaRecord,
        key: str,
        deadline: float,
        timeout_s: float,
        stop: threading.Event | None = None,
    ) -> bool:
        """Until ``replica`` answers its health check with ``key`` (``True``), or ``stop`` is set
        (``False``); :class:`ServingError` at ``deadline`` (``time.monotonic()``) or when a
        process ended."""
        from engage.deploy.serve.supervisor import healthy

        while time.monotonic() < deadline:
            self.check_alive()
            if healthy(replica.url, key, timeout_s=5.0):
                return True
            if stop is not None and stop.wait(0.25):
                return False
            if stop is None:
                time.sleep(0.25)
        raise ServingError(f"serving: replica {replica.name} did not answer at {replica.url} within {timeout_s:.0f} s")

    def last_line(self, name: str) -> str:
        try:
            text = self.file(name, ".log").read_text(errors="replace")
        except OSError:
            return "no log"
        lines = [line for line in text.splitlines() if line.strip()]
        return lines[-1][-300:] if lines else "empty log"
