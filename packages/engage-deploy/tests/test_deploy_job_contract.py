"""The job contract: the one record a job's process reads about its sweep."""

from __future__ import annotations

import os
import re
import stat

import pytest

from engage.core.tracking.store import PARENT_RUN_ENV, PARENT_RUN_FILE_ENV, TRACKING_URI_ENV
from engage.deploy.job import (
    JOB_FILE_ENV,
    HostRecord,
    JobContract,
    JobContractError,
    TrackingContract,
    read_run_id,
    write_run_id,
)
from engage.deploy.options import LauncherOptions


def _contract(tmp_path, recorded: bool = True, **tracking) -> JobContract:
    return JobContract(
        index=2,
        attempt=3,
        overrides=("lr=0.1", "seed=1"),
        folder=str(tmp_path),
        host="edge-1",
        hosts=(HostRecord("edge-1", "edge", "10.0.0.3", ("ip", "netns", "exec", "edge-1"), False, ("simulator",)),),
        placement={"simulator#1": "edge-1"},
        tracking=TrackingContract(uri="http://10.0.0.1:5000", **tracking) if recorded else None,
    )


def test_written_once_readable_by_its_owner_only_and_read_back_whole(tmp_path) -> None:
    contract = _contract(tmp_path, parent_run_id="p", username="u", password="secret")
    path = contract.write(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert JobContract.read(tmp_path) == contract
    assert "secret" not in repr(contract.tracking), "a password must not reach logs through repr"
    (tmp_path / "job.json").write_text("{not json")
    with pytest.raises(JobContractError, match=r"job\.json: cannot read the job's contract"):
        JobContract.read(tmp_path)


def test_the_environment_a_job_sets_for_itself(tmp_path) -> None:
    env = _contract(tmp_path, parent_run_id="p", username="u", password="pw").environ()
    assert env[JOB_FILE_ENV] == str(tmp_path / "job.json")
    assert env[TRACKING_URI_ENV] == env["MLFLOW_TRACKING_URI"] == "http://10.0.0.1:5000"
    assert env["MLFLOW_EXPERIMENT_NAME"] == _contract(tmp_path).tracking.experiment
    assert env[PARENT_RUN_ENV] == "p" and PARENT_RUN_FILE_ENV not in env
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("u", "pw")
    # while the sweep's run is being created, the job waits for its id in a file
    waiting = _contract(tmp_path, parent_run_file=str(tmp_path / "parent-run-id")).environ()
    assert waiting[PARENT_RUN_ENV] == "" and waiting[PARENT_RUN_FILE_ENV] == str(tmp_path / "parent-run-id")
    assert "MLFLOW_TRACKING_USERNAME" not in waiting
    # a sweep that records nothing tells its jobs nothing about MLflow
    assert set(_contract(tmp_path, recorded=False).environ()) == {JOB_FILE_ENV}


def test_a_store_of_the_users_own_gets_their_credentials_through_the_contract(tmp_path, monkeypatch) -> None:
    # an authenticated MLflow server of the user's: Slurm and SSH jobs do not get the launcher's
    # environment's secrets (slurmctld keeps job environments), so the 0600 contract carries them
    from engage.deploy.experiment import ExperimentFolder
    from engage.deploy.options import MLflowOptions
    from engage.deploy.report import SweepReport
    from engage.deploy.sweep_tracking import SweepTracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ada")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw-7e1")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-93a")
    folder = ExperimentFolder.create(tmp_path / "sweep")
    sweep = SweepTracking(MLflowOptions(), folder, SweepReport(), provider_name="slurm", sweep_dir="sweep")
    with sweep.launcher_environment():
        sweep.tracking_uri = "https://mlflow.example.org"  # no server of the sweep's own
        contract = _contract(tmp_path, recorded=False)
        contract = JobContract(**{**contract.__dict__, "tracking": sweep.contract_for(folder.job_folder(0))})
    (tmp_path / "job").mkdir()
    path = contract.write(tmp_path / "job")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    env = JobContract.read(tmp_path / "job").environ()
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("ada", "pw-7e1")
    assert env["MLFLOW_TRACKING_TOKEN"] == "tok-93a"
    assert "tok-93a" not in repr(contract.tracking)
    with sweep.launcher_environment():
        sweep.tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a store that asks for no credentials
        local = sweep.contract_for(folder.job_folder(0))
    assert (local.username, local.password, local.token) == (None, None, None)


