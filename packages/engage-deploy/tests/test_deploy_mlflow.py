"""Every job a child MLflow run of its sweep, through the sweep's own ``mlflow server``, and the
records of jobs that ran while that server was down uploaded once it is back."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from engage.deploy import tracking

APP = Path(__file__).parent / "apps" / "deploy_app.py"


def start_app(cwd: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, str(APP), "-m", "hydra/launcher=engage", "hydra.sweep.dir=sweep", *overrides]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def children(uri: str) -> tuple[object, list]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("engage")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("engage.kind") == "sweep"]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, sorted(kids, key=lambda r: int(r.data.tags["engage.job"]))


@pytest.mark.slow
def test_each_job_is_a_child_run_with_its_record(tmp_path: Path) -> None:
    proc = start_app(
        tmp_path,
        "hydra.launcher.parallelism=2",
        "hydra.launcher.monitor_interval_s=0.2",
        "+x=1,2,3",
        "+sleep=0.6",
        "+fail_on=3",
    )
    out, err = proc.communicate(timeout=240)
    assert proc.returncode != 0 and "boom at x=3" in err
    # the job's own traceback, down to the line of the task that raised, though it ran elsewhere
    assert 'deploy_app.py", line' in err and 'raise ValueError(f"boom at x={x}")' in err
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent, kids = children(uri)
    assert parent.info.status == "FAILED"
    # one line naming the sweep's run, not MLflow's two links per ended run
    assert f"MLflow run {parent.info.run_id} in {uri}" in out + err and "View run" not in out + err
    folder = next((tmp_path / "sweep" / ".engage").glob("*"))
    assert (folder / "mlflow-server.json").is_file()  # parallel jobs: the sweep ran its own server
    assert [r.data.params["overrides"] for r in kids] == [f"+x={x} +sleep=0.6 +fail_on=3" for x in (1, 2, 3)]
    assert [r.info.status for r in kids] == ["FINISHED", "FINISHED", "FAILED"]
    client = MlflowClient(uri)
    for run in kids:
        assert len(run.data.tags["engage.config_hash"]) == 64
        assert run.data.tags["engage.host"] == "local-1"
        history = client.get_metric_history(run.info.run_id, "system/rss_mib")
        assert len(history) >= 2 and all(m.value > 1 for m in history)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "engage")}
        assert {"engage/stdout.log", "engage/stderr.log", "engage/config.yaml", "engage/overrides.yaml"} <= artifacts
        assert not [a for a in artifacts if a.endswith(".pkl")]  # the launcher's own pickles stay in the folder
        assert {a.path for a in client.list_artifacts(run.info.run_id, "engage/infrastructure")} == {
            "engage/infrastructure/infrastructure.yaml"
        }
    result = json.loads((folder / "jobs" / "0" / "result.json").read_text())
    assert result["mlflow_run_id"] == kids[0].info.run_id
    # the sweep's own run holds what it ran on (no placement or serving plan was made)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} == {"sweep/infrastructure.yaml"}


@pytest.mark.slow
def test_jobs_start_while_the_server_starts_and_log_through_it(tmp_path: Path) -> None:
    proc = start_app(tmp_path, "hydra.launcher.parallelism=2", "+x=1,2", "+log_run=true")
    _out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    folder = next((tmp_path / "sweep" / ".engage").glob("*"))
    # written once the server answered and the parent run existed
    server_ready = (folder / "mlflow-server.json").stat().st_mtime
    results = [json.loads((folder / "jobs" / str(i) / "result.json").read_text()) for i in (0, 1)]
    assert all(r["started"] < server_ready for r in results), "jobs waited for MLflow to open"
    assert not any(r["offline"] for r in results), "a starting server is not a dead one"
    parent, kids = children(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert (folder / "parent-run-id").read_text() == parent.info.run_id
    # each job's own run, found and completed by the launcher: no second run per job
    assert len(kids) == 2
    assert sorted(r.data.metrics["x"] for r in kids) == [1.0, 2.0]
    assert all(r.info.status == "FINISHED" for r in kids)


def test_a_record_written_again_replaces_what_reached_the_server_before_it_died(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("engage")
    parent = client.create_run(experiment).info.run_id

    def record(index: int, run_id: str | None = None, attempt: int = 1, status: str = "FINISHED") -> tracking.JobRecord:
        return tracking.JobRecord(
            index=index, run_name=f"job-{index}", status=status, start_time=time.time() - 1, end_time=time.time(),
            host="local-1", overrides=[f"+x={index}"], config_hash="h", output_dir=str(tmp_path / f"out-{index}"),
            run_id=run_id, attempt=attempt,
        )  # fmt: skip

    # job 0 made no run: the launcher creates one (as far as it got before the server died)
    made = tracking.record_job(uri, experiment, parent, record(0))
    # job 1 made its own run and said which, so the launcher only adds to it: never the launcher's to delete
    own = client.create_run(
        experiment, tags={tracking.PARENT_TAG: parent, tracking.OUTPUT_DIR_TAG: str(tmp_path / "out-1")}
    ).info.run_id
    assert tracking.record_job(uri, experiment, parent, record(1, run_id=own)) == own
    assert client.get_run(made).data.tags[tracking.RECORD_RUN_TAG] == "true"
    # job 2 failed once and was retried by the launcher: each attempt is a run of its own
    failed = tracking.record_job(uri, experiment, parent, record(2, status="FAILED"))
    second = tracking.record_job(uri, experiment, parent, record(2, attempt=2))
    assert client.get_run(failed).info.lifecycle_stage == "active", "a retried job lost its failed attempt's run"
    assert client.get_run(second).data.params[tracking.ATTEMPT_TAG] == "2"

    # the server died after creating job 0's run, before its reply: MLflow's client retried
    retried = tracking.record_job(uri, experiment, parent, record(0))
    assert client.get_run(made).info.lifecycle_stage == "deleted", "the first request's run is left beside the retry's"
    assert client.get_run(retried).info.status == "FINISHED"
    # a record kept offline replaces what reached the server, attempt by attempt
    assert tracking.delete_record_runs(uri, experiment, parent, 0, 1, str(tmp_path / "out-0")) == 1
    assert tracking.delete_record_runs(uri, experiment, parent, 1, 1, str(tmp_path / "out-1")) == 0
    assert tracking.delete_record_runs(uri, experiment, parent, 2, 2, str(tmp_path / "out-2")) == 1
    assert tracking.delete_record_runs(uri, experiment, None, 2, 1, None) == 0  # no way to tell whose job it is
    left = client.search_runs([experiment], filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent}'")
    assert sorted(r.info.run_id for r in left) == sorted([own, failed])


@pytest.mark.slow
def test_server_killed_mid_sweep_loses_no_job(tmp_path: Path) -> None:
    proc = start_app(
        tmp_path, "hydra.launcher.mlflow.server=true", "hydra.launcher.parallelism=1", "+x=1,2,3,4", "+sleep=1.5"
    )
    try:
        deadline = time.monotonic() + 120
        state = None
        while time.monotonic() < deadline:
            files = list((tmp_path / "sweep" / ".engage").glob("*/mlflow-server.json"))
            if files and list(files[0].parent.glob("jobs/0/result.json")):
                state = json.loads(files[0].read_text())
                break
            time.sleep(0.1)
        assert state is not None, "the sweep never started its MLflow server"
        os.killpg(state["pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "MLflow server died 1 time(s) and was restarted" in out + err
    _, kids = children(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sorted(int(r.data.tags["engage.job"]) for r in kids) == [0, 1, 2, 3]
    assert all(r.info.status == "FINISHED" for r in kids)


def test_a_record_kept_offline_for_the_jobs_own_run_is_added_to_that_run_when_uploaded(tmp_path: Path) -> None:
    """The job opened its run through the sweep's server, which then died before the launcher's
    record of the job reached it: the record waits in the job's offline store and is added to the
    job's run by id on upload, not made a second run of the job."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("engage")
    parent = client.create_run(experiment).info.run_id
    own = client.create_run(experiment, tags={tracking.PARENT_TAG: parent}, run_name="job-own").info.run_id
    client.log_param(own, "lr", "0.1")
    client.set_terminated(own, "FINISHED")
    job_folder = tmp_path / "jobs" / "0"
    job_folder.mkdir(parents=True)
    (job_folder / "stdout.log").write_text("trained\n")
    now = time.time()
    record = tracking.JobRecord(
        index=0, run_name="job-0", status="FINISHED", start_time=now - 2, end_time=now, host="local-1",
        overrides=["+lr=0.1"], config_hash="h", output_dir=str(job_folder), run_id=own,
        artifacts={"engage": str(job_folder)},
        system=[{"time": now - 1, "cpu_percent": 50.0, "rss_mib": 100.0, "host_cpu_percent": 60.0,
                 "host_memory_percent": 30.0}],
    )  # fmt: skip
    offline = f"sqlite:///{job_folder / 'offline' / 'mlflow.db'}"
    (job_folder / "offline").mkdir()
    offline_experiment = tracking.offline_experiment(offline, "engage", job_folder / "offline" / "artifacts")
    kept = tracking.record_offline(offline, offline_experiment, parent, record)
    assert kept != own

    assert tracking.upload_store(offline, uri, experiment) == [own]
    runs = client.search_runs([experiment], max_results=100)
    assert sorted(r.info.run_id for r in runs) == sorted([parent, own]), "the record became a second run of the job"
    run = client.get_run(own)
    assert run.info.run_name == "job-own" and run.info.status == "FINISHED"
    assert run.data.tags["engage.job"] == "0" and tracking.RECORD_RUN_TAG not in run.data.tags
    assert run.data.params["lr"] == "0.1" and run.data.params["overrides"] == "+lr=0.1"
    assert run.data.metrics["system/rss_mib"] == 100.0 and run.data.metrics["job/duration_s"] == pytest.approx(2.0)
    assert {a.path for a in client.list_artifacts(own, "engage")} == {"engage/stdout.log"}


