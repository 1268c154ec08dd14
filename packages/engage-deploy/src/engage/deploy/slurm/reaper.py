"""Cancels a process's Slurm jobs when that process dies, however it dies.

A trainer (``data.executor=slurm``) or a sweep's launcher (``+infrastructure=slurm``) cancels its
jobs when it ends, fails or is interrupted; one killed outright (``kill -9``, the OOM killer, a
lost login session) cannot. :class:`JobReaper` covers that case: it starts ``python -m
engage.deploy.slurm.reaper TOKEN``, in a session of its own, reading a pipe whose write end only
the submitting process holds (a :mod:`~engage.core.lifeline`, which no child it forks keeps
open). When that process dies, the kernel closes the pipe; the reaper reads end of file and
cancels every job of this user whose name ends with ``-TOKEN`` (the names the process gave its
jobs), then exits. :meth:`JobReaper.stop` (the process cancelled its jobs itself) writes a line
first, and the reaper exits without cancelling anything.

The reaper ignores ``SIGTERM``, ``SIGHUP`` and ``SIGINT``: when a trainer that runs inside a Slurm job is
killed with its job, Slurm signals every process of the job and sends ``SIGKILL`` only
``KillWait`` seconds (30 by default) later, by which time the reaper has cancelled the jobs.

Example::

    >>> reaper = JobReaper("3fa2c9d1")
    >>> reaper.running
    False
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from engage.core import lifeline

#: the reaper's log lines start with this
PREFIX = "engage slurm reaper:"
#: seconds after its submitter died at which the reaper looks for that submitter's jobs (an
#: ``sbatch`` under way then answers within the submitter's two minutes for it)
PASSES_S = (0.0, 2.0, 10.0, 30.0, 120.0)


class JobReaper(lifeline.Helper):
    """The watch over the jobs named ``*-<token>`` (see the module doc); one per submitter.
    :meth:`stop`: the jobs were cancelled as they should, and the reaper exits cancelling nothing."""

    done = b"stopped\n"

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "engage.deploy.slurm.reaper", self.token]

    def env(self) -> dict[str, str]:
        from engage.core.tracking.store import inherited_environ  # not at import: the reaper's own process is light

        return inherited_environ()


def jobs_named(token: str, user: str | None = None) -> list[str]:
    """Ids of ``user``'s queued or running jobs whose names end with ``-token``, in every
    partition, hidden ones included, whatever the user's ``SQUEUE_*`` defaults say; a job array
    once, by its array's id (``scancel`` of which cancels every task)."""
    user = user or _user()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQUEUE_")}
    listed = subprocess.run(
        ["squeue", "--noheader", "--all", f"--user={user}", "--format=%F %j"],
        capture_output=True, text=True, timeout=60, check=True, env=env,
    ).stdout  # fmt: skip
    lines = (line.split() for line in listed.splitlines())
    return list(dict.fromkeys(parts[0] for parts in lines if len(parts) == 2 and parts[1].endswith(f"-{token}")))


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def _say(line: str) -> None:
    try:
        print(f"{PREFIX} {line}", file=sys.stderr, flush=True)
    except OSError:
        pass  # nobody reads the dead submitter's stderr any more


def reap(token: str) -> None:
    """Cancel the jobs named with ``token``: at once, then again :data:`PASSES_S` seconds after,
    for those whose ``sbatch`` was still under way when the submitter died and a controller
    that did not answer. After the first pass the reaper lets go of the submitter's stderr,
    so that whoever reads the dead submitter's output sees its end."""
    cancelled: set[str] = set()
    started = time.monotonic()
    for number, at in enumerate(PASSES_S):
        time.sleep(max(0.0, started + at - time.monotonic()))
        try:
            ids = [i for i in jobs_named(token) if i not in cancelled]
            if ids:
                # a job that ended meanwhile is no error: there is nothing left to cancel
                subprocess.run(["scancel", *ids], capture_output=True, timeout=60)
                cancelled.update(ids)
                _say(f"its submitter died; cancelled jobs {' '.join(ids)}")
        except (OSError, subprocess.SubprocessError) as exc:
            _say(f"the jobs named *-{token} may still be queued or running: {exc}")
        if number == 0:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0]:
        print(
            "usage: python -m engage.deploy.slurm.reaper TOKEN (reads its submitter's pipe on stdin)", file=sys.stderr
        )
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    if sys.stdin.buffer.readline():
        return 0  # stopped: the submitter cancelled its jobs itself
    reap(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
