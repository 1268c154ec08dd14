"""Starting a job's process on its host: forked from the host's fork server, which imports the
task's modules once, or a new interpreter running ``python -m engage.deploy.runner JOB_DIR``.

Example (what :class:`~engage.deploy.execution.JobExecution` does for each attempt)::

    starter = JobStarter(provider, folder, report, python=sys.executable, fork_jobs=True, stopping=event)
    starter.preload = job_preload(task_function)
    process = starter.start(host, job_dir, cwd, job.folder)
    ...
    starter.close()  # the hosts' fork servers, once the launch's jobs have ended
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from engage.core.forkserver import PYTHONPATH_ENV, ForkServer, ForkServerError
from engage.core.tracking.store import inherited_environ
from engage.deploy.experiment import ExperimentFolder
from engage.deploy.processes import JobProcess
from engage.deploy.providers import Host, Provider
from engage.deploy.report import SweepReport
from engage.deploy.runner import EXIT_WITH_STDIN

log = logging.getLogger("engage.deploy.sweep")

#: what a job's forked process runs (as ``python -m engage.deploy.runner JOB_DIR`` would)
RUNNER_MAIN = "engage.deploy.runner:main"
#: what a host's fork server imports before its first job: Hydra's job bookkeeping, cloudpickle
#: and the runner itself
JOB_PRELOAD = ("cloudpickle", "hydra.core.utils", "engage.deploy.runner")
#: the memory limit (bytes) under which a host's fork server does not preload the task's imports
PRELOAD_MIN_MEMORY = 2 * 2**30


class JobStarter:
    """Starts the processes of one launch's jobs: on each host of this machine, forked from a
    fork server started at the host's first job (``fork_jobs``), else as new interpreters.

    A server that fails is said once, and that host's jobs start as new interpreters from then
    on; no server starts once ``stopping`` is set. :meth:`close` closes every server.
    """

    def __init__(
        self,
        provider: Provider,
        folder: ExperimentFolder,
        report: SweepReport,
        python: str,
        fork_jobs: bool,
        stopping: threading.Event,
    ) -> None:
        self.provider = provider
        self.folder = folder
        self.report = report
        self.python = python
        self.fork_jobs = fork_jobs
        self.stopping = stopping
        #: what a host's fork server imports before its first job (see :func:`job_preload`)
        self.preload: tuple[str, ...] = JOB_PRELOAD
        self._lock = threading.Lock()
        self._servers: dict[str, ForkServer | None] = {}  # host name -> its server, None: none

    def runner_command(self) -> list[str]:
        """The command that runs a job given its folder as last argument, in a new interpreter."""
        return [self.python, "-m", "engage.deploy.runner"]

    def environment(self) -> dict[str, str]:
        """What a job's process adds to its environment: the app's folder on its Python path."""
        return {PYTHONPATH_ENV: _python_path()}

    def start(self, host: Host, job_dir: str, cwd: str, folder: Path) -> JobProcess:
        """The job's process: forked by the host's fork server where there is one, else a new
        ``python -m engage.deploy.runner JOB_DIR`` (remote hosts, ``fork_jobs=false``, or a
        server that failed, which is said once)."""
        stdout, stderr = folder / "stdout.log", folder / "stderr.log"
        env = self.environment()
        local = not host.remote and self.provider.local_processes
        server = self._server(host, cwd) if local else None
        if server is not None:
            try:
                return server.start(
                    RUNNER_MAIN, [job_dir], {**inherited_environ(), **env}, cwd, str(stdout), str(stderr)
                )
            except ForkServerError as exc:
                with self._lock:
                    first = self._servers.get(host.name) is server  # jobs starting at once fail together
                    self._servers[host.name] = None
                if first:
                    detail = server.log_tail().strip().splitlines()[-1:] or [""]
                    message = f"{host.name}: jobs start as new interpreters from now on: {exc} {detail[0]}".strip()
                    log.warning("engage launcher: %s", message)
                    self.report.warnings.append(message)
        # a job on another host ends with the launcher's connection (see Provider.run)
        watch = [EXIT_WITH_STDIN] if host.remote else []
        command = [*self.runner_command(), *watch, job_dir]
        return self.provider.run(host, command, env=env, cwd=cwd, log_path=stdout, stderr_path=stderr)

    def _server(self, host: Host, cwd: str) -> ForkServer | None:
        with self._lock:
            if host.name not in self._servers:
                server = None
                if self.fork_jobs and not self.stopping.is_set():
                    # the task's imports stay resident in the server (engage run's about 600 MiB):
                    # a host with less memory than PRELOAD_MIN_MEMORY leaves them to each job
                    roomy = host.memory is None or host.memory >= PRELOAD_MIN_MEMORY
                    preload = self.preload if roomy else JOB_PRELOAD
                    command = self.provider.command_for(host, ForkServer.server_command(self.python, preload))
                    try:
                        log_path = self.folder.host_folder(host.name) / "forkserver.log"
                        env = {**inherited_environ(), **self.environment()}
                        server = ForkServer(command, env=env, cwd=cwd, log_path=log_path)
                    except OSError as exc:
                        log.warning("engage launcher: no fork server on %s (%s)", host.name, exc)
                self._servers[host.name] = server
            return self._servers[host.name]

    def close(self) -> None:
        """Close every host's fork server (the jobs it forked are processes of their own)."""
        with self._lock:
            servers = [server for server in self._servers.values() if server is not None]
            self._servers = {name: None for name in self._servers}
        for server in servers:
            server.close()


def job_preload(task_function: Any) -> tuple[str, ...]:
    """What a host's fork server imports before its first job: :data:`JOB_PRELOAD`, the task's
    own module and the modules that module names in ``TASK_IMPORTS``, those its task imports when
    it runs (``engage run``'s: Lightning, PyTorch and MLflow, seconds each job would spend again);
    a task from a script (``__main__``) is imported by its jobs only."""
    name = getattr(task_function, "__module__", None)
    if not name or name == "__main__":
        return JOB_PRELOAD
    module = sys.modules.get(name)
    imports = tuple(getattr(module, "TASK_IMPORTS", ()))
    return tuple(dict.fromkeys((*JOB_PRELOAD, name, *imports)))


def script_dir() -> str:
    """The directory of the Hydra app's script, so a task function pickled by reference imports."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return str(Path(path).resolve().parent) if path else ""


def _python_path() -> str:
    return os.pathsep.join(p for p in [script_dir(), os.environ.get(PYTHONPATH_ENV, "")] if p)