def test_records_kept_offline_are_uploaded_once_and_noted_in_the_jobs_results(tmp_path: Path) -> None:
    """The sweep's store did not answer as two attempts of a job ended: both records wait in the
    job's offline store, the job's result.json names it, and the upload makes one run of each
    attempt in the store, replacing what of the first had reached it."""
    from engage.deploy.experiment import ExperimentFolder
    from engage.deploy.offline_records import OfflineRecords
    from engage.deploy.report import SweepReport

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("engage")
    parent = client.create_run(experiment).info.run_id
    folder = ExperimentFolder.create(tmp_path / "sweep")
    folder.job_folder(0).mkdir(parents=True)
    report = SweepReport()
    records = OfflineRecords(folder, report, experiment="engage")
    now = time.time()
    for attempt, status in ((1, "FAILED"), (2, "FINISHED")):
        record = tracking.JobRecord(
            index=0, run_name="job-0", status=status, start_time=now - 1, end_time=now, host="local-1",
            overrides=["+x=1"], config_hash="h", output_dir=str(folder.job_folder(0)), attempt=attempt,
        )  # fmt: skip
        if attempt == 1:  # part of the first record reached the store before it stopped answering
            tracking.record_job(uri, experiment, parent, record)
        records.keep(0, record, parent)
    assert report.offline_jobs == [0]
    assert folder.read_result(0)["offline_store"].endswith("/jobs/0/offline/mlflow.db")

    records.upload(uri, experiment, parent)
    runs = client.search_runs([experiment], filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent}'")
    assert sorted((r.data.tags["engage.attempt"], r.info.status) for r in runs) == [("1", "FAILED"), ("2", "FINISHED")]
    assert sorted(folder.read_result(0)["uploaded_run_ids"]) == sorted(r.info.run_id for r in runs)
    assert report.uploaded_runs == 2


