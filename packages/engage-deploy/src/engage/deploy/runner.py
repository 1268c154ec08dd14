"""Runs one job of a sweep on a host: ``python -m engage.deploy.runner JOB_DIR``.

``JOB_DIR/job.json`` is the job's contract (:class:`~engage.deploy.job.JobContract`: its host, the
sweep's hosts and MLflow), ``JOB_DIR/job.pkl`` holds what the launcher prepared (the Hydra context, the job's composed
config, the task function and Hydra's singleton state, pickled with cloudpickle like Hydra's
submitit launcher does); the job runs through Hydra's own ``run_job`` so its output folder,
logging and callbacks are exactly those of any other launcher. The outcome goes to
``JOB_DIR/result.pkl`` (the ``JobReturn``) and ``JOB_DIR/runner.json`` (status, timings, error).
A job of several ranks (a multi-node Slurm job) runs this once a task: every rank runs the task,
rank 0 alone records its outcome (:mod:`engage.deploy.slurm.ranks`).

Example (what the launcher starts)::

    python -m engage.deploy.runner multirun/2026-01-01/12-00-00/.engage/20260101-120000/jobs/0
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import traceback
import types
from pathlib import Path
from typing import Any

from engage.deploy.job import RUN_ID_FILE, JobContract, TrackingContract, read_run_id
from engage.deploy.slurm.ranks import TaskRank

#: exit code of a job whose task raised (the launcher reads result.json for the details)
EXIT_JOB_FAILED = 1
#: exit code when the runner itself could not start the job
EXIT_RUNNER_ERROR = 70
#: the runner's option for a job on another host: it ends when its standard input does (the
#: launcher's SSH connection, which holds it open, closed: the launcher stopped the job or died)
EXIT_WITH_STDIN = "--exit-with-stdin"
#: the file cloudpickle (3.1.3 and later) names for the code it pickles by value
DYNAMIC_CODE_FILE = "<dynamic-code>"


def _picklable(value: Any) -> Any:
    import cloudpickle

    try:
        cloudpickle.dumps(value)
        return value
    except Exception:  # a return value that cannot travel back is reported by its repr
        return repr(value)


def _with_filename(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(_with_filename(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def name_source_file(task_function: Any, filename: str | None) -> None:
    """Give the task function, and the functions of its module it calls, their file back.

    A task defined in the app's script (``__main__``) travels by value, and cloudpickle 3.1.3 and
    later names its file ``<dynamic-code>``: the job's tracebacks would show line numbers without
    a file or a source line. ``filename`` is the script's path on the launcher's machine; on a
    host that shares its files, the traceback then shows each line as Python would."""
    if not filename:
        return
    module = getattr(task_function, "__module__", None)
    for value in (task_function, *getattr(task_function, "__globals__", {}).values()):
        if (
            isinstance(value, types.FunctionType)
            and value.__module__ == module
            and value.__code__.co_filename == DYNAMIC_CODE_FILE
        ):
            value.__code__ = _with_filename(value.__code__, filename)


def _where(contract: JobContract) -> str:
    return f"pid {os.getpid()} on host {contract.host}"


def _add_note(exc: BaseException, note: str) -> None:
    """Attach ``note`` to ``exc`` as ``add_note`` does (Python 3.11+ prints it with the exception).

    The job's exception reaches the launcher pickled, which drops its traceback: without the note,
    Hydra's error report would end at the sweeper instead of at the line of the task that raised."""
    try:
        exc.__notes__ = [*getattr(exc, "__notes__", ()), note]
    except AttributeError:  # an exception type with __slots__ and no __dict__
        pass


def _go_offline_if_needed(tracking: TrackingContract | None) -> str | None:
    """Log to the job's own SQLite store when the sweep's MLflow server does not answer now (or,
    for a job started while it starts, by the time it should); the launcher uploads that store
    once the server is back. Returns the store the job logs to instead, if any."""
    from engage.deploy.tracking import http_alive, offline_experiment

    if tracking is None or not tracking.offline_uri or not tracking.uri.startswith(("http://", "https://")):
        return None
    if http_alive(tracking.uri, timeout_s=3.0):
        return None
    # started while the sweep's server was still starting: a server that is not up yet is not down
    while time.time() < (tracking.server_ready_by or 0.0):
        time.sleep(0.2)
        if http_alive(tracking.uri, timeout_s=3.0):
            return None
    store = Path(tracking.offline_uri.removeprefix("sqlite:///"))
    store.parent.mkdir(parents=True, exist_ok=True)
    offline_experiment(tracking.offline_uri, tracking.experiment, Path(tracking.offline_artifacts or store.parent))
    print(
        f"engage runner: MLflow server {tracking.uri} does not answer; logging to {tracking.offline_uri}",
        file=sys.stderr,
    )
    return tracking.offline_uri


