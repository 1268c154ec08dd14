"""The guard that ends an MLflow run whose process died without ending it (engage.core.tracking.run_guard);
``test_core_run.py`` kills a real ``engage run`` with SIGKILL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from mlflow.tracking import MlflowClient

from engage.core.testing.process import wait_ended
from engage.core.tracking.run_guard import RunGuard, main


def _run(uri: str) -> tuple[MlflowClient, str]:
    client = MlflowClient(uri)
    return client, client.create_run(client.create_experiment("guarded")).info.run_id


def test_a_guard_told_the_run_ended_touches_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, run_id = _run(uri)
    guard = RunGuard(uri, run_id)
    guard.start()
    process = guard._process
    assert guard.running
    guard.stop()
    assert process.returncode == 0 and not guard.running
    assert client.get_run(run_id).info.status == "RUNNING"  # left as its process left it


def test_a_run_whose_process_exits_without_ending_it_is_failed_and_one_it_ended_is_not(tmp_path):
    """The process exits at once, holding forked children that must not keep the guard's pipe open."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, abandoned = _run(uri)
    experiment = client.get_run(abandoned).info.experiment_id
    ended = client.create_run(experiment).info.run_id
    client.set_terminated(ended, status="FINISHED")
    said = client.create_run(experiment).info.run_id  # its cause recorded, its end lost with its process
    client.set_tag(said, "engage.error", "training diverged at step 3")
    script = textwrap.dedent(
        f"""
        import os, sys, time
        from engage.core.tracking.run_guard import RunGuard
        guards = [RunGuard({uri!r}, run_id) for run_id in ({abandoned!r}, {ended!r}, {said!r})]
        for guard in guards:
            guard.start()
        child = os.fork()
        if child == 0:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)  # the test reads this process's output to its end
            os.dup2(null, 2)
            time.sleep(30)
            os._exit(0)
        print(child, *(guard._process.pid for guard in guards), flush=True)
        os._exit(0)  # as a SIGKILL would: no Python handler runs
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    child, *pids = [int(pid) for pid in out.stdout.split()]
    try:
        for pid in pids:
            assert wait_ended(pid), f"guard {pid} still waits"
    finally:
        os.kill(child, 9)
    run = client.get_run(abandoned)
    assert run.info.status == "FAILED" and "ended without ending the run" in run.data.tags["engage.error"]
    assert client.get_run(ended).info.status == "FINISHED" and "engage.error" not in client.get_run(ended).data.tags
    run = client.get_run(said)
    assert run.info.status == "FAILED" and run.data.tags["engage.error"] == "training diverged at step 3"


def test_a_run_whose_end_fails_still_lets_its_guard_go(tmp_path):
    """The run's own line says its end failed: the guard does not say it was killed."""
    import pytest
    from omegaconf import OmegaConf

    from engage.core.tracking.mlflow_run import MLflowRun

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = OmegaConf.create({"logger": {"experiment": "guarded", "tags": {}, "run_name": "r", "system_metrics": False}})
    run = MLflowRun.open(cfg, uri)
    guard = run._guard._process

    def refused(*args, **kwargs):
        raise ConnectionError("store blinked as the run ended")

    run.logger.experiment.set_terminated = refused
    with pytest.raises(ConnectionError):
        run.close("FINISHED")
    assert guard.returncode == 0 and run._guard is None  # told, and gone
    assert MlflowClient(uri).get_run(run.run_id).info.status == "RUNNING"


def test_bad_arguments_are_one_line_and_exit_code_2(capsys):
    assert main(["only-a-run-id"]) == 2
    assert main(["run", "not-a-pid"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage: python -m engage.core.tracking.run_guard RUN_ID PID")
    assert os.environ.get("MLFLOW_TRACKING_URI") != "changed"  # the guard's environment is its own