@pytest.mark.slow
def test_a_kept_server_serves_the_next_sweep(tmp_path: Path) -> None:
    keep = ("hydra.launcher.mlflow.server=true", "hydra.launcher.mlflow.keep_server=true", "+x=1,2")
    state_file = tmp_path / "mlflow.db.engage-server.json"
    pids = []
    try:
        for sweep in ("first", "second"):
            proc = start_app(tmp_path, *keep, f"hydra.sweep.dir={sweep}")
            _out, err = proc.communicate(timeout=240)
            assert proc.returncode == 0, err
            folder = next((tmp_path / sweep / ".engage").glob("*"))
            pids.append(json.loads((folder / "mlflow-server.json").read_text())["pid"])
            # still running after the sweep, for the next one
            assert state_file.is_file() and psutil.pid_exists(json.loads(state_file.read_text())["pid"])
        assert pids[0] == pids[1], "the second sweep started a server of its own"
    finally:
        # every server either sweep started, the kept one and any the second sweep started itself
        if state_file.is_file():
            pids.append(json.loads(state_file.read_text())["pid"])
        for pid in set(pids):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("engage").experiment_id], max_results=100)
    parents = {r.info.run_id for r in runs if r.data.tags.get("engage.kind") == "sweep"}
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in parents]
    assert len(parents) == 2 and len(kids) == 4
    assert all(r.info.status == "FINISHED" for r in kids)


def test_an_experiment_created_between_lookup_and_creation_is_the_one_used(tmp_path: Path) -> None:
    # a job started with the sweep's server may create the experiment through it after the
    # launcher looked for it: the launcher's lookup (here a store that lacks it) misses it
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    made_by_job = MlflowClient(store).create_experiment("engage")
    lookup = f"sqlite:///{tmp_path / 'lookup.db'}"
    assert tracking.experiment_id_for(store, "engage", None, lookup_uri=lookup) == made_by_job
    assert tracking.experiment_id_for(store, "other", None, lookup_uri=lookup) != made_by_job