def _wait_for_the_sweeps_experiment(tracking: TrackingContract | None) -> None:
    """Let the launcher create the sweep's experiment (and its parent run) before the job's code
    may: a job started while the sweep's server started would otherwise find no experiment, and
    MLflow's fluent API (``mlflow.start_run()`` with ``MLFLOW_EXPERIMENT_NAME``) would create it
    through the server, racing the launcher (one of them fails, ``RESOURCE_ALREADY_EXISTS``) and
    giving it an artifact location only that server can resolve. The parent's id is then the
    job's to read (``engage run`` waits no more). Jobs logging straight to an SQLite store start
    at once: the launcher began opening it before they did."""
    from engage.core.tracking.store import PARENT_RUN_ENV, PARENT_RUN_FILE_ENV, parent_run_id

    if tracking is None or not tracking.uri.startswith(("http://", "https://")) or tracking.parent_run_id:
        return
    if tracking.parent_run_file:
        os.environ[PARENT_RUN_ENV] = parent_run_id() or ""
        os.environ.pop(PARENT_RUN_FILE_ENV, None)  # waited for once: none, or none in time


def _end_the_jobs_run_when_stopped(job_dir: Path) -> None:
    """On SIGTERM (the launcher stopping its sweep, a job's time limit), end the runs the job's
    code has open through MLflow's fluent API as KILLED, nested ones included, and record the
    outermost's id for the launcher, which then adds its records to it instead of making a run of
    its own. Then the process ends by that signal as before, unless another handler called this
    one (Lightning's, during a fit, stops the fit at its next step and unwinds; ``engage run``
    handles SIGTERM itself while it trains and records its run's id as it opens it)."""
    previous = signal.getsignal(signal.SIGTERM)

    def stopped(signum: int, frame: Any) -> None:
        mlflow = sys.modules.get("mlflow")
        with contextlib.suppress(Exception):  # the process ends as it would whatever MLflow says
            named = read_run_id(job_dir) is not None  # engage run named its own
            while mlflow is not None and (run := mlflow.active_run()) is not None:
                if not named:  # first, on this host: the launcher ends it by id if MLflow does not answer
                    (job_dir / RUN_ID_FILE).write_text(run.info.run_id)  # the outermost, in the end
                mlflow.end_run("KILLED")
        if signal.getsignal(signal.SIGTERM) is stopped:  # not called by a handler that took over
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, stopped)


def _fluent_run_id() -> str | None:
    """The last run MLflow's fluent API started in this process, if the job used it."""
    if "mlflow" not in sys.modules:
        return None
    import mlflow

    try:
        run = mlflow.last_active_run()
    except Exception:  # the server went away: the launcher makes a run of its own for the record
        return None
    return run.info.run_id if run is not None else None


def _requeued(exc: BaseException) -> bool:
    """Whether the task ended because its batch job was requeued (``engage run``'s one line)."""
    from engage.core.run import EXIT_REQUEUED, Requeued

    return isinstance(exc, Requeued) or getattr(exc, "exit_code", None) == EXIT_REQUEUED


def _rank(contract: JobContract) -> TaskRank:
    """This process's rank in its job (a job of several ranks: one Slurm task each), with the
    variables the ranks meet by set; the job's log says where each runs."""
    rank = TaskRank.current(contract.ranks)
    if rank.ranks > 1:
        os.environ.update(rank.rendezvous())
        print(f"engage runner: {rank.describe()}", file=sys.stderr, flush=True)
    return rank


