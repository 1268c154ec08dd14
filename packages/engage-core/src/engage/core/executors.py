"""Executors: what starts simulation processes.

An executor turns a :class:`LaunchRequest` (a command line and its environment) into a running
:class:`SimulationProcess` that the scheduler can poll and kill. Core ships :class:`LocalExecutor`
(child processes of the trainer); other packages add executors for remote hosts through the
``engage_executors`` hook.

Example::

    >>> import sys
    >>> process = LocalExecutor().start(LaunchRequest([sys.executable, "-c", "print('hi')"], simulation_id=0))
    >>> process.wait(timeout=30)
    0
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engage.core.tracking.store import inherited_environ

PR_SET_PDEATHSIG = 1


@dataclass
class LaunchRequest:
    """One simulation process to start: ``command`` with ``env`` and ``secrets`` added to the
    environment. ``secrets`` (the attempt's keys, when they cannot travel as a file) must never
    appear on a command line, which every user of a host can read: an executor that passes
    ``env`` on one (``ssh host env K=V ...``) delivers them another way, e.g. on the process's
    standard input (:func:`start_logged_process`'s ``stdin_text``)."""

    command: list[str]
    simulation_id: int
    attempt: int = 1
    env: dict[str, str] = field(default_factory=dict)
    log_dir: str | None = None
    secrets: dict[str, str] = field(default_factory=dict)


class SimulationProcess(ABC):
    """A started simulation process."""

    host: str = "localhost"

    @abstractmethod
    def poll(self) -> int | None:
        """The exit code, or ``None`` while it runs."""

    @abstractmethod
    def kill(self) -> None:
        """Stop it for good (no-op when already stopped)."""

    @abstractmethod
    def stderr_tail(self, limit: int = 4000) -> str:
        """The last ``limit`` characters it wrote to stderr (and stdout)."""

    @property
    @abstractmethod
    def pid(self) -> int | None:
        """Its process id where it runs, when known."""

    @property
    def starting(self) -> bool:
        """Still being handed to where it runs (an executor that submits from a queue of its own):
        the fleet's start-up timeout counts from when this turns false."""
        return False

    def wait(self, timeout: float) -> int | None:
        """Poll until it exits or ``timeout`` seconds pass; the exit code or ``None``."""
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return code


class Executor(ABC):
    """Starts simulation processes. Subclasses register under a name with ``engage_executors``."""

    #: whether started processes can read files in the trainer host's temporary folder, where a
    #: run keeps its key files (else a simulation's keys reach it through ``LaunchRequest.secrets``)
    shares_filesystem: bool = True
    #: whether a simulation's keys go in its process's environment (``LaunchRequest.secrets``)
    #: rather than in a ``0600`` key file: where that environment is as private as such a file
    #: (a child process of the trainer on this host, whose ``/proc/PID/environ`` only its user
    #: and root read) and kept nowhere else, it spares the scheduler a file's creation and
    #: deletion per attempt
    keys_in_environment: bool = False
    #: whether started processes run beside the trainer, so their samples may skip the network
    #: and go into the trainer's shared memory; off for hosts reached over (emulated) links
    shares_memory: bool = False

    @classmethod
    def check_options(cls, options: Mapping[str, Any], field: str = "data.executor_options") -> None:
        """Refuse, before the run builds anything, options this executor does not take (``ValueError``,
        one line naming ``field.KEY``, the closest name and the allowed ones). Executors that check
        their values without side effects extend it."""
        from engage.core.config.validate import keywords_not_taken, unknown_key

        unknown, allowed = keywords_not_taken(cls.__init__, options)
        if unknown:
            raise ValueError(unknown_key(f"{field}.{unknown[0]}", allowed))

    @abstractmethod
    def start(self, request: LaunchRequest) -> SimulationProcess:
        """Start ``request.command``; returns at once."""

    def bind_host(self) -> str:
        """The interface the trainer listens on for these processes (``127.0.0.1`` for local)."""
        return "127.0.0.1"

    def shutdown(self) -> None:  # noqa: B027 - optional for executors without resources
        """Release what the executor holds once the run ends."""


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the thread that started it exits (elsewhere,
    nothing). Run in a child between fork and exec, so a SIGKILLed trainer never leaves
    simulations behind (elsewhere the client notices its parent pid change and trainer silence
    instead), and by a DDP rank a launcher started, so that it never outlives rank 0."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def tie_to_parent(expected: int | None) -> bool:
    """:func:`die_with_parent`, then whether the parent is still the process ``expected`` (its
    pid, as the starter passed it): ``False`` when it died before the tie was made, and the
    caller should exit. Elsewhere than on Linux, or with no ``expected``, ``True``."""
    die_with_parent()
    return expected is None or not sys.platform.startswith("linux") or os.getppid() == expected


def die_with_parent_command(command: list[str]) -> tuple[list[str], Any]:
    """``command`` made to die with its parent: prefixed with util-linux ``setpriv --pdeathsig``
    when available (the child then runs no Python between fork and exec, which is safe in a
    threaded trainer), else with a ``preexec_fn`` doing the same ``prctl``."""
    if not sys.platform.startswith("linux"):
        return command, None
    setpriv = shutil.which("setpriv")
    if setpriv:
        return [setpriv, "--pdeathsig", "KILL", "--", *command], None
    return command, die_with_parent


class LocalProcess(SimulationProcess):
    def __init__(self, popen: subprocess.Popen, log_path: Path):
        self._popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int | None:
        return self._popen.pid

    def poll(self) -> int | None:
        return self._popen.poll()

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()
            try:
                self._popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def stderr_tail(self, limit: int = 4000) -> str:
        return log_tail(self.log_path, limit)


def log_tail(path: str | os.PathLike[str], limit: int = 4000) -> str:
    """The last ``limit`` bytes of a simulation's log file, as text (``""`` if it cannot be read)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def start_logged_process(
    command: list[str],
    request: LaunchRequest,
    log_dir: str | None = None,
    log_suffix: str = "",
    stdin_text: str | None = None,
) -> LocalProcess:
    """Start ``command`` (the request's own or one that wraps it, e.g. to enter another host) as a
    child that dies with the trainer, its stdout and stderr in
    ``<log_dir>/sim-<id>-<attempt><log_suffix>.log`` and ``request.env`` added to its environment,
    with ``request.secrets`` too, unless ``stdin_text`` is given: then that is written to its
    standard input instead (the wrapper reads the secrets from there)."""
    folder = Path(request.log_dir or log_dir or tempfile.mkdtemp(prefix="engage-sims-"))
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"sim-{request.simulation_id}-{request.attempt}{log_suffix}.log"
    command, preexec = die_with_parent_command(command)
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL if stdin_text is None else subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**inherited_environ(), **request.env, **(request.secrets if stdin_text is None else {})},
            preexec_fn=preexec,
            close_fds=True,
        )
    if stdin_text is not None:
        try:
            popen.stdin.write(stdin_text.encode())  # type: ignore[union-attr]
            popen.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass  # it died at once: the fleet sees it exit
    return LocalProcess(popen, log_path)


class LocalExecutor(Executor):
    """Child processes of the trainer on this host (``subprocess``), each given its keys in its
    environment (``ENGAGE_KEYS``).

    Their stdout and stderr go to ``<log_dir>/sim-<id>-<attempt>.log``. On Linux each child is
    killed by the kernel when the thread that started it exits (``PR_SET_PDEATHSIG``); start
    processes from a thread that lives as long as they should.
    """

    shares_memory = True
    keys_in_environment = True

    def __init__(self, log_dir: str | None = None):
        self.log_dir = log_dir

    def start(self, request: LaunchRequest) -> SimulationProcess:
        return start_logged_process(request.command, request, self.log_dir)