@pytest.mark.slow
def test_a_retried_job_keeps_a_run_per_attempt(tmp_path: Path) -> None:
    marker = tmp_path / "flaky"
    proc = start_app(tmp_path, "hydra.launcher.retries=1", "+x=1", f"+flaky_marker={marker}")
    _out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    _, kids = children(f"sqlite:///{tmp_path / 'mlflow.db'}")
    attempts = sorted((r.data.params[tracking.ATTEMPT_TAG], r.info.status) for r in kids)
    assert attempts == [("1", "FAILED"), ("2", "FINISHED")]
    assert all(r.data.tags[tracking.JOB_TAG] == "0" for r in kids)


def test_the_runs_of_interrupted_jobs_end_killed_even_where_the_stop_failed_them(tmp_path: Path) -> None:
    """A job stopped mid-fit may end its own run FAILED (short of its simulations) before the
    launcher marks it: the launcher stopped it, so KILLED; a job that finished stays FINISHED."""
    from mlflow.tracking import MlflowClient

    from engage.deploy.tracking import mark_killed

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    running, failed, finished = (client.create_run(experiment).info.run_id for _ in range(3))
    client.set_terminated(failed, status="FAILED")
    client.set_terminated(finished, status="FINISHED")
    assert mark_killed(uri, [running, failed, finished]) == 2
    assert [client.get_run(r).info.status for r in (running, failed, finished)] == ["KILLED", "KILLED", "FINISHED"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_plain_mlflow_apps_runs_are_its_jobs_runs_in_a_new_store_and_end_killed_when_stopped(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # a new store, parallel jobs: they start while the sweep's server starts, and their own
    # mlflow.start_run() must neither create the experiment (racing the launcher) nor run alone
    proc = start_app(tmp_path, "hydra.launcher.parallelism=3", "+x=1,2,3", "+fluent_run=true")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    experiment = MlflowClient(uri).get_experiment_by_name("engage")
    assert not experiment.artifact_location.startswith("mlflow-artifacts:")  # readable without a server
    parent, kids = children(uri)
    assert [r.info.run_name for r in kids] == ["x=1", "x=2", "x=3"]  # the app's runs, one a job
    assert [r.data.params["overrides"] for r in kids] == [f"+x={x} +fluent_run=True" for x in (1, 2, 3)]
    assert {r.data.params["engage.attempt"] for r in kids} == {"1"}
    assert not any(r.data.tags.get("engage.record_run") for r in kids)
    # stopped while the app's runs are open: they end KILLED, under the sweep, with no second run
    proc = start_app(
        tmp_path, "hydra.sweep.dir=stopped", "hydra.launcher.parallelism=2", "+x=4,5", "+fluent_run=true",
        "+fluent_sleep=120",
    )  # fmt: skip
    client = MlflowClient(uri)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
        if len([r for r in running if r.info.run_name in ("x=4", "x=5")]) == 2:
            break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("the jobs' runs did not start")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "marked KILLED" in out + err
    runs = client.search_runs([experiment.experiment_id], "tags.`engage.job` != ''", max_results=100)
    stopped = sorted((r.info.run_name, r.info.status) for r in runs if r.info.start_time > parent.info.end_time)
    assert stopped == [("x=4", "KILLED"), ("x=5", "KILLED")]
    # a sweep without the server (one job at a time) writes to the same store directly
    proc = start_app(tmp_path, "hydra.sweep.dir=one", "hydra.launcher.parallelism=1", "+x=6", "+fluent_run=true")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    # every run's artifacts are where any client of the store reads them, with no server
    (alone,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'x=6'")
    assert alone.info.status == "FINISHED" and alone.data.tags["mlflow.parentRunId"] != parent.info.run_id
    assert "engage" in {a.path for a in MlflowClient(uri).list_artifacts(alone.info.run_id)}


FAILING_DEPLOY_APP = """
import hydra
from engage.deploy.providers.local import LocalProvider

def deploy(self):
    raise RuntimeError("the hosts could not be deployed")

LocalProvider.deploy = deploy  # the launcher runs in this process

@hydra.main(version_base=None, config_path=None)
def main(cfg) -> None:
    pass

if __name__ == "__main__":
    main()
"""


def test_a_launch_that_fails_outside_its_jobs_ends_its_run_failed(tmp_path: Path) -> None:
    """A provider that fails to deploy ends the launch: its parent run is FAILED, saying why,
    never FINISHED nor left RUNNING (it may be created after the failure, in the background)."""
    (tmp_path / "app.py").write_text(FAILING_DEPLOY_APP)
    argv = [sys.executable, "app.py", "-m", "hydra/launcher=engage", "hydra.sweep.dir=sweep", "+x=1,2"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "the hosts could not be deployed" in done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("engage").experiment_id])
    assert run.info.status == "FAILED", run.info
    assert run.data.tags["engage.error"] == "RuntimeError: the hosts could not be deployed"
