"""Run the ``engage`` command in a child process, as a user would (for end-to-end tests).

Each call is a process of its own with its own working directory, environment, output and exit
code. To spare each one the import of Lightning, PyTorch, Hydra and MLflow (about 8 CPU seconds),
the processes are forked from one server per test process that imported them once
(:mod:`engage.core.forkserver`); a call's ``PYTHONPATH`` may add folders (a test's helper
modules); a call whose ``PYTHONPATH`` lacks one of the server's (this process's when it started
the server), or made while another is running, starts a new interpreter instead.
Setting ``ENGAGE_TEST_FORK=0`` starts a new interpreter for every call.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from engage.core.forkserver import ForkedProcess, ForkServer, ForkServerError, python_path_folders
from engage.core.run import TASK_IMPORTS
from engage.core.tracking.store import PARENT_RUN_ENV, PARENT_RUN_FILE_ENV, TRACKING_URI_ENV

#: the smallest ``engage run`` that still trains: 16x16 heat equation, 2 simulations, 1 epoch of at
#: most 5 batches (online epochs are 100 batches by default)
TINY_RUN = (
    "simulator.grid=16",
    "simulator.steps=5",
    "data.train_simulations=2",
    "data.val_simulations=1",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "model.width=4",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
)

#: ``ENGAGE_TEST_FORK=0``: every call starts a new interpreter
FORK_ENV = "ENGAGE_TEST_FORK"
#: what the server imports before its first fork: ``engage run``'s whole program
PRELOAD = ("engage.core.cli", "engage.core.run", *TASK_IMPORTS)
#: the variables of a sweep that a parent process may hold (and every ``MLFLOW_*`` setting)
INHERITED = (PARENT_RUN_ENV, PARENT_RUN_FILE_ENV, TRACKING_URI_ENV)


def run_engage(
    *args: str, cwd: str | Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``engage ARGS`` in ``cwd`` with this interpreter; a parent process's sweep variables and
    MLflow settings (every ``MLFLOW_*``) removed, unless ``env`` sets them."""
    full_env = {**os.environ, **(env or {})}
    for name in list(full_env):
        if (name in INHERITED or name.startswith("MLFLOW_")) and name not in (env or {}):
            full_env.pop(name)
    command = [sys.executable, "-m", "engage.core.cli", *args]
    forked = _EngageServer.shared().run(list(args), full_env, os.path.abspath(cwd), timeout)
    if forked is not None:
        code, out, err = forked
        return subprocess.CompletedProcess(command, code, out, err)
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


class _EngageServer:
    """This test process's fork server for ``engage``, started at its first use; one call at a
    time (a call made while another runs gets ``None``: the caller starts an interpreter)."""

    _shared: _EngageServer | None = None

    def __init__(self) -> None:
        self._server: ForkServer | None = None
        self._served: list[str] = []  # the server's PYTHONPATH folders
        self._busy = threading.Lock()
        self._failed = os.environ.get(FORK_ENV, "1") == "0"

    @classmethod
    def shared(cls) -> _EngageServer:
        if cls._shared is None:
            cls._shared = cls()
            atexit.register(cls._shared.close)
        return cls._shared

    def run(self, argv: list[str], env: dict[str, str], cwd: str, timeout: float) -> tuple[int, str, str] | None:
        """``engage ARGV`` forked: its exit code, output and errors; ``None`` when it cannot be forked."""
        if self._failed or not self._busy.acquire(blocking=False):
            return None
        try:
            with tempfile.TemporaryDirectory(prefix="engage-run-") as folder:
                out, err = Path(folder, "stdout"), Path(folder, "stderr")
                try:
                    process = self._start(argv, env, cwd, str(out), str(err))
                    if process is None:
                        return None
                except ForkServerError:
                    self._failed = True  # said by the server's log; new interpreters from now on
                    return None
                try:
                    code = process.wait(timeout=timeout)
                except BaseException as exc:  # its own time-out, pytest's, Ctrl-C: it ends too
                    _kill_group(process.pid)
                    process.wait(timeout=30)
                    if isinstance(exc, subprocess.TimeoutExpired):
                        raise subprocess.TimeoutExpired(["engage", *argv], timeout, _read(out), _read(err)) from None
                    raise
                return code, _read(out), _read(err)
        finally:
            self._busy.release()

    def _start(self, argv: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> ForkedProcess | None:
        """The call forked, or ``None`` when its ``PYTHONPATH`` lacks a folder of the server's (a
        forked call can add folders to its path, not take away what the server imported from)."""
        if self._server is None or not self._server.alive:
            self._served = python_path_folders(os.environ)  # the environment the server starts with
            self._server = ForkServer(ForkServer.server_command(sys.executable, PRELOAD), cwd=cwd)
        if not set(self._served) <= set(python_path_folders(env)):
            return None
        return self._server.start("engage.core.cli:main", argv, env, cwd, out, err)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(path: Path) -> str:
    """A forked call's output as ``subprocess.run(text=True)`` gives it: line ends translated."""
    text = path.read_bytes().decode(errors="replace") if path.exists() else ""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def wait_ended(pid: int, timeout_s: float = 30.0) -> bool:
    """Wait until process ``pid`` (not a child of this one) has ended, a zombie counting as
    ended; whether it did within ``timeout_s``."""
    import time

    import psutil

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
