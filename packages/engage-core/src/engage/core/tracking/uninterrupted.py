"""MLflow calls that Ctrl-C (and a handled SIGTERM) lets finish.

Ctrl-C raises ``KeyboardInterrupt`` at the next Python instruction of the main thread, which may
lie inside an MLflow call to an SQLite store, a read as well as a write: between the statement
that took a lock on the file and the code that would release it. SQLAlchemy then throws the
connection away with its statement still open, so the lock stays held by a connection nobody can
reach, and every later write of the process, the ``KILLED`` status included, waits for SQLite's
20 s busy timeout and fails with ``database is locked``. Seen: an ``engage run`` stopped with
Ctrl-C that took over a minute to exit and left its run ``RUNNING``.

:func:`uninterrupted_client` and :class:`~engage.core.tracking.mlflow_run.RunLogger`
(Lightning's ``MLFlowLogger``) give ``MlflowClient`` objects whose calls a first Ctrl-C lets
finish: it is raised as the call returns (an SQLite call takes milliseconds; an upload or a store
that does not answer takes longer). A second Ctrl-C during the same call stops it at once.

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

#: the signals a call holds: Ctrl-C, and the SIGTERM a run turns into an exception of its own
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Deferring:
    """A held signal's handler while a call runs: the first signal is noted for after the call,
    a second one is handed to the handler that was in place (stop now)."""

    def __init__(self, signum: int, previous: Any) -> None:
        self.signum, self.previous = signum, previous
        self.pending = False
        self.frame: Any = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.pending:
            signal.signal(self.signum, self.previous)
            self.pending = False
            self.previous(signum, frame)
            return
        self.pending, self.frame = True, frame


@contextlib.contextmanager
def ctrl_c_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (``SIGINT``), or a ``SIGTERM`` the program handles itself, that arrives in
    the block until the block ends, then hand it to the handler that was in place
    (``KeyboardInterrupt`` for Ctrl-C by default); a second one is handed to it at once. Outside
    the main thread, or for a signal ignored or left to the system, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[_Deferring] = []
    for signum in HELD_SIGNALS:
        previous = signal.getsignal(signum)
        if callable(previous) and not isinstance(previous, _Deferring):  # else: ignored, the system's, or held
            held.append(_Deferring(signum, previous))
            signal.signal(signum, held[-1])
    try:
        yield
    finally:
        for deferring in held:
            if signal.getsignal(deferring.signum) is deferring:
                signal.signal(deferring.signum, deferring.previous)
        for deferring in held:
            if deferring.pending:
                deferring.previous(deferring.signum, deferring.frame)


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
        if name.startswith("__") or name == "_client":
            raise AttributeError(name)  # copy and pickle ask before ``_client`` is set
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            with ctrl_c_deferred():
                return attribute(*args, **kwargs)

        return call


def uninterrupted_client(tracking_uri: str | None = None) -> UninterruptedClient:
    """An ``MlflowClient`` of ``tracking_uri`` whose calls Ctrl-C lets finish."""
    from mlflow.tracking import MlflowClient

    return UninterruptedClient(MlflowClient(tracking_uri=tracking_uri))
