"""Ends an MLflow run whose process died without ending it, however it died.

``engage run`` ends its MLflow run ``FINISHED``, ``FAILED`` or ``KILLED`` whenever Python gets to
(an exception, Ctrl-C, ``SIGTERM``); a process killed outright (``kill -9``, the out-of-memory
killer, a crash of the interpreter) cannot, and its run would stay ``RUNNING`` for good.
:class:`RunGuard` covers that case: it starts ``python -m engage.core.tracking.run_guard RUN_ID
PID`` in a session of its own, reading a :mod:`~engage.core.lifeline` whose write end only the
run's process holds. When that process dies, the kernel closes the pipe; the guard reads end of
file and, if the run is still ``RUNNING``, ends it ``FAILED``, with ``engage.error`` saying so
unless the run recorded its cause itself.
:meth:`RunGuard.stop` (the process ended its run itself) writes a line first, and the guard
exits without a look. The store's address reaches the guard through ``MLFLOW_TRACKING_URI`` in
its environment, with the credentials of the process's own (never on its command line).

The guard ignores ``SIGTERM``, ``SIGHUP`` and ``SIGINT``: when a run inside a Slurm job is
cancelled, Slurm signals every process of the job, and the run's process ends its run itself.

Example::

    >>> guard = RunGuard("sqlite:///mlflow.db", "0123456789abcdef0123456789abcdef")
    >>> guard.running
    False
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from engage.core import lifeline
from engage.core.tracking.store import MLFLOW_TIMEOUT_ENV, MLFLOW_TRACKING_URI

#: the line :meth:`RunGuard.stop` writes: the run was ended by its own process
ENDED = b"ended\n"


class RunGuard(lifeline.Helper):
    """The watch over MLflow run ``run_id`` of ``tracking_uri`` (see the module doc); one per run.
    :meth:`start` returns at once (the guard takes a tenth of a second to start)."""

    done = ENDED

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        super().__init__()
        self.tracking_uri = tracking_uri
        self.run_id = run_id

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "engage.core.tracking.run_guard", self.run_id, str(os.getpid())]

    def env(self) -> dict[str, str]:
        # its one request after a death waits no longer than the run's own would (a dead server)
        return {MLFLOW_TIMEOUT_ENV: "10", **os.environ, MLFLOW_TRACKING_URI: self.tracking_uri}


def end_abandoned_run(run_id: str, pid: int) -> bool:
    """End run ``run_id`` (of ``MLFLOW_TRACKING_URI``) ``FAILED``, saying that process ``pid``
    died without ending it, if it is still ``RUNNING``; whether it was."""
    from mlflow.tracking import MlflowClient

    from engage.core.tracking.store import ERROR_TAG

    client = MlflowClient()
    run = client.get_run(run_id)
    if run.info.status != "RUNNING":
        return False
    if ERROR_TAG not in run.data.tags:  # a cause the run recorded itself stands
        cause = (
            f"its process (pid {pid} on {socket.gethostname()}) ended without ending the run: killed by a "
            "signal Python cannot handle (SIGKILL, sent by hand or by the out-of-memory killer), or crashed"
        )
        client.set_tag(run_id, ERROR_TAG, cause)
    client.set_terminated(run_id, status="FAILED")
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].isdigit():
        print(
            "usage: python -m engage.core.tracking.run_guard RUN_ID PID "
            "(reads the run's process's pipe on stdin; MLFLOW_TRACKING_URI names the store)",
            file=sys.stderr,
        )
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    if sys.stdin.buffer.readline():
        return 0  # ended by its own process
    try:
        end_abandoned_run(args[0], int(args[1]))
    except Exception as exc:  # the store does not answer: nothing more to do
        print(f"engage run guard: run {args[0]} may stay RUNNING: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
