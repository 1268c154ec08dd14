"""``engage run``'s Hydra task: check the composed config, then train (:mod:`engage.core.training`,
imported only once the config passed its checks) and turn what ended the run into one line and
an exit code."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.console import Console

from engage.core.config.validate import EXIT_CONFIG_ERROR, ConfigError, check_store, check_values
from engage.core.online.outcome import EXIT_RUN_FAILED, OnlineRunFailed
from engage.core.plugins import PluginError
from engage.core.preimport import preimport
from engage.core.rank_env import LOCAL_RANK_ENV, MASTER_ADDR_ENV, MASTER_PORT_ENV, NODE_RANK_ENV, WORLD_SIZE_ENV
from engage.core.tracking.store import TrackingUnavailable

EXIT_TRACKING_UNAVAILABLE = 3
console = Console(stderr=True, soft_wrap=True)
#: the pid of the process whose DDP launcher starts the other ranks (they die with it)
RANK_STARTER_ENV = "ENGAGE_RANK_STARTER"
#: what a DDP fit's launcher sets in this process's environment for the ranks it starts, and ours
DISTRIBUTED_ENV = (MASTER_ADDR_ENV, MASTER_PORT_ENV, NODE_RANK_ENV, LOCAL_RANK_ENV, WORLD_SIZE_ENV, RANK_STARTER_ENV)
#: what :func:`task` imports when it runs, for a process that forks runs of it to import once
#: (the launcher's fork servers, see :func:`engage.deploy.job_start.job_preload`): the training
#: (Lightning, PyTorch), MLflow and its store for the default local tracking (SQLite)
TASK_IMPORTS = ("engage.core.training", "mlflow", "mlflow.store.tracking.sqlalchemy_store")


class RunFailed(Exception):
    """A job of a sweep that did not do what it was asked: the one line naming the cause and the
    exit code ``engage run`` ends with. A job raises it, where a single run exits: the sweep's
    launcher records the job FAILED and goes on with its other jobs. ``printed``: whether the
    line was printed already, by the job; a launcher that saw a job's process fail raises one
    not printed, for ``engage run`` to print. The line was printed to the job's standard error,
    which :attr:`printed_here` compares with the receiving process's: a launcher whose jobs
    write to their own logs (submitit's) hands back an error whose line the console never
    showed."""

    def __init__(self, line: str, exit_code: int, printed: bool = True):
        super().__init__(line)
        self.line, self.exit_code, self.printed = line, exit_code, printed
        #: the standard error the line went to, when printed (see :func:`stderr_identity`)
        self.printed_on = stderr_identity() if printed else None

    @property
    def printed_here(self) -> bool:
        """Whether the line reached this process's standard error already."""
        return self.printed and self.printed_on == stderr_identity()

    def __reduce__(self) -> tuple[Any, ...]:
        # where it was printed travels as state: an engage that does not know it still unpickles it
        return (type(self), (self.line, self.exit_code, self.printed), {"printed_on": self.printed_on})


def stderr_identity() -> str:
    """This process's standard error: ``host:device:inode`` of its file (one terminal, pipe or
    log file, shared by the processes that inherit it), else ``host:pid:object`` where it has
    none (a captured or redirected stream, which only this process writes to)."""
    import socket

    host = socket.gethostname()
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return f"{host}:pid{os.getpid()}:{id(sys.stderr)}"
    return f"{host}:{stat.st_dev}:{stat.st_ino}"


#: the exit code of a run's incarnation that ended because its batch job was requeued (sysexits' EX_TEMPFAIL)
EXIT_REQUEUED = 75


class Requeued(Exception):
    """This incarnation of a run ended because its batch job was requeued after a checkpoint
    (:class:`engage.deploy.callbacks.SlurmRequeue`): the next incarnation resumes from that
    checkpoint and continues the same MLflow run, which is ``SCHEDULED`` meanwhile."""


class Terminated(BaseException):
    """The run was stopped by a signal other than Ctrl-C (``SIGTERM``: ``scancel``, a batch
    system's time limit, a supervisor); its MLflow run is ``KILLED``. A ``BaseException``, as
    ``KeyboardInterrupt`` is: nothing that catches errors takes it for one. ``engage`` ends by
    the same signal, after one line naming it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"terminated ({signal.Signals(self.signum).name})"

    def end_process(self, who: str) -> int:
        """Print ``<who>: terminated (SIGTERM)`` and end this process by the signal that stopped it,
        as a batch system or a supervisor that sent it expects: at once, without the interpreter's
        exit handlers (the run's record is complete by then); returns ``128 + signum`` where the
        signal does not end the process."""
        print(f"{who}: {self}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        signal.signal(self.signum, signal.SIG_DFL)
        os.kill(os.getpid(), self.signum)
        return 128 + self.signum


def sigterm_raises_terminated() -> Callable[[], None]:
    """From here, a SIGTERM raises :class:`Terminated`, except inside Lightning's fit and
    validation, where Lightning's own handler (which calls this one too) stops them at their
    next step; returns the function that puts back the handler it replaced (outside the main
    thread, which cannot set one, nothing is replaced)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def terminated(signum: int, frame: Any) -> None:
        if signal.getsignal(signal.SIGTERM) is terminated:  # not called by Lightning's handler
            raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, terminated)

    def put_back() -> None:
        signal.signal(signal.SIGTERM, previous)

    return put_back


def _left_to_rank_zero(exc: BaseException) -> bool:
    """Whether this process is a rank that ``engage run``'s rank 0 started (Lightning's DDP) and
    its failure is rank 0's to report: its own run fell short (its DataModule wrote the cause
    where rank 0 reads it), or it saw another rank's. It then ends quietly with code 0, and its
    connections close, so rank 0 says why the run failed, ends its MLflow run FAILED and exits
    with the run's code. Ending with another code, Lightning's rank 0 would kill every process,
    itself included, within seconds, saying nothing and leaving its MLflow run RUNNING."""
    starter = os.environ.get(RANK_STARTER_ENV)
    started = os.environ.get(LOCAL_RANK_ENV, "0") != "0" and starter is not None and str(os.getppid()) == starter
    return started and (bool(getattr(exc, "left_to_rank_zero", False)) or bool(getattr(exc, "said_elsewhere", False)))


def _fail(line: str, exit_code: int) -> NoReturn:
    """Print ``line``; exit with ``exit_code`` (a single run) or raise :class:`RunFailed` (a job of a sweep)."""
    from hydra.types import RunMode

    line = " ".join(line.split())
    console.print(f"engage run: {line}", highlight=False, markup=False)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise RunFailed(line, exit_code)
    sys.exit(exit_code)


def task(cfg: DictConfig) -> float | None:
    """The Hydra task function; returns ``val/rel_l2`` (or ``val/loss``) for sweepers. Bad input,
    an unreachable store and a failed online run are one printed line and an exit code (see :func:`_fail`)."""
    try:
        check_values(cfg)
        check_store(cfg)  # a sweep's job too, whose launcher ran no run-start check
        # Lightning, PyTorch and MLflow, once the config is good (1-2 s faster with the collector paused)
        preimport("engage.core.training")
        from engage.core.training import train

        metrics = train(cfg)
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG_ERROR)
    except TrackingUnavailable as exc:
        _fail(str(exc), EXIT_TRACKING_UNAVAILABLE)
    except Requeued as exc:
        _fail(str(exc), EXIT_REQUEUED)
    except PluginError as exc:  # a plugin's hook that raised during the run (its MLflow run is FAILED)
        _fail(str(exc), EXIT_RUN_FAILED)
    except Exception as exc:
        if _left_to_rank_zero(exc):
            # in this rank's own log (its console shows warnings only): rank 0 says it once
            logging.getLogger("engage.online").info("this rank stops; rank 0 reports the run's failure: %s", exc)
            sys.exit(0)
        buffer = sys.modules.get("engage.core.online.buffer")  # loaded if the run got that far
        closed = getattr(buffer, "BufferClosed", None)
        if not isinstance(exc, OnlineRunFailed) and not (closed is not None and isinstance(exc, closed)):
            raise
        if getattr(exc, "said_elsewhere", False):  # another rank's failure, which rank 0 reports
            sys.exit(EXIT_RUN_FAILED)
        # the MLflow run is FAILED already; one line names the cause
        _fail(str(exc), EXIT_RUN_FAILED)
    return metrics.get("val/rel_l2", metrics.get("val/loss"))
