"""Sweeps on Slurm: ``hydra/launcher=engage +infrastructure=slurm`` submits each job of a sweep
as a Slurm batch job on the test cluster's ``nodes`` partition (network-namespace nodes), with
the sweep's MLflow server reached, and authenticated, from the compute nodes."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

APP = Path(__file__).parent / "apps" / "deploy_app.py"
SWEEP = ["-m", "hydra/launcher=engage", "hydra.sweep.dir=sweep", "+infrastructure=slurm"]
NODES = "hydra.launcher.infrastructure.options.partition=nodes"


def _env(cluster) -> dict[str, str]:
    return {k: v for k, v in cluster.env.items() if not k.startswith(("MLFLOW_", "ENGAGE_"))}


def _results(cwd: Path) -> dict[int, dict]:
    (folder,) = sorted((cwd / "sweep" / ".engage").glob("*"))
    return {int(p.parent.name): json.loads(p.read_text()) for p in folder.glob("jobs/*/result.json")}


def _queue(cluster, *options: str) -> list[list[str]]:
    out = subprocess.run(["squeue", "-h", *options], env=cluster.env, capture_output=True, text=True, check=True)
    return [line.split() for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture
def live_jobs(slurm_cluster):
    """The jobs this test submitted that are still in Slurm's queue, as ``"<id> <name> <state>"``.
    The cluster serves the whole session: a job of an earlier test may still be completing, so
    only ids above the highest one in the queue (finished jobs included) when the test starts
    count; Slurm numbers jobs in order."""
    last = max((int(job) for (job,) in _queue(slurm_cluster, "--states=all", "-o", "%F")), default=0)

    def jobs() -> list[str]:
        listed = _queue(slurm_cluster, "-o", "%F %i %j %T")
        return [" ".join(rest) for first, *rest in listed if int(first) > last and "engage-job-" in rest[1]]

    return jobs


def test_a_four_job_sweep_runs_as_slurm_jobs_with_its_mlflow_records(slurm_cluster, live_jobs, tmp_path):
    from mlflow.tracking import MlflowClient

    # a secret of the user's and a plain variable in the launcher's environment
    env = {**_env(slurm_cluster), "ENGAGE_TEST_API_TOKEN": "s3cret-4f1c", "ENGAGE_TEST_MARKER": "plain-9d2e"}
    # 2 slots: one job array of 4 tasks, 2 running at once; job x=4 fails once and is retried alone
    slots, flaky = "hydra.launcher.infrastructure.layers.0.hosts=2", f"+flaky_marker={tmp_path / 'flaky'}"
    done = subprocess.run(
        [sys.executable, str(APP), *SWEEP, NODES, "+x=1,2,3,4", "+log_run=true", slots, flaky, "+flaky_on=4",
         "hydra.launcher.retries=1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    results = _results(tmp_path)
    assert [results[i]["status"] for i in range(4)] == ["COMPLETED"] * 4, results
    assert [results[i]["return_value"] for i in range(4)] == ["2", "4", "6", "8"]
    assert [results[i]["attempt"] for i in range(4)] == [1, 1, 1, 2], results
    # Slurm placed them on the partition's nodes, not on this machine
    assert {results[i]["node"] for i in range(4)} <= {"node-1", "node-2", "node-3"}, results
    # tasks 0-2 of one array ran jobs 0-2 at their first attempt; job 3's retry was a job of its own
    ids = [results[i]["batch_job_id"] for i in range(4)]
    assert len({i.split("_")[0] for i in ids[:3]}) == 1 and [i.split("_")[1] for i in ids[:3]] == ["0", "1", "2"], ids
    assert "_" not in ids[3], ids
    first_of_3 = f"{ids[0].split('_')[0]}_3"
    shown = subprocess.run(
        ["scontrol", "show", "job", "-o", first_of_3], env=slurm_cluster.env, capture_output=True, text=True
    )
    assert "ArrayTaskThrottle=2" in shown.stdout and "JobState=COMPLETED" not in shown.stdout, (
        shown.stdout + shown.stderr
    )
    (folder,) = sorted((tmp_path / "sweep" / ".engage").glob("*"))
    # this machine's figures are not written under the nodes' names; the jobs' runs have their own
    assert (
        not list(folder.glob("hosts/*/metrics.csv")) and json.loads((folder / "jobs/0/system.json").read_text()) == []
    )
    contract = json.loads((folder / "jobs" / "0" / "job.json").read_text())
    tracking = contract["tracking"]
    # the sweep's server, at this machine's address towards slurmctld, asking for credentials
    assert tracking["uri"].startswith("http://10.") and tracking["username"] and tracking["password"], tracking
    assert (folder / "jobs" / "0" / "job.json").stat().st_mode & 0o077 == 0
    # credentials never in a job's environment, which slurmctld keeps in its state folder
    kept = [p.read_bytes() for p in (slurm_cluster.root / "state").rglob("environment")]
    assert any(b"plain-9d2e" in text for text in kept), "the jobs' environments are kept there"
    assert not [text for text in kept if b"s3cret-4f1c" in text or tracking["password"].encode() in text]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [r.info for r in parents]
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert sorted(r.data.metrics["x"] for r in finished) == [1, 2, 3, 4], [r.info for r in children]
    # job x=4's first attempt: a run of its own, FAILED
    (failed,) = [r for r in children if r.info.status != "FINISHED"]
    assert (failed.info.status, failed.data.metrics["x"], failed.data.tags["engage.attempt"]) == ("FAILED", 4, "1")
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert not live_jobs()


def test_fail_fast_cancels_the_array_tasks_slurm_has_not_started(slurm_cluster, live_jobs, tmp_path):
    """One slot: the array runs a task at a time. Job 0 fails; with ``fail_fast`` the tasks Slurm
    has not started yet are cancelled and recorded SKIPPED, never run."""
    done = subprocess.run(
        [sys.executable, str(APP), *SWEEP, NODES, "+x=1,2,3", "+fail_on=1", "hydra.launcher.fail_fast=true",
         "hydra.launcher.infrastructure.layers.0.hosts=1", "hydra.launcher.mlflow.enabled=false"],
        cwd=tmp_path, env=_env(slurm_cluster), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode != 0, done.stderr[-3000:]
    results = _results(tmp_path)
    assert results[0]["status"] == "FAILED", results
    # job 1's task may have started before job 0's end was seen: it then runs to its end
    assert results[1]["status"] in ("COMPLETED", "SKIPPED") and results[2]["status"] == "SKIPPED", results
    assert "fail_fast" in results[2]["error"], results
    (folder,) = sorted((tmp_path / "sweep" / ".engage").glob("*"))
    assert "job x=3" not in (folder / "jobs" / "2" / "stdout.log").read_text()
    assert not live_jobs()


def test_a_two_node_job_of_a_sweep_trains_one_ddp_fit_across_its_nodes_requeued_midway(
    slurm_cluster, live_jobs, tmp_path
):
    """``nodes=2``: the job's script starts the runner once a task with ``srun``; each task is a
    rank of one DDP fit (gloo between two network namespaces, which share no loopback), rank 0
    records the job, and both ranks' simulations count in its outcome. With ``requeue=true`` the
    job is submitted ``--requeue --signal=USR1@90``; the test sends the warning signal itself as
    the ranks start: they checkpoint together at the first step, the job is requeued, and its
    next incarnation resumes from that checkpoint to the end, recorded once by the launcher."""
    import threading

    from engage.core.testing.process import TINY_RUN, run_engage

    done: list = []
    args = [
        "run", *SWEEP, NODES, "hydra.launcher.infrastructure.options.nodes=2", *TINY_RUN,
        "hydra.launcher.infrastructure.options.requeue=true", "data.train_simulations=4", "strategy=ddp",
        "trainer.num_nodes=2",
    ]  # fmt: skip
    thread = threading.Thread(
        target=lambda: done.append(run_engage(*args, cwd=tmp_path, env=_env(slurm_cluster), timeout=180))
    )
    thread.start()

    def log() -> str:
        return "".join(p.read_text() for p in sorted((tmp_path / "sweep" / ".engage").glob("*/jobs/0/*.log")))

    deadline, seen, released = time.monotonic() + 120, [], False
    while log().count("engage runner: rank") < 2:  # both ranks listen for the signal
        assert time.monotonic() < deadline and thread.is_alive(), log()[-3000:]
        time.sleep(0.2)
    (job,) = [line.split()[0] for line in live_jobs()]
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm_cluster.env, check=True)
    while thread.is_alive():
        line = subprocess.run(
            ["squeue", "-h", "--states=all", f"--jobs={job}", "--format=%T %r"], env=slurm_cluster.env,
            capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        if line and (not seen or seen[-1] != line):
            seen.append(line)
        if line == "PENDING BeginTime" and not released:  # Slurm holds a requeued job two minutes
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm_cluster.env, check=True)
            released = True
        assert time.monotonic() < deadline + 60, (seen, log()[-3000:])
        time.sleep(0.3)
    thread.join()
    assert done[0].returncode == 0, done[0].stderr[-4000:]
    assert released and "PENDING BeginTime" in seen, seen
    text = log()
    ranks = dict(re.findall(r"engage runner: rank (\d) of 2 on node (node-\d)", text))
    assert sorted(ranks) == ["0", "1"] and ranks["0"] != ranks["1"], text[-3000:]  # one rank a node
    started = re.findall(r"engage runner: rank \d of 2 on node node-\d \([^)]*\)\n", text)
    assert len(started) == 4, text[-3000:]  # two incarnations of two ranks
    # the first incarnation's runner names the requeue as it ends, unless Slurm's SIGKILL, KillWait (5 s
    # on the test cluster) after its SIGTERM, comes first on a loaded machine; it never names a failure
    assert "failed: RunFailed" not in text and "job failed" not in text, text[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in text and f"engage: job {job} requeued at step 1" in text, text[-3000:]
    assert "Restoring states from the checkpoint path at" in text and "hpc_ckpt_1.ckpt" in text, text[-3000:]
    assert "simulations: 4 requested, 4 completed, 0 failed" in text, text[-3000:]  # both ranks' shares, on rank 0
    (folder,) = sorted((tmp_path / "sweep" / ".engage").glob("*"))
    script = (folder / "jobs" / "array-0-0.sbatch").read_text()
    assert "exec srun --kill-on-bad-exit=1 " in script, script
    results = _results(tmp_path)
    assert results[0]["status"] == "COMPLETED" and results[0]["attempt"] == 1, results
    # rank 1 ran the job in rank 0's output folder, logging to a file of its own
    output = Path(results[0]["output_dir"])
    assert (output / ".hydra").is_dir() and list(output.glob("*_rank_1.log")), sorted(output.iterdir())
    assert not list(output.glob("hpc_ckpt_*.ckpt"))  # spent once the fit ended
    # one MLflow run for the job, which the second incarnation took on and finished
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (child,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert child.info.status == "FINISHED" and child.data.tags["engage.incarnations"] == "2", child.info
    assert child.info.run_id == results[0]["job_run_id"], results
    assert not live_jobs()
    print(f"{job}: {' -> '.join(seen)}")


def test_a_one_rank_job_of_a_sweep_requeued_midway_resumes_from_its_checkpoint(slurm_cluster, live_jobs, tmp_path):
    """A job of one task is submitted with its shape (``--nodes=1 --ntasks-per-node=1``), so that
    Slurm sets ``SLURM_NTASKS``: without it Lightning does not take the job for a Slurm job, and
    its next incarnation trained again from the start in a second MLflow run, the first left
    SCHEDULED and the sweep FAILED beside a launcher that said it completed."""
    import threading

    from engage.core.testing.process import TINY_RUN, run_engage

    done: list = []
    args = ["run", *SWEEP, *TINY_RUN, "trainer.limit_train_batches=20"]
    args.append("hydra.launcher.infrastructure.options.requeue=true")
    thread = threading.Thread(
        target=lambda: done.append(run_engage(*args, cwd=tmp_path, env=_env(slurm_cluster), timeout=180))
    )
    thread.start()

    def log() -> str:
        return "".join(p.read_text() for p in sorted((tmp_path / "sweep" / ".engage").glob("*/jobs/0/*.log")))

    deadline, released = time.monotonic() + 120, False
    # the job's runner is up (a warning signal that comes before its fit is kept for the fit)
    while "GPU available" not in log():
        assert time.monotonic() < deadline and thread.is_alive(), log()[-3000:]
        time.sleep(0.2)
    (job,) = [line.split()[0] for line in live_jobs()]
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=slurm_cluster.env, check=True)
    while thread.is_alive():
        state = subprocess.run(
            ["squeue", "-h", "--states=all", f"--jobs={job}", "--format=%T %r"], env=slurm_cluster.env,
            capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        if state == "PENDING BeginTime" and not released:  # Slurm holds a requeued job two minutes
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=slurm_cluster.env, check=True)
            released = True
        assert time.monotonic() < deadline + 60, log()[-3000:]
        time.sleep(0.3)
    thread.join()
    assert done[0].returncode == 0, done[0].stderr[-4000:]
    text = log()
    # Slurm requeued it (it held it as requeued jobs are held); its first incarnation says so as it
    # ends, unless Slurm's SIGKILL, KillWait (5 s here) after its SIGTERM, comes first on a loaded
    # machine; the second resumes from the checkpoint the requeue wrote, and nothing failed
    assert released and "job failed" not in text and "failed: RunFailed" not in text, text[-3000:]
    assert "Restoring states from the checkpoint path at" in text and "hpc_ckpt_1.ckpt" in text, text[-3000:]
    results = _results(tmp_path)
    assert results[0]["status"] == "COMPLETED", results
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (child,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]  # one run, taken on
    assert child.info.status == "FINISHED" and child.data.tags["engage.incarnations"] == "2", child.info
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED", parent.data.metrics
    assert not live_jobs()


def test_a_job_shape_the_trainer_does_not_match_is_refused_before_anything_starts(slurm_cluster, live_jobs, tmp_path):
    from engage.core.testing.process import run_engage

    done = run_engage(
        "run", *SWEEP, NODES, "hydra.launcher.infrastructure.options.nodes=2", "seed=1,2",
        cwd=tmp_path, env=_env(slurm_cluster), timeout=120,
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and "trainer.num_nodes is 1; set trainer.num_nodes=2" in lines[0], lines
    assert not (tmp_path / "sweep").exists() and not list(tmp_path.rglob("*.db"))
    assert not live_jobs()


def test_an_interrupted_sweep_cancels_its_slurm_jobs_and_records_them_killed(slurm_cluster, live_jobs, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(APP), *SWEEP, NODES, "+x=1,2", "+sleep=60", "hydra.launcher.mlflow.enabled=false"],
        cwd=tmp_path, env=_env(slurm_cluster), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while sum("RUNNING" in line for line in live_jobs()) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() else "not running"
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, out[-3000:]
    results = _results(tmp_path)
    assert [results[i]["status"] for i in range(2)] == ["KILLED", "KILLED"], (results, out[-3000:])
    deadline = time.monotonic() + 10
    while [line for line in live_jobs() if "RUNNING" in line or "PENDING" in line]:
        assert time.monotonic() < deadline, live_jobs()
        time.sleep(0.3)


def test_a_later_launchs_array_counts_its_tasks_from_zero(slurm_cluster, tmp_path, monkeypatch):
    """Jobs 1001 to 1003 of a sweep (a sweeper's later launch), past the default MaxArraySize of
    1001: one array of tasks 0 to 2, task t running job 1001 + t and logging to its folder."""
    from engage.deploy.infrastructure import Infrastructure
    from engage.deploy.providers.slurm import SlurmProvider

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    infra = Infrastructure.from_dict(
        {"provider": "slurm", "layers": [{"name": "slurm", "hosts": 2}], "options": {"partition": "nodes"}}
    )
    provider = SlurmProvider(infra, tmp_path)
    provider.deploy()
    try:
        indices = [1001, 1002, 1003]
        assert provider.array_indices(indices) == indices
        folders = {index: tmp_path / "jobs" / str(index) for index in indices}
        for folder in folders.values():
            folder.mkdir(parents=True)
        command = ["sh", "-c", 'echo "task $SLURM_ARRAY_TASK_ID runs ${1##*/}"', "job"]
        jobs = provider.run_array(command, folders, limit=2, cwd=tmp_path)
        assert [jobs[index].wait(timeout=60) for index in indices] == [0, 0, 0]
        array_ids = {jobs[index].job_id.split("_")[0] for index in indices}
        assert len(array_ids) == 1  # one sbatch
        for task, index in enumerate(indices):
            assert jobs[index].job_id.endswith(f"_{task}")
            assert (folders[index] / "stdout.log").read_text() == f"task {task} runs {index}\n"
    finally:
        provider.destroy()


def test_a_job_whose_sbatch_is_under_way_when_the_sweep_ends_is_cancelled(slurm_cluster, tmp_path, monkeypatch):
    """Ctrl-C while a job thread waits for ``sbatch``: ``destroy`` knows the job already, Slurm's
    answer is cancelled at once, and nothing is submitted after ``destroy``."""
    import os
    import shutil
    import threading

    from engage.deploy.infrastructure import Infrastructure
    from engage.deploy.providers.slurm import SlurmProvider

    real = shutil.which("sbatch")
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    (wrappers / "sbatch").write_text(
        f'#!/bin/sh\ncase "$*" in *--test-only*) exec {real} "$@";; esac\nsleep 1.5; exec {real} "$@"\n'
    )
    (wrappers / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    infra = Infrastructure.from_dict(
        {"provider": "slurm", "layers": [{"name": "slurm", "hosts": 2}], "options": {"partition": "nodes"}}
    )
    provider = SlurmProvider(infra, tmp_path)
    first, second = provider.deploy()
    jobs = []
    thread = threading.Thread(
        target=lambda: jobs.append(provider.run(first, ["sleep", "60"], log_path=tmp_path / "a" / "out.log"))
    )
    thread.start()
    time.sleep(0.4)  # sbatch is under way (it takes 1.5 s)
    provider.destroy()
    thread.join(30)
    (job,) = jobs
    assert job.poll() == -signal.SIGTERM and job.job_id is not None
    late = provider.run(second, ["sleep", "60"], log_path=tmp_path / "b" / "out.log")
    assert late.poll() == -signal.SIGTERM and late.job_id is None  # never submitted
    state = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--jobs={job.job_id}", "--format=%T"],
        env=slurm_cluster.env, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert state in ("CANCELLED", ""), state


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hydra.launcher.infrastructure.options.partition=nosuch", "infrastructure.options.partition: sbatch: error"),
        ("+hydra.launcher.infrastructure.options.colour=red", "infrastructure.options.colour: not a slurm option"),
        ("hydra.launcher.infrastructure.options.bind_address=192.0.2.1", "infrastructure.options.bind_address:"),
        # sbatch takes -5 and gives the jobs an invalid time limit
        ("hydra.launcher.infrastructure.options.time=-5", "infrastructure.options.time is -5; give minutes (30)"),
    ],
)
def test_bad_slurm_options_fail_with_one_line_before_anything_starts(
    slurm_cluster, live_jobs, tmp_path, override, message
):
    done = subprocess.run(
        [sys.executable, str(APP), *SWEEP, override, "+x=1,2"],
        cwd=tmp_path, env=_env(slurm_cluster), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("engage launcher: ") and message in lines[0], lines
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "mlflow.db").exists()
    assert not live_jobs()
