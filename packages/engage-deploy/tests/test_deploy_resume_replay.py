"""A sweep stopped by SIGTERM marks its running job KILLED and resumes where it stopped;
``engage replay`` re-runs a deterministic CPU job with identical metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

APP = Path(__file__).parent / "apps" / "deploy_app.py"
ENGAGE = str(Path(sys.executable).parent / "engage")


def sweep_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("engage")
    return client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.mark.slow
def test_killed_sweep_marks_killed_and_resumes(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        str(APP),
        "-m",
        "hydra/launcher=engage",
        "hydra.sweep.dir=sweep",
        "hydra.launcher.parallelism=1",
    ]
    argv += ["+x=1,2,3,4", "+sleep=2"]
    first = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            done = list((tmp_path / "sweep" / ".engage").glob("*/jobs/1/result.json"))
            started = list((tmp_path / "sweep" / ".engage").glob("*/jobs/2/stdout.log"))
            if done and started:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the first two jobs did not finish in time")
        time.sleep(0.5)
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 128 + signal.SIGTERM
    assert "marked KILLED" in out and "stopped by SIGTERM" in err and "Traceback" not in err
    (folder,) = (tmp_path / "sweep" / ".engage").glob("*")
    statuses = {i: json.loads((folder / "jobs" / str(i) / "result.json").read_text())["status"] for i in range(4)}
    assert statuses == {0: "COMPLETED", 1: "COMPLETED", 2: "KILLED", 3: "NOT_STARTED"}
    report = json.loads((folder / "sweep.json").read_text())["report"]
    assert (report["failed"], report["killed"]) == (0, 1), report  # stopped, not failed
    assert "job 2 failed" not in out, out[-2000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = sweep_runs(uri)
    assert not [r for r in runs if r.info.status == "RUNNING"], "a run was left RUNNING"
    by_job = {r.data.tags.get("engage.job"): r.info.status for r in runs if "engage.job" in r.data.tags}
    assert by_job == {"0": "FINISHED", "1": "FINISHED", "2": "KILLED"}
    (parent,) = [r for r in runs if "engage.job" not in r.data.tags]
    # the sweep's run: KILLED, with the counts of the jobs that ran (two finished, one stopped)
    counts = {"jobs": 3.0, "jobs_failed": 0.0, "jobs_stopped": 1.0, "jobs_running": 0.0}
    assert parent.info.status == "KILLED" and parent.data.metrics == counts, parent
    # the sweep's line, as at its end
    assert f"({parent.info.run_id}) KILLED: 3 jobs, 0 failed, 1 stopped" in out + err, (out + err)[-2000:]

    second = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    latest = sorted((tmp_path / "sweep" / ".engage").glob("*"))[-1]
    results = {i: json.loads((latest / "jobs" / str(i) / "result.json").read_text()) for i in range(4)}
    assert [bool(results[i].get("resumed_from")) for i in range(4)] == [True, True, False, False]
    assert all(r["status"] == "COMPLETED" for r in results.values())
    assert not (latest / "jobs" / "0" / "stdout.log").exists()  # not run again
    new_children = [r for r in sweep_runs(uri) if r.data.tags.get("engage.experiment_folder") == str(latest)]
    assert sorted(r.data.tags["engage.job"] for r in new_children) == ["2", "3"]
    hashes = {r.data.tags["engage.config_hash"] for r in new_children}
    assert hashes == {results[2]["config_hash"], results[3]["config_hash"]}
    # the sweep is still one run, continued: the second launch's jobs are its children too
    (again,) = [r for r in sweep_runs(uri) if "engage.job" not in r.data.tags]
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert again.data.tags["engage.launches"] == "2"
    assert {r.data.tags["mlflow.parentRunId"] for r in new_children} == {parent.info.run_id}


@pytest.mark.slow
def test_replay_reproduces_a_deterministic_cpu_job(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    # offline data: a fixed set of simulations, so training is deterministic on CPU
    overrides = [
        "data=simulated",
        "data.train_simulations=6",
        "data.val_simulations=2",
        "simulator.grid=16",
        "simulator.steps=20",
        "model.width=8",
        "trainer.max_epochs=1",
        "seed=3",
        "hydra.sweep.dir=sweep",
    ]
    proc = subprocess.run(
        [ENGAGE, "run", "-m", "hydra/launcher=engage", *overrides],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (job,) = [r for r in sweep_runs(uri) if "engage.job" in r.data.tags]
    assert job.data.tags["engage.config_hash"] and job.data.tags["mlflow.parentRunId"]
    assert "val/loss" in job.data.metrics
    replay = subprocess.run(
        [ENGAGE, "replay", job.info.run_id, "--tracking-uri", uri, "--output-dir", str(tmp_path / "replay")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr[-3000:]
    assert "metrics identical" in replay.stdout
    (copy,) = [r for r in sweep_runs(uri) if r.data.tags.get("engage.replay_of") == job.info.run_id]
    assert copy.data.metrics["val/loss"] == job.data.metrics["val/loss"]


def test_a_job_resumes_only_as_the_job_of_its_number(tmp_path: Path) -> None:
    """A batched sweeper (Optuna) numbers its jobs on from batch to batch: a later trial asking for
    an earlier trial's config is a new job, run again, not the earlier one's result."""
    from omegaconf import OmegaConf

    from engage.deploy.experiment import ExperimentFolder

    config = OmegaConf.create({"lr": 0.001})
    earlier = ExperimentFolder.create(tmp_path)
    job = earlier.add_job(0, ["lr=0.001"], config, task="app:main")
    earlier.write_result(0, {"status": "COMPLETED", "config_hash": job.config_hash})
    (job.folder / "result.pkl").write_bytes(b"")
    later = ExperimentFolder.create(tmp_path)
    done = later.completed()
    again = later.add_job(0, ["lr=0.001"], config, task="app:main")  # the sweep launched again
    repeat = later.add_job(3, ["lr=0.001"], config, task="app:main")  # trial 3 asks for trial 0's config
    assert done.get((again.index, again.config_hash)) == job.folder
    assert (repeat.index, repeat.config_hash) not in done


def test_a_resumed_sweep_continues_its_parent_run(tmp_path: Path, monkeypatch, capsys) -> None:
    """``engage run -m hydra/launcher=engage`` launched again into its sweep directory: the sweep
    stays one MLflow run, and a job that failed in the first launch and completed in the second
    counts once, as completed (its failed attempt keeps its run)."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from engage.core.tracking.store import PARENT_RUN_ENV, TRACKING_URI_ENV
    from engage.core.tracking.sweep import MLflowSweepCallback
    from engage.deploy.experiment import ExperimentFolder

    monkeypatch.chdir(tmp_path)
    for name in (PARENT_RUN_ENV, TRACKING_URI_ENV):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def config(resume: bool = True, task: str = "x=1,2"):
        launcher = {"_target_": "hydra_plugins.engage_launcher.engage_launcher.EngageLauncher", "resume": resume}
        hydra = {"launcher": launcher, "sweep": {"dir": "sweep"}, "overrides": {"task": [task]}}
        return OmegaConf.create({"hydra": hydra, "logger": {"uri": uri, "experiment": "sweeps"}})

    def launch(statuses: dict[int, str], cfg=None):
        callback = MLflowSweepCallback()
        callback.on_multirun_start(cfg or config())
        # what the launcher does with the sweep's run: its launch folder records it
        ExperimentFolder.create(tmp_path / "sweep").parent_run_file.write_text(callback.run_id)
        time.sleep(0.01)  # the next launch's folder is written later
        client = MlflowClient(uri)
        experiment = client.get_run(callback.run_id).info.experiment_id
        for job, status in statuses.items():
            tags = {"mlflow.parentRunId": callback.run_id, "engage.job": str(job)}
            client.set_terminated(client.create_run(experiment, tags=tags).info.run_id, status)
            time.sleep(0.01)  # each attempt starts after the one before
            result = JobReturn(status=JobStatus.COMPLETED if status == "FINISHED" else JobStatus.FAILED)
            result._return_value = 0.0 if status == "FINISHED" else RuntimeError("job failed")
            callback.on_job_end(None, result)
        try:
            callback.on_multirun_end(None)
        except SystemExit as exc:
            return callback.run_id, exc.code
        return callback.run_id, 0

    first, code = launch({0: "FINISHED", 1: "FAILED"})
    assert code == 1 and MlflowClient(uri).get_run(first).info.status == "FAILED"
    MlflowClient(uri).set_tag(first, "engage.error", "job 1 failed")  # the first launch's cause
    second, code = launch({1: "FINISHED"})  # job 0 was taken from the first launch
    assert second == first and code == 0
    parent = MlflowClient(uri).get_run(first)
    assert parent.info.status == "FINISHED" and parent.data.tags["engage.launches"] == "2"
    assert "engage.error" not in parent.data.tags  # the sweep finished: no cause of an earlier end
    assert (parent.data.metrics["jobs"], parent.data.metrics["jobs_failed"]) == (2, 0)
    assert f"({first}) FINISHED: 2 jobs, 0 failed" in capsys.readouterr().err
    # another sweep into the same folder (other values), or a launch that does not resume: a new run
    other, _ = launch({0: "FINISHED"}, config(task="x=3,4"))
    assert other != first
    fresh, _ = launch({0: "FINISHED"}, config(resume=False))
    assert fresh not in (first, other)


def test_another_sweep_into_the_same_folder_opens_a_run_of_its_own(tmp_path: Path) -> None:
    """A plain Hydra app on the engage launcher: the same sweep launched again continues its run;
    other values swept into the same folder are another sweep, with a run of its own."""
    base = [sys.executable, str(APP), "-m", "hydra/launcher=engage", "hydra.sweep.dir=sweep"]
    for values in ("+x=1", "+x=1", "+x=2"):
        done = subprocess.run([*base, values], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
    parents = [
        r for r in sweep_runs(f"sqlite:///{tmp_path / 'mlflow.db'}") if r.data.tags.get("engage.kind") == "sweep"
    ]
    launches = sorted((r.data.params["sweep_overrides"], r.data.tags.get("engage.launches", "1")) for r in parents)
    assert launches == [("+x=1", "2"), ("+x=2", "1")], launches
