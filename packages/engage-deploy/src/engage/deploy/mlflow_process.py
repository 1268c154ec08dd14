"""MLflow in the launcher's process, across its launches: its client imported in the background
as soon as the launcher knows a sweep will record, and the sweep's server kept for the process's
next launch. Light to import (MLflow itself and the sweep's modules come later), so that the
launcher's ``setup`` starts the import at once.

Example (what the launcher's ``setup`` does when its sweep records in an SQLite store)::

    >>> from engage.deploy.mlflow_process import import_mlflow_early
    >>> import_mlflow_early(sql_store=True)  # returns at once; the import goes on in a thread
"""

from __future__ import annotations

import atexit
import sys
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from engage.core.preimport import preimport

if TYPE_CHECKING:
    from engage.deploy.tracking import TrackingServer

__all__ = ["hold_server", "import_mlflow_early", "in_background", "take_held_server"]

#: the server this process started for its last launch, kept running for its next launch on the
#: same store (a batched sweeper such as Optuna's launches once a batch) and stopped at exit
_held: list[TrackingServer] = []


def hold_server(server: TrackingServer) -> None:
    """Keep ``server`` (started by this process) for this process's next launch, or stop it if
    it no longer answers; stops the one held before, so that at most one is held."""
    while _held:
        _held.pop().stop()
    if server.process is None or not server.alive():
        server.stop()
        return
    _held.append(server)
    atexit.unregister(_stop_held)
    atexit.register(_stop_held)


def take_held_server(backend_uri: str, listen: list[str], auth: bool) -> TrackingServer | None:
    """The held server, if it serves ``backend_uri`` where and as asked and still answers."""
    for server in list(_held):
        same = set(server.listen) == {*listen} - {"", server.bind} and (server.credentials is not None) == auth
        if server.backend_uri == backend_uri and same and server.alive():
            _held.remove(server)
            return server
    return None


def _stop_held() -> None:
    while _held:
        _held.pop().stop()


def import_mlflow_early(sql_store: bool) -> None:
    """Start importing MLflow's client (over a second) in a background thread, for a launcher
    that knows a sweep will record, before the sweep composes its jobs;
    :meth:`~engage.deploy.sweep_tracking.SweepTracking.open` then finds it imported, or waits
    for the import under Python's own import lock. With ``sql_store`` (the sweep writes an SQLite
    store itself), MLflow's SQL store (SQLAlchemy, Alembic and MLflow's models, 0.6 s more) is
    imported in the same go.

    The imports run with the garbage collector paused and their objects are frozen out of its
    walks afterwards (:func:`~engage.core.preimport.preimport`): 0.4 s of the 1.6 s import here,
    and every later collection of the sweep does not walk them again (0.15 s of a one-job
    sweep)."""
    if "mlflow.tracking" not in sys.modules:
        modules = ("mlflow.tracking", *(("mlflow.store.tracking.sqlalchemy_store",) if sql_store else ()))
        in_background(lambda: preimport(*modules), name="engage-mlflow-import")


def in_background(function: Any, name: str) -> Future:
    """Run ``function()`` in a daemon thread; its result or exception lands in the returned future."""
    future: Future = Future()

    def target() -> None:
        try:
            future.set_result(function())
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future
