"""MLflow writes that Ctrl-C lets finish.

Ctrl-C raises ``KeyboardInterrupt`` at the next Python instruction of the main thread, which may
lie inside an MLflow call to an SQLite store: between the statement that took the file's write
lock and the code that would close it. SQLAlchemy then throws the connection away with its
statement still open, so the lock stays held by a connection nobody can reach, and every later
write of the process, the ``KILLED`` status included, waits for SQLite's 20 s busy timeout and
fails with ``database is locked``. Seen: an ``engage run`` stopped with Ctrl-C that took over a
minute to exit and left its run ``RUNNING``.

:class:`RunLogger` is Lightning's ``MLFlowLogger`` whose client lets every call finish first: a
Ctrl-C that arrives during the call is raised as it returns (a write takes milliseconds).

Example::

    >>> import os, signal
    >>> def write():
    ...     os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of a write
    ...     return "written"
    >>> try:
    ...     with ctrl_c_deferred():
    ...         done = write()
    ... except KeyboardInterrupt:
    ...     print(done, "then interrupted")
    written then interrupted
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Iterator
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger


class _Deferring:
    """The SIGINT handler while a call runs: it notes the signal for after the call."""

    def __init__(self) -> None:
        self.pending: Any = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.pending = frame


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (``SIGINT``) that arrives in the block until the block ends, then hand it
    to the handler that was in place (``KeyboardInterrupt`` by default). Outside the main thread,
    or while ``SIGINT`` is ignored or left to the system, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous) or isinstance(previous, _Deferring):
        yield  # ignored, the system's, or already held by an enclosing block
        return
    deferring = _Deferring()
    signal.signal(signal.SIGINT, deferring)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if deferring.pending is not None:
            previous(signal.SIGINT, deferring.pending)


class UninterruptedClient:
    """An ``MlflowClient`` each of whose calls runs within :func:`ctrl_c_deferred`; its other
    attributes are the client's own."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @property
    def wrapped(self) -> Any:
        """The ``MlflowClient`` itself."""
        return self._client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            with ctrl_c_deferred():
                return attribute(*args, **kwargs)

        return call


class RunLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger`` whose ``experiment`` (the ``MlflowClient`` every one of its
    writes goes through, and :class:`~engage.core.tracking.mlflow_run.MLflowRun`'s) lets each
    call finish before a Ctrl-C is raised."""

    @property
    def experiment(self) -> Any:
        client = super().experiment
        held = getattr(self, "_uninterrupted", None)
        if held is None or held.wrapped is not client:
            held = self._uninterrupted = UninterruptedClient(client)
        return held
