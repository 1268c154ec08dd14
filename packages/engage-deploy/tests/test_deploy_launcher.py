"""The engage launcher on the local provider: experiment folder, failures, retries, fail fast,
one-line errors for bad infrastructure, shipped infrastructure configs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

APP = Path(__file__).parent / "apps" / "deploy_app.py"
NO_MLFLOW = ["hydra.launcher.mlflow.enabled=false"]


def run_app(cwd: Path, *overrides: str, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(APP), "-m", "hydra/launcher=engage", "hydra.sweep.dir=sweep", *overrides]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def experiment_folders(cwd: Path) -> list[Path]:
    return sorted((cwd / "sweep" / ".engage").glob("*"))


def results(folder: Path) -> dict[int, dict]:
    return {int(p.parent.name): json.loads(p.read_text()) for p in folder.glob("jobs/*/result.json")}


def test_failed_job_is_reported_and_does_not_abort_the_sweep(tmp_path: Path) -> None:
    proc = run_app(
        tmp_path,
        *NO_MLFLOW,
        "hydra.launcher.parallelism=2",
        "hydra.launcher.monitor_interval_s=0.2",
        "+x=1,2,3",
        "+fail_on=2",
        "+sleep=0.5",
    )
    # Hydra reports the failed job once every job of the batch ran
    assert proc.returncode != 0
    assert "boom at x=2" in proc.stderr
    (folder,) = experiment_folders(tmp_path)
    assert (folder / "infrastructure.yaml").is_file()
    deployed = yaml.safe_load((folder / "infrastructure.yaml").read_text())
    assert deployed["deployed"]["hosts"][0]["name"] == "local-1"
    with (folder / "hosts" / "local-1" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 2 and max(float(r["jobs"]) for r in rows) >= 1
    for index in range(3):
        job = folder / "jobs" / str(index)
        for name in ("stdout.log", "stderr.log", "config.yaml", "overrides.yaml", "result.json"):
            assert (job / name).is_file(), f"{job / name} missing"
    res = results(folder)
    assert [res[i]["status"] for i in range(3)] == ["COMPLETED", "FAILED", "COMPLETED"]
    assert res[0]["return_value"] == "2" and res[2]["return_value"] == "6"
    assert "boom at x=2" in res[1]["error"]
    assert "ValueError: boom at x=2" in (folder / "jobs" / "1" / "stderr.log").read_text()
    assert "job x=3" in (folder / "jobs" / "2" / "stdout.log").read_text()
    assert yaml.safe_load((folder / "jobs" / "1" / "overrides.yaml").read_text()) == [
        "+x=2",
        "+fail_on=2",
        "+sleep=0.5",
    ]
    assert yaml.safe_load((folder / "jobs" / "1" / "config.yaml").read_text()) == {"x": 2, "fail_on": 2, "sleep": 0.5}


def test_a_job_whose_process_fails_after_its_task_returned_is_failed(tmp_path: Path) -> None:
    """As when another rank of a multi-node job fails: the task's result is there, the exit code
    says the job did not end well, and the job is reported failed, never completed."""
    proc = run_app(tmp_path, *NO_MLFLOW, "hydra.launcher.fork_jobs=false", "+x=1,2", "+exit_after_return_on=2")
    assert proc.returncode != 0, proc.stderr[-2000:]
    (folder,) = experiment_folders(tmp_path)
    res = results(folder)
    assert [res[i]["status"] for i in range(2)] == ["COMPLETED", "FAILED"], res
    assert res[1]["exit_code"] == 5 and "then its process exited with code 5" in res[1]["error"], res[1]


@pytest.mark.slow
def test_engage_run_ends_a_sweep_whose_job_process_died_with_one_line_and_exit_code_4(tmp_path: Path) -> None:
    """A job's process that ends without its task's own line (killed, or dead in a callback):
    ``engage run`` names the job, its host, its exit code and its log in one line, not a traceback."""
    from engage.core.testing.process import run_engage

    proc = run_engage(
        "run", "-m", "hydra/launcher=engage", "hydra.sweep.dir=sweep",
        "+callbacks.die={_target_: os._exit, _args_: [3]}", "simulator.grid=8", "simulator.steps=10",
        "data.simulations=2", "data.val_simulations=1", "trainer.max_epochs=1", cwd=tmp_path, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("engage run: job #0 failed on local-1: job process exited with code 3; see "), last
    assert last.endswith("jobs/0/stderr.log")


def test_a_job_killed_by_a_signal_no_one_here_sent_is_a_failure_that_retries_cover(tmp_path: Path) -> None:
    """SIGKILL from the kernel's out-of-memory killer is no interrupt of the sweep: the attempt
    failed, named so, and is retried; only jobs the launcher stopped are KILLED."""
    marker = tmp_path / "killed-once"
    proc = run_app(tmp_path, *NO_MLFLOW, "hydra.launcher.retries=1", "+x=1", f"+sigkill_marker={marker}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "job process was killed by SIGKILL (out of memory at the host's limit" in proc.stdout + proc.stderr
    (folder,) = experiment_folders(tmp_path)
    assert results(folder)[0]["status"] == "COMPLETED" and results(folder)[0]["attempt"] == 2
    assert json.loads((folder / "sweep.json").read_text())["report"]["retried"] == 1


def test_retries_and_fail_fast(tmp_path: Path) -> None:
    marker = tmp_path / "flaky"
    proc = run_app(tmp_path, *NO_MLFLOW, "hydra.launcher.retries=1", "+x=1,2", f"+flaky_marker={marker}")
    assert proc.returncode == 0, proc.stderr
    res = results(experiment_folders(tmp_path)[-1])
    assert [r["status"] for r in res.values()] == ["COMPLETED", "COMPLETED"]
    assert {r["attempt"] for r in res.values()} == {2}

    proc = run_app(
        tmp_path,
        *NO_MLFLOW,
        "hydra.launcher.fail_fast=true",
        "hydra.launcher.parallelism=1",
        "+x=1,2,3",
        "+fail_on=1",
        "hydra.sweep.dir=sweep_ff",
    )
    assert proc.returncode != 0
    (folder,) = sorted((tmp_path / "sweep_ff" / ".engage").glob("*"))
    res = results(folder)
    assert [res[i]["status"] for i in range(3)] == ["FAILED", "SKIPPED", "SKIPPED"]
    assert not (folder / "jobs" / "1" / "stdout.log").exists()
    # the console says so too: never "FAILED" for a job that did not run
    assert "job #1 SKIPPED" in proc.stdout and "job #2 SKIPPED" in proc.stdout, proc.stdout[-2000:]
    assert "(3 of 3 ended, 1 failed)" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hydra.launcher.infrastructure.provider=docker", "unknown provider 'docker'; known providers: chameleon, g5k"),
        (
            "hydra.launcher.infrastructure.layers=[{name:edge,hosts:0}]",
            "infrastructure.layers[0].hosts is 0 (layer 'edge')",
        ),
        ("hydra.launcher.layer=fog", "hydra.launcher.layer: no layer named 'fog'; layers are local"),
        (
            "hydra.launcher.infrastructure.network=[{src:edge,dst:cloud}]",
            "infrastructure.network[0].src: no layer named 'edge'; layers are local",
        ),
    ],
)
def test_bad_infrastructure_fails_with_one_line_before_anything_starts(tmp_path: Path, override, message) -> None:
    proc = run_app(tmp_path, override, "+x=1,2")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"engage launcher: {lines[0].removeprefix('engage launcher: ')}"] and message in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "sweep" / ".engage").exists()


def test_a_refused_command_line_ends_before_mlflow_is_imported(tmp_path: Path) -> None:
    """The launcher starts importing MLflow (over a second) in its ``setup``, once its options
    are checked: a refused command line ends with its one line before any of it is imported."""
    cmd = [sys.executable, "-X", "importtime", str(APP), "-m", "hydra/launcher=engage", "hydra.launcher.layer=fog"]
    proc = subprocess.run([*cmd, "+x=1,2"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    said = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("import time:")]
    assert proc.returncode == 2 and said == [
        "engage launcher: hydra.launcher.layer: no layer named 'fog'; layers are local"
    ]
    assert "engage.deploy.infrastructure" in imported  # the options were checked
    assert not [name for name in imported if name.split(".")[0] == "mlflow"]


def test_an_experiment_whose_artifacts_are_behind_a_server_is_refused_before_anything(tmp_path: Path) -> None:
    """An experiment that an MLflow server created with ``--serve-artifacts`` keeps its artifacts
    as ``mlflow-artifacts:`` URIs, which only that server resolves: a sweep writing to the store
    itself is refused before it starts, and told what to set."""
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(store).create_experiment("engage", artifact_location="mlflow-artifacts:/1")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_app(tmp_path, "+x=1")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert lines == [
        f"engage launcher: hydra.launcher.mlflow.experiment: experiment 'engage' of {store} keeps its artifacts "
        "behind an MLflow server (mlflow-artifacts:/1); set hydra.launcher.mlflow.tracking_uri to that server's "
        "http(s) address, or hydra.launcher.mlflow.experiment to another name"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert [r.info.run_id for r in MlflowClient(store).search_runs(["1"])] == []
    # another experiment of the same store is used as usual
    assert run_app(tmp_path, "+x=1", "hydra.launcher.mlflow.experiment=mine").returncode == 0


def test_shipped_infrastructure_config_selects_layers(tmp_path: Path) -> None:
    proc = run_app(
        tmp_path,
        *NO_MLFLOW,
        "+infrastructure=local_edge_cloud",
        "hydra.launcher.layer=edge",
        "+x=1,2",
        "hydra.launcher.parallelism=2",
    )
    assert proc.returncode == 0, proc.stderr
    folder = experiment_folders(tmp_path)[-1]
    hosts = {r["host"] for r in results(folder).values()}
    # the edge layer's hosts (a job that ends before the other starts may leave edge-2 unused)
    assert hosts and hosts <= {"edge-1", "edge-2"}, hosts
    assert {p.name for p in (folder / "hosts").iterdir()} == {"cloud-1", "edge-1", "edge-2"}


OPTIMIZED = """# @package hydra.launcher.infrastructure
provider: local
layers:
  - {name: edge, hosts: 2, cpu: 0.5, services: [{name: simulator, quantity: 2, cpu: 0.5, traffic: {trainer: 8}}]}
  - {name: fog, hosts: 1, cpu: 2, services: [{name: trainer, cpu: 1}]}
  - {name: cloud, hosts: 1, cpu: 1}