def run(job_dir: Path) -> int:
    """Run the job described in ``job_dir``; returns the process exit code."""
    import cloudpickle
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, JobStatus, run_job, setup_globals
    from omegaconf import OmegaConf, open_dict, read_write

    contract = JobContract.read(job_dir)
    from engage.deploy.slurm.requeue import in_slurm_job, note_early

    if in_slurm_job():
        note_early()  # a requeue's warning signal while the job starts: for its fit, not fatal
    rank = _rank(contract)
    # the sweep as this job sees it: for this process and the processes it starts
    os.environ.update(contract.environ())
    payload = cloudpickle.loads((job_dir / "job.pkl").read_bytes())
    name_source_file(payload["task_function"], payload.get("task_file"))
    setup_globals()
    Singleton.set_state(payload["singleton_state"])
    config = payload["config"]
    if not rank.records:
        # the same output folder as rank 0's, without a second copy of its .hydra files, and a
        # log file of its own (as Lightning names the ranks it starts under Hydra)
        with read_write(config.hydra), open_dict(config.hydra):
            # rank 0's folder, resolved before the job's name changes (a sweep folder may name it)
            for key in ("dir", "subdir"):
                config.hydra.sweep[key] = str(OmegaConf.select(config, f"hydra.sweep.{key}"))
            config.hydra.output_subdir = None
            config.hydra.job.name = f"{config.hydra.job.name}_rank_{rank.rank}"
    HydraConfig.instance().set_config(config)
    offline = _go_offline_if_needed(contract.tracking) if rank.records else None
    if offline:
        from engage.core.tracking.store import MLFLOW_TRACKING_URI, TRACKING_URI_ENV

        os.environ[TRACKING_URI_ENV] = os.environ[MLFLOW_TRACKING_URI] = offline
    elif rank.records:
        _wait_for_the_sweeps_experiment(contract.tracking)
    if rank.records:
        _end_the_jobs_run_when_stopped(job_dir)
    started = time.time()
    ret: JobReturn = run_job(
        hydra_context=payload["hydra_context"],
        task_function=payload["task_function"],
        config=config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    finished = time.time()
    requeued = ret.status == JobStatus.FAILED and _requeued(ret._return_value)
    if not rank.records:  # rank 0 records the job: this rank's failure is in its log and exit code
        if requeued:
            print(f"engage runner: {rank.describe()} requeued: {ret._return_value}", file=sys.stderr)
        elif ret.status == JobStatus.FAILED:
            exc = ret._return_value
            traceback.print_exception(type(exc), exc, exc.__traceback__)
            print(f"engage runner: {rank.describe()} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 0 if ret.status == JobStatus.COMPLETED else EXIT_JOB_FAILED
    error = trace = None
    if ret.status == JobStatus.FAILED:
        exc = ret._return_value
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        ret._return_value = exc if _picklable(exc) is exc else RuntimeError(error)
        _add_note(ret._return_value, f"in the job's process ({_where(contract)}):\n{trace.rstrip()}")
    else:
        ret._return_value = _picklable(ret._return_value)
    (job_dir / "result.pkl").write_bytes(cloudpickle.dumps(ret))
    # the job's Hydra output folder (also what `engage run` tags its MLflow run with)
    output_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg is not None else None
    output_dir = output_dir or ret.working_dir
    summary = {
        "status": ret.status.name,
        "return_value": repr(ret._return_value) if ret.status == JobStatus.COMPLETED else None,
        "error": error,
        "started": started,
        "finished": finished,
        "duration_s": finished - started,
        "output_dir": str(output_dir) if output_dir else None,
        "pid": os.getpid(),
        "offline": bool(offline),
    }
    # the run the job opened: recorded by engage run (its engage_run_started hook), else MLflow's
    if not read_run_id(job_dir) and (run_id := _fluent_run_id()):
        (job_dir / RUN_ID_FILE).write_text(run_id)
    (job_dir / "runner.json").write_text(json.dumps(summary, indent=1))
    if requeued:  # its batch job runs it again, from the checkpoint; the launcher waits for that
        print(f"engage runner: job requeued: {ret._return_value}", file=sys.stderr)
    elif error:
        print(f"{trace}engage runner: job failed: {error}", file=sys.stderr)
    return 0 if ret.status == JobStatus.COMPLETED else EXIT_JOB_FAILED


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    watch_stdin = args[:1] == [EXIT_WITH_STDIN]
    if watch_stdin:
        args = args[1:]
    if len(args) != 1 or not all((Path(args[0]) / name).is_file() for name in ("job.pkl", "job.json")):
        print(
            f"usage: python -m engage.deploy.runner [{EXIT_WITH_STDIN}] JOB_DIR "
            "(a folder holding job.pkl and job.json)",
            file=sys.stderr,
        )
        return EXIT_RUNNER_ERROR
    if watch_stdin:
        from engage.core.lifeline import end_with_stdin

        end_with_stdin()  # a job on another host: it ends with the launcher's connection
    from engage.core.quick_exit import skip_last_collection

    skip_last_collection()  # a job that imported PyTorch and MLflow: over a second of its exit
    try:
        return run(Path(args[0]))
    except Exception:
        traceback.print_exc()
        return EXIT_RUNNER_ERROR
    except BaseException as exc:
        # SIGTERM (scancel, a time limit) while engage run recorded its run: one line, then the
        # process ends by that signal; engage.core.run is imported only by a job that ran it
        core_run = sys.modules.get("engage.core.run")
        if core_run is not None and isinstance(exc, core_run.Terminated):
            return exc.end_process("engage runner")
        raise


if __name__ == "__main__":
    sys.exit(main())
