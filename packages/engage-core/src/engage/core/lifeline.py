"""Lifelines: a pipe that tells a helper process that the process which started it is gone,
however it went (``kill -9`` and the out-of-memory killer included).

The starting process keeps the write end of the helper's standard input (:func:`hold`); the
helper reads it and takes end of file for its starter's death, since the kernel closes a dead
process's descriptors. A child the starter forks without exec (a data loader's worker, a fork
server) would keep the pipe open after the starter died: in such a child every held write end is
pointed at ``/dev/null`` at once. :func:`let_go` closes one, after a last line for a helper that
tells an orderly end from a death. The guard of a run's MLflow record
(:mod:`engage.core.tracking.run_guard`), engage-deploy's Slurm job reaper and its sweep's MLflow
server are such helpers.

Example::

    >>> import subprocess, sys
    >>> helper = subprocess.Popen(
    ...     [sys.executable, "-c", "import sys; print(sys.stdin.buffer.read())"],
    ...     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    ... )
    >>> hold(helper)
    >>> let_go(helper, b"stopped\\n")
    >>> helper.stdout.read(), helper.wait()
    (b"b'stopped\\\\n'\\n", 0)
"""

from __future__ import annotations

import abc
import os
import signal
import subprocess
import threading
import time
import weakref
from typing import IO, ClassVar

__all__ = ["Helper", "end_with_stdin", "hold", "let_go"]

#: the write ends of the pipes this process holds, which no forked child may keep open: the file
#: objects, weakly (one closed or collected without :func:`let_go` leaves no stale number behind)
_WRITE_ENDS: weakref.WeakSet[IO[bytes]] = weakref.WeakSet()


def _drop_write_ends() -> None:
    # in a forked child: the same descriptors stay valid (the child's copies of the Popen objects
    # close them one day) but no longer keep the pipes open
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for file in list(_WRITE_ENDS):
            try:
                if not file.closed:
                    os.dup2(null, file.fileno(), inheritable=False)
            except (OSError, ValueError):
                continue  # closed meanwhile: nothing of it to keep open
    finally:
        os.close(null)
        _WRITE_ENDS.clear()


os.register_at_fork(after_in_child=_drop_write_ends)


def hold(process: subprocess.Popen) -> None:
    """Hold ``process``'s standard input (``stdin=subprocess.PIPE``) as its lifeline."""
    if process.stdin is None:
        raise ValueError("a lifeline is the helper's standard input: start it with stdin=subprocess.PIPE")
    _WRITE_ENDS.add(process.stdin)


def let_go(process: subprocess.Popen, last_line: bytes = b"") -> None:
    """Close ``process``'s lifeline, after writing ``last_line``; a helper gone already is no error."""
    if process.stdin is None or process.stdin.closed:
        return
    _WRITE_ENDS.discard(process.stdin)
    try:
        if last_line:
            process.stdin.write(last_line)
    except OSError:
        pass  # it is gone already
    finally:
        try:
            process.stdin.close()
        except OSError:
            pass


def end_with_stdin(grace_s: float = 10.0) -> threading.Thread:
    """In a process whose standard input is its lifeline (a job started on another host over
    SSH, whose connection holds it open): ``SIGTERM`` this process once that input ends (its
    starter stopped it, was interrupted or died, and the connection closed), and ``SIGKILL`` it
    and every process it started ``grace_s`` seconds later if it still runs. Returns the
    watching thread (a daemon). The lifeline is taken off standard input, which reads as
    empty from then on, as a process started without one does (a stray ``input()`` ends at once
    rather than waiting for the connection's end)."""
    import psutil

    lifeline = os.dup(0)  # not inherited by the processes this one starts
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)

    def watch() -> None:
        try:
            while os.read(lifeline, 65536):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        for process in [*psutil.Process().children(recursive=True), psutil.Process()]:
            try:
                process.kill()
            except psutil.Error:
                continue  # gone meanwhile

    thread = threading.Thread(target=watch, name="end-with-stdin", daemon=True)
    thread.start()
    return thread


class Helper(abc.ABC):
    """A helper process on a lifeline: :meth:`argv` started in a session of its own (Ctrl-C at a
    terminal is not for it), its standard input the lifeline, its output discarded; :meth:`stop`
    writes :attr:`done` (the holder ended as it should) and waits for it. One per watch."""

    #: the line that tells the helper its holder ended as it should
    done: ClassVar[bytes] = b""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None

    @abc.abstractmethod
    def argv(self) -> list[str]:
        """The helper's command."""

    def env(self) -> dict[str, str]:
        """The helper's environment (this process's)."""
        return dict(os.environ)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the helper, unless it runs already (one that died meanwhile is replaced)."""
        if self.running:
            return
        if self._process is not None:
            self.stop()  # its pipe closed and forgotten first
        self._process = subprocess.Popen(
            self.argv(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True, env=self.env()
        )
        hold(self._process)

    def stop(self) -> None:
        """Tell the helper its holder ended as it should, and wait for it (10 s, then SIGKILL)."""
        process, self._process = self._process, None
        if process is None:
            return
        let_go(process, self.done)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