network:
  - {src: edge, dst: fog, rate: 10mbit, delay: 20ms}
  - {src: edge, dst: cloud, rate: 10mbit, delay: 40ms}
  - {src: fog, dst: cloud, rate: 1gbit, delay: 5ms}
"""


def test_optimized_placement_puts_jobs_and_simulations_where_the_plan_says(tmp_path: Path) -> None:
    conf = tmp_path / "conf" / "infrastructure"
    conf.mkdir(parents=True)
    (conf / "optimized.yaml").write_text(OPTIMIZED)
    search = f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    proc = run_app(
        tmp_path, *NO_MLFLOW, search, "+infrastructure=optimized", "hydra.launcher.placement=optimize", "+x=1"
    )
    assert proc.returncode == 0, proc.stderr
    folder = experiment_folders(tmp_path)[-1]
    plan = json.loads((folder / "placement.json").read_text())
    # the fog host has room for the trainer and both simulators: no traffic over the slow links
    assert plan["assignment"] == {"simulator#1": "fog-1", "simulator#2": "fog-1", "trainer#1": "fog-1"}
    assert [r["host"] for r in results(folder).values()] == ["fog-1"]  # round robin would take edge-1
    assert json.dumps(plan["assignment"]) in (folder / "jobs" / "0" / "stdout.log").read_text()
    # a plan that cannot fit is refused before anything starts, in one line
    cramped = OPTIMIZED.replace("cpu: 2, services", "cpu: 0.5, services").replace(
        "hosts: 1, cpu: 1}", "hosts: 1, cpu: 0.5}"
    )
    (conf / "optimized.yaml").write_text(cramped)  # the trainer (1 CPU) fits no host
    bad = run_app(tmp_path, search, "+infrastructure=optimized", "hydra.launcher.placement=optimize", "+x=1")
    assert bad.returncode == 2
    assert "engage launcher: hydra.launcher.placement=optimize: no placement fits" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_engage_run_and_the_launcher_share_one_services_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """``engage run`` checks the launcher before the sweep exists, and the launcher checks again
    in ``setup``: the services are placed once, and both get that plan."""
    from hydra_plugins.engage_launcher import engage_launcher
    from omegaconf import OmegaConf

    from engage.deploy.placement import workflow

    solved = []
    solve = workflow.solve_workflow
    monkeypatch.setattr(
        workflow, "solve_workflow", lambda infra, problem: solved.append(infra) or solve(infra, problem)
    )
    monkeypatch.setattr(engage_launcher, "_PLANS", {})
    launcher = {"placement": "optimize", "infrastructure": yaml.safe_load(OPTIMIZED)}
    config = OmegaConf.create({"hydra": {"launcher": launcher}})
    engage_launcher.EngageLauncher.preflight(config)
    _, _, plan = engage_launcher.EngageLauncher.check(config)
    assert len(solved) == 1
    assert plan.assignment == {"simulator#1": "fog-1", "simulator#2": "fog-1", "trainer#1": "fog-1"}
    # another infrastructure is another problem
    wider = {**launcher["infrastructure"], "options": {"note": "another"}}
    other = OmegaConf.create({"hydra": {"launcher": {**launcher, "infrastructure": wider}}})
    engage_launcher.EngageLauncher.check(other)
    assert len(solved) == 2


def test_an_infrastructure_without_the_engage_launcher_says_which_launcher_takes_it() -> None:
    from engage.core.config.validate import ConfigError, compose_config

    with pytest.raises(ConfigError) as refused:
        compose_config(["+infrastructure=local"])
    assert str(refused.value) == (
        "hydra.launcher.infrastructure: the chosen launcher has no such option; it is an option of "
        "hydra/launcher=engage"
    )