def test_the_current_job_and_its_run_id(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(JOB_FILE_ENV, raising=False)
    assert JobContract.current() is None and not write_run_id("abc")
    path = _contract(tmp_path).write(tmp_path)
    monkeypatch.setenv(JOB_FILE_ENV, str(path))
    assert JobContract.current().this_host().layer == "edge"
    assert write_run_id("abc") and read_run_id(tmp_path) == "abc"


def test_a_jobs_run_is_tagged_as_its_job_when_it_opens(tmp_path, monkeypatch) -> None:
    """Before the launcher records anything (it may be killed meanwhile), the run an ``engage
    run`` job opened says which job and attempt it is: a sweep counts it once, as that job."""
    from mlflow.tracking import MlflowClient

    from engage.core.events import RunRecord
    from engage.deploy.plugin import engage_run_started

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    monkeypatch.setenv(JOB_FILE_ENV, str(_contract(tmp_path).write(tmp_path)))
    engage_run_started(RunRecord(run_id=run_id, status="RUNNING", tracking_uri=uri, output_dir=str(tmp_path)))
    tags = client.get_run(run_id).data.tags
    assert (tags["engage.job"], tags["engage.attempt"]) == ("2", "3") and read_run_id(tmp_path) == run_id


#: a read of Slurm's job id variables by name
SLURM_JOB_READ = r"""["']SLURM_(ARRAY_)?JOB_ID["'] (not )?in os\.environ|environ(\.get\(|\[)["']SLURM_(ARRAY_)?JOB_ID"""


def test_no_environment_variable_of_the_sweep_is_read_outside_its_module() -> None:
    """Jobs learn about their sweep from the contract alone."""
    import engage.deploy as package

    root = os.path.dirname(package.__file__)
    readers = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py") and name != "job.py":
                text = open(os.path.join(folder, name)).read()
                if "ENGAGE_DEPLOY_" in text or "ENGAGE_JOB_FILE" in text:
                    readers.append(name)
                # Slurm's job variables are read by the module that names them
                if name != "requeue.py" and re.search(SLURM_JOB_READ, text):
                    readers.append(name)
    assert readers == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"paralelism": 2},
            "hydra.launcher.paralelism is not an option of the engage launcher; options are parallelism",
        ),
        ({"mlflow": {"sever": True}}, "hydra.launcher.mlflow.sever is not an option .* options are enabled, server"),
        ({"parallelism": -1}, "hydra.launcher.parallelism is -1; use 0"),
        ({"job_timeout_s": 0}, "hydra.launcher.job_timeout_s is 0; use a value > 0 or null"),
        ({"placement": "random"}, "hydra.launcher.placement is 'random'; use round_robin or optimize"),
    ],
)
def test_launcher_options_are_checked_in_one_place(params, message) -> None:
    with pytest.raises(ValueError, match=message):
        LauncherOptions.checked(params)


PROBE_APP = """
import hydra

@hydra.main(version_base=None, config_path=None)
def main(cfg) -> None:
    # the environment the job's process (or the fork server it came from) was started with
    names = {e.split(b"=", 1)[0] for e in open("/proc/self/environ", "rb").read().split(b"\\0")}
    print("INHERITED", sorted(n.decode() for n in names if n.startswith(b"MLFLOW_TRACKING_")))

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("fork_jobs", [True, False])
def test_jobs_do_not_inherit_the_launchers_mlflow_credentials(tmp_path, fork_jobs) -> None:
    """The sweep server's admin user reaches a job through its contract only: the processes the
    launcher starts (fork servers, jobs) are not given the launcher's own MLflow credentials."""
    import subprocess
    import sys

    (tmp_path / "app.py").write_text(PROBE_APP)
    argv = [sys.executable, "app.py", "-m", "hydra/launcher=engage", "hydra.sweep.dir=sweep", "+x=1"]
    argv += [
        "hydra.launcher.mlflow.auth=true",
        "hydra.launcher.mlflow.server=true",
        f"hydra.launcher.fork_jobs={fork_jobs}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    (log,) = (tmp_path / "sweep" / ".engage").glob("*/jobs/0/stdout.log")
    assert "INHERITED []" in log.read_text(), log.read_text()[-2000:]
