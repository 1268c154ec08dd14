"""What the job runner restores of a task function that travelled by value, and how it ends when
its job is terminated."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import traceback
import types
from pathlib import Path

from engage.deploy import runner


def _task(cfg: object) -> None:
    def inner() -> None:
        raise ValueError("boom in inner")

    inner()


def _as_pickled_by_value(function: types.FunctionType) -> types.FunctionType:
    # what cloudpickle 3.1.3 and later rebuilds: the same code, its file named "<dynamic-code>"
    code = runner._with_filename(function.__code__, runner.DYNAMIC_CODE_FILE)
    return types.FunctionType(code, function.__globals__, function.__name__)


def _traceback_of(function: types.FunctionType) -> str:
    try:
        function(None)
    except ValueError as exc:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    raise AssertionError("the task did not raise")


def test_a_task_pickled_by_value_gets_its_file_back_down_to_nested_functions() -> None:
    task = _as_pickled_by_value(_task)
    assert 'File "<dynamic-code>"' in _traceback_of(task)
    runner.name_source_file(task, __file__)
    trace = _traceback_of(task)
    for function in ("_task", "inner"):
        assert re.search(rf'File "{re.escape(__file__)}", line \d+, in {function}\n', trace), trace
    assert 'raise ValueError("boom in inner")' in trace
    assert "<dynamic-code>" not in trace


def test_without_a_file_or_for_another_module_nothing_changes() -> None:
    task = _as_pickled_by_value(_task)
    runner.name_source_file(task, None)
    assert task.__code__.co_filename == runner.DYNAMIC_CODE_FILE
    traceback_module_function = traceback.format_exception  # defined elsewhere, keeps its file
    before = traceback_module_function.__code__.co_filename
    runner.name_source_file(task, __file__)
    assert traceback_module_function.__code__.co_filename == before


TERMINATED_JOB = """
import sys
from engage.core.run import Terminated
from engage.deploy import runner

def terminated(job_dir):
    raise Terminated(15)  # what engage run raises on a SIGTERM outside its fit

runner.run = terminated
sys.exit(runner.main([sys.argv[1]]))
"""


def test_a_terminated_job_says_so_in_one_line_and_ends_by_its_signal(tmp_path: Path) -> None:
    """scancel or a time limit while the job's engage run records its run: the job's log ends with
    one line, not a traceback, and the process ends by SIGTERM as the batch system expects."""
    for name in ("job.pkl", "job.json"):
        (tmp_path / name).write_bytes(b"")
    done = subprocess.run(
        [sys.executable, "-c", TERMINATED_JOB, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "engage runner: terminated (SIGTERM)", done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_sigterm_ends_a_jobs_fluent_runs_killed_and_leaves_a_handler_that_took_over_to_unwind(tmp_path: Path) -> None:
    """The runs the job's code opened (nested ones too) end KILLED, the outermost's id is left for
    the launcher; when another handler (Lightning's, during a fit) called this one, the process is
    left to that handler, which stops the fit at its next step."""
    import os

    import mlflow

    from engage.deploy.job import RUN_ID_FILE

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    saved = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        runner._end_the_jobs_run_when_stopped(tmp_path)
        ours = signal.getsignal(signal.SIGTERM)
        took_over = []
        signal.signal(signal.SIGTERM, lambda signum, frame: (took_over.append(signum), ours(signum, frame)))
        outer = mlflow.start_run(run_name="outer")
        inner = mlflow.start_run(run_name="inner", nested=True)
        os.kill(os.getpid(), signal.SIGTERM)  # this process lives on: the other handler decides
        assert took_over == [signal.SIGTERM] and mlflow.active_run() is None
        client = mlflow.tracking.MlflowClient()
        statuses = {client.get_run(r.info.run_id).info.status for r in (outer, inner)}
        assert statuses == {"KILLED"}
        assert (tmp_path / RUN_ID_FILE).read_text() == outer.info.run_id
    finally:
        signal.signal(signal.SIGTERM, saved)
        mlflow.set_tracking_uri(None)
