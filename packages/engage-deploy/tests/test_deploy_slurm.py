"""The one-node Slurm cluster that the Slurm executor's tests run on."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _job_state(cluster, job_id: str) -> str:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id],
        env=cluster.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return fields["JobState"]


@pytest.fixture(scope="module")
def job_past_its_time_limit(slurm_cluster, tmp_path_factory):
    """A simulation's job that Slurm ends at its time limit (``time: "0:02"``, which Slurm rounds
    up to a minute, and enforces when its controller next checks limits, every 30 s): submitted
    through the executor when this module's first cluster test starts, on the partition of the
    netns nodes, which this module's other tests leave alone, so that its minute and more passes
    while they run; :func:`test_a_job_past_its_time_limit_fails_its_attempt_naming_the_timeout`,
    last in the module, waits for its end (the cluster keeps ended jobs known for half an hour)."""
    from engage.core.executors import LaunchRequest
    from engage.deploy.slurm.executor import SlurmExecutor

    folder = tmp_path_factory.mktemp("time-limit")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(slurm_cluster.conf))
        patch.chdir(folder)  # the job's working folder
        executor = SlurmExecutor(
            log_dir=str(folder), partition=slurm_cluster.nodes_partition, time="0:02", check_folder=False
        )
        job = executor.start(LaunchRequest(["sleep", "300"], 0, log_dir=str(folder)))
        deadline = time.monotonic() + 60
        while job.job_id is None and job.poll() is None:  # submitted (by the executor's own thread)
            assert time.monotonic() < deadline, "the job was never submitted"
            time.sleep(0.05)
        assert job.job_id is not None, f"sbatch refused the job: {job.stderr_tail()}"
    yield job
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", str(slurm_cluster.conf))
        executor.shutdown()


@pytest.fixture(autouse=True)
def _time_limit_clock(request):
    """Starts the time-limit job with the module's first test that uses the cluster."""
    if "slurm_cluster" in request.fixturenames:
        request.getfixturevalue("job_past_its_time_limit")


def test_local_cluster_runs_a_batch_job(slurm_cluster, tmp_path):
    marker = tmp_path / "ran"
    job_id = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={tmp_path}", "--wrap", f"touch {marker}"],
        env=slurm_cluster.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deadline = time.monotonic() + 20
    while _job_state(slurm_cluster, job_id) != "COMPLETED":
        assert time.monotonic() < deadline, "the job did not complete"
        time.sleep(0.2)
    assert marker.exists()


# Lines recorded from `scontrol show job -o` (Slurm 22.05), shortened to the fields that matter.
RECORDED = {
    "COMPLETED": "JobId=7 JobName=sim UserId=root(0) JobState=COMPLETED Reason=None ExitCode=0:0 RunTime=00:00:02",
    "OUT_OF_MEMORY": "JobId=8 JobName=sim JobState=OUT_OF_MEMORY Reason=OutOfMemory ExitCode=0:125 RunTime=00:00:05",
    "PREEMPTED": "JobId=9 JobName=sim JobState=PREEMPTED Reason=None ExitCode=0:15 RunTime=00:01:00",
    "TIMEOUT": "JobId=10 JobName=sim JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15 RunTime=00:01:01",
    "CANCELLED": "JobId=11 JobName=sim JobState=CANCELLED Reason=None ExitCode=0:15 RunTime=00:00:03",
    "PENDING": "JobId=12 JobName=sim JobState=PENDING Reason=Resources ExitCode=0:0 RunTime=00:00:00",
    "RUNNING": "JobId=13 JobName=sim JobState=RUNNING Reason=None ExitCode=0:0 RunTime=00:00:01",
}


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("COMPLETED", 0),
        ("OUT_OF_MEMORY", "failure"),
        ("PREEMPTED", "failure"),
        ("TIMEOUT", "failure"),
        ("CANCELLED", "failure"),
        ("PENDING", None),
        ("RUNNING", None),
    ],
)
def test_recorded_job_lines_map_to_exit_codes(state, expected):
    from engage.deploy.slurm.executor import SLURM_FAILURE, exit_code_for, job_state

    line = RECORDED[state]
    assert job_state(line) == state
    assert exit_code_for(line) == (SLURM_FAILURE if expected == "failure" else expected)


def test_unknown_state_is_an_error():
    from engage.deploy.slurm.executor import exit_code_for

    with pytest.raises(ValueError, match="unknown Slurm job state"):
        exit_code_for("JobId=1 JobState=WHATEVER")


RUN = [
    "run",
    "data.executor=slurm",
    "simulator.grid=16",
    "simulator.steps=10",
    "data.simulations=2",
    "data.concurrency=2",
    "data.val_simulations=1",
    "data.max_reads=1",
    "data.batches_per_epoch=10000",
    "data.batch_size=4",
    "trainer.max_epochs=1",
    "model.width=4",
    "trainer.enable_progress_bar=false",
]


def _journal(workdir):
    import json

    entries = []
    for path in workdir.rglob("journal.jsonl"):
        entries += [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [e for e in entries if e["status"] != "running"]


def test_live_jobs_are_watched_with_one_squeue_call_per_interval(slurm_cluster, tmp_path, monkeypatch):
    from engage.core.executors import LaunchRequest
    from engage.deploy.slurm.executor import SLURM_FAILURE, JobStates, SlurmExecutor, SlurmProcess

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.chdir(tmp_path)
    executor = SlurmExecutor(log_dir=str(tmp_path), check_folder=False)
    jobs = [executor.start(LaunchRequest(["sleep", "0.5"], i, log_dir=str(tmp_path))) for i in range(6)]
    started, looks = time.monotonic(), 0
    while any(job.poll() is None for job in jobs):
        looks += 1
        assert time.monotonic() - started < 60, "the jobs did not end"
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    assert [job.poll() for job in jobs] == [0] * 6
    # six live jobs, dozens of looks at the fleet: one query per interval, not one per job per look
    assert looks > 6 * 4
    assert executor.states.queries <= elapsed / executor.states.interval_s + 2
    # a job slurmctld forgot (here one that never existed) ends as a failure, not as running forever
    gone = SlurmProcess("999999", tmp_path / "none.log", 600.0, JobStates(interval_s=0.0))
    assert gone.poll() == SLURM_FAILURE
    executor.shutdown()


def test_how_slurm_ended_a_job_heads_its_log_tail_within_the_limit(tmp_path):
    from engage.deploy.slurm.executor import SlurmProcess

    log = tmp_path / "sim.log"
    log.write_text("x" * 5000)
    job = SlurmProcess(None, log, 600.0)
    assert job.stderr_tail(100) == "x" * 100  # ended by nothing Slurm said
    job.job_id, job.ended = "42", "TIMEOUT (TimeLimit)"
    tail = job.stderr_tail(100)
    assert tail.startswith("Slurm ended job 42: TIMEOUT (TimeLimit)\n") and len(tail) == 100 and tail.endswith("x")


def _wait_for_exit(job, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while (code := job.poll()) is None:
        assert time.monotonic() < deadline, f"job {job.job_id} did not end"
        time.sleep(0.05)
    return code


def _steps(cluster, job_id: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "--steps", "--noheader", f"--jobs={job_id}", "--format=%j"],
        env=cluster.env, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return sorted(out.split())


def test_simulations_share_a_job_as_steps_each_with_its_own_outcome(slurm_cluster, tmp_path, monkeypatch):
    """simulations_per_job=2: two simulations queued together run as two steps of one job;
    killing one cancels its step alone, the other reports its own exit code, and the job ends
    with it. A simulation started after shutdown is never submitted."""
    from engage.core.executors import LaunchRequest
    from engage.deploy.slurm.executor import SLURM_FAILURE, SlurmExecutor
    from engage.deploy.slurm.group import GROUP_WAIT_S

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.chdir(tmp_path)
    executor = SlurmExecutor(log_dir=str(tmp_path), check_folder=False, simulations_per_job=2, mem="64M")
    killed = executor.start(LaunchRequest(["sleep", "60"], 1, log_dir=str(tmp_path)))
    quits = executor.start(LaunchRequest(["sh", "-c", "sleep 4; echo leaving >&2; exit 3"], 2, log_dir=str(tmp_path)))
    alone = executor.start(LaunchRequest(["sleep", "60"], 3, log_dir=str(tmp_path)))
    try:
        deadline = time.monotonic() + 30
        while killed.job is None or killed.job.job_id is None or len(_steps(slurm_cluster, killed.job.job_id)) < 3:
            assert time.monotonic() < deadline, "the job's steps did not start"
            time.sleep(0.1)
        job = killed.job.job_id
        assert quits.pid == killed.pid == int(job) and alone.pid != killed.pid  # the third: a job of its own
        (script,) = tmp_path.glob("group-1-*.sbatch")
        assert script.read_text().count("srun --ntasks=1 --nodes=1 --exact --cpus-per-task=1 --mem=64M") == 2
        shown = subprocess.run(["scontrol", "show", "job", "-o", job], env=slurm_cluster.env, capture_output=True)
        # its steps' memory and 32 MiB each for the batch script
        assert b"NumTasks=2" in shown.stdout and b"MinMemoryNode=192M" in shown.stdout

        killed.kill()  # its step alone: the other one runs on
        assert killed.poll() == SLURM_FAILURE
        while killed.step_name in _steps(slurm_cluster, job):
            assert time.monotonic() < deadline + 10, "the killed simulation's step still runs"
            time.sleep(0.1)
        assert quits.poll() is None and _job_state(slurm_cluster, job) == "RUNNING"
        assert _wait_for_exit(quits) == 3 and "leaving" in quits.stderr_tail()  # its own code and log
        while _job_state(slurm_cluster, job) != "COMPLETED":
            assert time.monotonic() < deadline + 30
            time.sleep(0.2)
        alone.kill()  # the last of its job: the job is cancelled
        assert alone.poll() == SLURM_FAILURE
    finally:
        executor.shutdown()
    # after a shutdown the executor submits again (held-out simulations after fit), and the next
    # shutdown cancels what it submitted
    late = executor.start(LaunchRequest(["sleep", "60"], 4, log_dir=str(tmp_path)))
    deadline = time.monotonic() + GROUP_WAIT_S + 10
    while late.job is None or late.job.job_id is None:
        assert time.monotonic() < deadline, "a start after shutdown was not submitted"
        time.sleep(0.1)
    executor.shutdown()
    assert late.poll() == SLURM_FAILURE
    # scancel ends it CANCELLED; when its step had not started, the cancel file the shutdown wrote
    # first may end it sooner, COMPLETED with the simulation never run. Either way, well before
    # its 60 s sleep could have ended.
    deadline = time.monotonic() + 10
    while (state := _job_state(slurm_cluster, late.job.job_id)) in ("PENDING", "RUNNING", "COMPLETING"):
        assert time.monotonic() < deadline, f"the cancelled job is still {state}"
        time.sleep(0.1)
    assert state in ("CANCELLED", "COMPLETED"), state


def test_a_slow_or_refusing_sbatch_never_holds_up_the_caller(slurm_cluster, tmp_path, monkeypatch):
    """sbatch runs in the executor's thread: a controller that takes a second per submission (or
    refuses one) never blocks the thread that starts simulations and receives their samples."""
    import shutil

    from engage.core.executors import LaunchRequest
    from engage.deploy.slurm.executor import SLURM_FAILURE, SlurmExecutor

    real = shutil.which("sbatch")
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    refuse = tmp_path / "refuse"
    (wrappers / "sbatch").write_text(
        "#!/bin/sh\n"
        f'case "$*" in *--test-only*) exec {real} "$@";; esac\n'
        f"if [ -e {refuse} ]; then echo 'sbatch: error: Socket timed out' >&2; exit 1; fi\n"
        f'sleep 1; exec {real} "$@"\n'
    )
    (wrappers / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.chdir(tmp_path)
    executor = SlurmExecutor(log_dir=str(tmp_path), check_folder=False)
    clock = time.monotonic()
    jobs = [executor.start(LaunchRequest(["true"], i, log_dir=str(tmp_path))) for i in range(3)]
    assert time.monotonic() - clock < 0.5  # their three submissions take over 3 s
    assert [job.poll() for job in jobs] == [None] * 3  # starting
    assert [_wait_for_exit(job) for job in jobs] == [0, 0, 0]

    refuse.touch()  # the controller refuses: that attempt fails, with sbatch's words as its log
    refused = executor.start(LaunchRequest(["true"], 3, log_dir=str(tmp_path)))
    assert _wait_for_exit(refused) == SLURM_FAILURE
    assert "Socket timed out" in refused.stderr_tail() and refused.job_id is None

    refuse.unlink()
    first = executor.start(LaunchRequest(["sleep", "30"], 4, log_dir=str(tmp_path)))
    queued = executor.start(LaunchRequest(["true"], 5, log_dir=str(tmp_path)))
    queued.kill()  # given up while waiting behind the first one's submission: never submitted
    assert queued.poll() == SLURM_FAILURE
    time.sleep(0.3)  # the first one's sbatch is under way (it takes a second)
    executor.shutdown()  # waits for that sbatch to answer, then cancels its job
    assert queued.job_id is None and first.job_id is not None
    state = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--jobs={first.job_id}", "--format=%T"],
        env=slurm_cluster.env, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert state in ("CANCELLED", ""), state


def test_online_training_with_simulations_as_slurm_jobs(slurm_cluster, tmp_path):
    """Two simulations a job (the single-job path runs in the cancellation test below)."""
    from engage.core.testing.process import run_engage

    done = run_engage(
        *RUN,
        "+data.executor_options.simulations_per_job=2",
        "+data.executor_options.mem=200M",
        cwd=tmp_path,
        timeout=90,
        env={"SLURM_CONF": str(slurm_cluster.conf)},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    entries = _journal(tmp_path)
    assert [e["status"] for e in entries].count("finished") == 3, entries  # 2 training + 1 held out
    # the first two started together and shared a job: two steps of one batch script
    scripts = sorted(tmp_path.rglob("group-*.sbatch"))
    assert scripts and scripts[0].read_text().count("\n  srun ") == 2, [p.read_text() for p in scripts]
    assert sum(p.read_text().count("\n  srun ") for p in scripts) == 3
    # each simulation's keys reached it through a 0600 file in the working folder, which compute
    # nodes see, not through a key file in the trainer's temporary folder, which they may not
    sourced = [m for p in scripts for m in re.findall(r"^\s*\. (\S+)$", p.read_text(), re.M)]
    assert len(sourced) == 3 and all(Path(m).parent.is_relative_to(tmp_path) for m in sourced), sourced
    assert not list(tmp_path.rglob("*.secrets"))  # every key file read and deleted by its step


def test_unknown_partition_exits_2_naming_the_field(slurm_cluster, tmp_path):
    from engage.core.testing.process import run_engage

    done = run_engage(
        *RUN,
        "+data.executor_options.partition=nosuch",
        cwd=tmp_path,
        timeout=60,
        env={"SLURM_CONF": str(slurm_cluster.conf)},
    )
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    named = [x for x in lines if "data.executor_options.partition" in x]
    assert len(named) == 1 and named[0] == lines[-1], lines
    # checked before the run was recorded or its folder made
    assert not list(tmp_path.rglob("mlflow.db")) and not list(tmp_path.rglob("online")), list(tmp_path.rglob("*"))


def _long_run(slurm_cluster, tmp_path, *extra: str) -> tuple[subprocess.Popen, dict[str, str]]:
    """``engage run`` (``RUN``, simulations of 400 steps, then ``extra``) in a process of its own,
    its output piped; with the environment it runs in."""
    import sys

    env = {**os.environ, "SLURM_CONF": str(slurm_cluster.conf)}
    for inherited in ("MLFLOW_TRACKING_URI", "ENGAGE_TRACKING_URI", "ENGAGE_PARENT_RUN_ID"):
        env.pop(inherited, None)
    args = [*(a.replace("simulator.steps=10", "simulator.steps=400") for a in RUN), *extra]
    proc = subprocess.Popen(
        [sys.executable, "-m", "engage.core.cli", *args], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    return proc, env


def test_a_cancelled_simulation_job_is_retried(slurm_cluster, tmp_path):
    # a small buffer holds the simulations to the training's pace: each lives for seconds, long
    # after squeue (which lags behind the jobs on a loaded machine) first lists it running
    proc, env = _long_run(slurm_cluster, tmp_path, "data.capacity=16")
    cancelled = None
    deadline = time.monotonic() + 60
    while cancelled is None and time.monotonic() < deadline and proc.poll() is None:
        listed = subprocess.run(
            ["squeue", "-h", "-t", "RUNNING", "-p", slurm_cluster.partition, "-o", "%i %j"],
            env=env,
            capture_output=True,
            text=True,
        ).stdout.split("\n")
        # a simulation's job: not the one-line job that checks the working folder at the start
        running = [
            line.split()[0] for line in listed if line.split()[1:2] and line.split()[1].startswith("engage-sim-")
        ]
        if running:
            cancelled = running[0]
            subprocess.run(["scancel", cancelled], env=env, check=True)
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=90)
    assert cancelled is not None, out[-2000:]
    assert proc.returncode == 0, out[-3000:]
    assert "retrying" in out, out[-3000:]
    assert "process ended CANCELLED" in out, out[-3000:]  # as Slurm says it ended, not a made-up exit code


def test_a_killed_trainers_simulation_jobs_are_cancelled_at_once(slurm_cluster, tmp_path):
    """``kill -9`` of the trainer: it cancels nothing itself, its reaper (a process of its own
    reading the trainer's pipe) sees the pipe close and cancels the run's jobs, long before the
    simulations would notice their trainer gone (``data.heartbeat_timeout``)."""
    proc, env = _long_run(slurm_cluster, tmp_path)

    def simulation_jobs() -> list[str]:
        listed = subprocess.run(
            ["squeue", "-h", "-p", slurm_cluster.partition, "-o", "%i %j %T"], env=env, capture_output=True, text=True
        ).stdout
        return [line for line in listed.splitlines() if line.split()[1:2] and line.split()[1].startswith("engage-sim-")]

    deadline = time.monotonic() + 60
    while not [line for line in simulation_jobs() if line.endswith("RUNNING")]:
        assert time.monotonic() < deadline and proc.poll() is None, "no simulation job ran"
        time.sleep(0.2)
    proc.kill()
    killed = time.monotonic()
    while simulation_jobs():
        assert time.monotonic() - killed < 15, simulation_jobs()
        time.sleep(0.2)
    print(f"the killed trainer's simulation jobs left the queue {time.monotonic() - killed:.1f} s after the kill")
    out, _ = proc.communicate(timeout=30)  # the reaper held its stderr until it had cancelled them
    assert "engage slurm reaper: its submitter died; cancelled jobs " in out, out[-2000:]


def test_a_job_pending_too_long_is_cancelled_with_a_warning_and_the_run_fails(slurm_cluster, tmp_path):
    from engage.core.testing.process import run_engage

    env = {"SLURM_CONF": str(slurm_cluster.conf)}
    done = run_engage(
        *RUN,
        "data.retries=0",
        "data.val_simulations=0",
        "+data.executor_options.max_pending_s=2",
        # held until an hour from now: pending (BeginTime) all along
        '+data.executor_options.extra=["--begin=now+3600"]',
        cwd=tmp_path,
        timeout=90,
        env=env,
    )
    assert done.returncode == 4, done.stderr[-3000:]
    assert "pending for over 2 s (BeginTime); cancelled" in done.stderr, done.stderr[-3000:]
    assert "given up" in done.stderr.splitlines()[-1], done.stderr[-2000:]
    queued = subprocess.run(
        ["squeue", "-h", "-p", slurm_cluster.partition, "-o", "%i %j"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    assert not [x for x in queued.stdout.splitlines() if "engage-sim" in x], queued.stdout
    # the keys' file of the job that never started went with it (its script deletes it when it runs)
    assert not list(tmp_path.rglob("*.secrets")), list(tmp_path.rglob("*.secrets"))


def test_an_unreachable_controller_is_one_line_and_exit_code_2(slurm_cluster, tmp_path):
    import socket

    from engage.core.testing.process import run_engage

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = tmp_path / "slurm.conf"
    conf.write_text(slurm_cluster.conf.read_text() + f"SlurmctldPort={port}\nMessageTimeout=2\n")
    started = time.monotonic()
    done = run_engage(*RUN, cwd=tmp_path, timeout=90, env={"SLURM_CONF": str(conf)})
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert lines[-1].startswith("data.executor=slurm:") or "data.executor=slurm:" in lines[-1], lines[-3:]
    assert "slurmctld is reachable" in lines[-1], lines[-1]
    assert not list(tmp_path.rglob("mlflow.db")), "refused before the run was recorded"
    print(f"refused in {time.monotonic() - started:.1f} s")


def test_a_working_folder_compute_nodes_do_not_see_is_one_line_and_exit_code_2(slurm_cluster, tmp_path):
    """A node-local scratch folder: the same path exists on the node, but not the trainer's files."""
    import shutil
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and util-linux unshare for a private mount")
    local = tmp_path / "scratch"
    local.mkdir()
    engage = " ".join([sys.executable, "-m", "engage.core.cli", *RUN])
    script = f"mount -t tmpfs tmpfs {local} && cd {local} && exec {engage}"
    env = {**os.environ, "SLURM_CONF": str(slurm_cluster.conf)}
    for inherited in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "ENGAGE_TRACKING_URI"):
        env.pop(inherited, None)
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert "compute nodes do not see the working folder" in lines[-1], lines[-3:]
    assert not list(local.iterdir()), "the node saw none of it, and nothing was left in the shared folder"


def test_the_controller_endpoint_is_read_from_slurms_configuration():
    from engage.deploy.slurm.executor import controller_endpoint

    text = "ClusterName = engage\nSlurmctldHost[0]        = vm(10.231.0.1)\nSlurmctldPort = 6817-6818\n"
    assert controller_endpoint(text) == ("10.231.0.1", 6817)
    assert controller_endpoint("SlurmctldHost[0] = head\nSlurmctldPort = 7000\n") == ("head", 7000)
    with pytest.raises(ValueError, match="no SlurmctldHost"):
        controller_endpoint("ClusterName = engage\n")


def test_a_bind_address_not_of_this_machine_exits_2_naming_the_field(slurm_cluster, tmp_path):
    from engage.core.testing.process import run_engage

    done = run_engage(
        *RUN,
        "+data.executor_options.bind_address=192.0.2.1",  # TEST-NET-1: nobody's
        cwd=tmp_path,
        timeout=60,
        env={"SLURM_CONF": str(slurm_cluster.conf)},
    )
    lines = [x for x in done.stderr.splitlines() if x.strip()]
    assert done.returncode == 2, done.stderr[-2000:]
    assert lines[-1].count("data.executor_options.bind_address") == 1 and "192.0.2.1" in lines[-1], lines[-3:]
    assert not list(tmp_path.rglob("mlflow.db")), "refused before the run was recorded"


def test_a_cancelled_sweep_job_reports_killed_and_never_runs_again(tmp_path):
    """The job's thread polls while the launcher cancels: the cancellation's code stays."""
    import signal

    from engage.deploy.providers.slurm import SlurmJob
    from engage.deploy.slurm.executor import JobStates, SlurmProcess

    process = SlurmProcess("424242", tmp_path / "log", 600.0, JobStates(interval_s=3600))
    job = SlurmJob(process)
    job.cancel()
    assert job.poll() == -signal.SIGTERM and job.wait(timeout=1) == -signal.SIGTERM
    assert process.poll() is not None  # given up: never seen running again


def test_an_array_task_held_by_its_arrays_limit_is_not_pending_too_long(tmp_path, monkeypatch):
    """``max_pending_s`` counts from when the array's ``%`` limit lets the task run, not from
    its submission: a task waits for its array's others by design."""
    from engage.deploy.slurm.executor import JobStates, SlurmProcess

    states = JobStates(interval_s=3600)
    answers = {"12_3": ("PENDING", "JobArrayTaskLimit")}
    monkeypatch.setattr(states, "state", lambda job_id: answers[job_id])
    task = SlurmProcess(None, tmp_path / "log", 0.2, states)
    task.submitted_as("12_3")
    time.sleep(0.3)
    assert task.poll() is None and task.waiting  # past max_pending_s, but held by the array
    answers["12_3"] = ("PENDING", "Resources")  # its turn: now waiting for Slurm
    assert task.poll() is None
    time.sleep(0.3)
    cancelled = []
    monkeypatch.setattr("engage.deploy.slurm.executor.scancel", lambda *ids: cancelled.append(ids) or True)
    with pytest.warns(UserWarning, match="pending for over 0 s"):
        assert task.poll() == 75
    assert cancelled == [("12_3",)]
    answers["12_4"] = ("RUNNING", "None")
    running = SlurmProcess("12_4", tmp_path / "log", 0.2, states)
    assert running.poll() is None and not running.waiting


def test_a_requeued_job_pends_anew_and_is_never_taken_for_one_not_started(tmp_path, monkeypatch):
    """A job Slurm requeued (time-out warning, preemption, node failure) pends again: its
    ``max_pending_s`` counts from then, and fail-fast does not take it for a job not started."""
    from engage.deploy.slurm.executor import JobStates, SlurmProcess

    states = JobStates(interval_s=3600)
    answer = {"state": ("RUNNING", "None")}
    monkeypatch.setattr(states, "state", lambda job_id: answer["state"])
    job = SlurmProcess("31", tmp_path / "log", 0.3, states)
    assert job.waiting and job.poll() is None and not job.waiting
    time.sleep(0.4)  # longer than max_pending_s since its submission
    answer["state"] = ("PENDING", "BeginTime")
    assert job.poll() is None and not job.waiting  # pending anew: its clock starts again


def test_a_batch_jobs_time_limit_counts_only_the_time_it_runs():
    """``hydra.launcher.job_timeout_s`` counts a batch job's running time, not the time it
    waits in the queue for its array's limit or after a requeue."""
    import subprocess

    from engage.deploy.execution import _wait

    class Queued:
        job_id, queued = "12_3", True

        def __init__(self, states):
            self.states, self.returncode = iter(states), None

        def poll(self):
            state = next(self.states, "DONE")
            self.queued = state == "PENDING"
            if state == "DONE":
                self.returncode = 0
            return self.returncode

    # 1 s pending, then 0.5 s running, then done: within a 0.8 s limit
    assert _wait(Queued(["PENDING"] * 4 + ["RUNNING"] * 2), 0.8) == 0
    with pytest.raises(subprocess.TimeoutExpired):
        _wait(Queued(["PENDING"] * 2 + ["RUNNING"] * 8), 0.8)  # runs past it


def test_requeue_options_make_the_job_requeueable_with_its_warning_signal():
    from engage.deploy.infrastructure import Infrastructure, InfrastructureError
    from engage.deploy.providers.slurm import SlurmProvider

    def flags(**options):
        infra = {"provider": "slurm", "layers": [{"name": "slurm", "hosts": 1}], "options": options}
        return SlurmProvider(Infrastructure.from_dict(infra), "/tmp/engage-test")._requeue_flags()

    assert flags() == ["--no-requeue"]  # the launcher retries
    assert flags(requeue=True) == ["--requeue", "--signal=B:USR1@90"]  # to the runner, which the script execs
    assert flags(requeue=True, requeue_signal_s=300, nodes=2) == ["--requeue", "--signal=USR1@300"]  # to each rank
    with pytest.raises(InfrastructureError, match=r"options\.requeue_signal_s is 0; give whole seconds"):
        flags(requeue=True, requeue_signal_s=0)
    with pytest.raises(InfrastructureError, match=r"options\.requeue is 'no'; give true"):
        flags(requeue="no")
    # Slurm may signal up to 60 s early: a job of 2 min warned 90 s ahead could be requeued at its start
    early = r"options\.time='2' \(120 s\) leaves a requeued job 30 s .* give a time over 150 s"
    with pytest.raises(InfrastructureError, match=early):
        flags(requeue=True, time="2")
    assert flags(requeue=True, time="00:02:31") == ["--requeue", "--signal=B:USR1@90"]
    assert flags(requeue=True, time="1-0", requeue_signal_s=600)[1] == "--signal=B:USR1@600"
    assert flags(requeue=False, time="1") == ["--no-requeue"]  # no signal: any time limit
    assert flags(requeue=True, time="0") == ["--requeue", "--signal=B:USR1@90"]  # 0: no time limit


def test_slurm_time_limits_are_read_in_every_form_sbatch_takes():
    from engage.deploy.providers.slurm import time_limit_s

    forms = {"45": 2700, 45: 2700, "5:30": 330, "2:00:00": 7200, "3-0": 259200, "1-2:30": 95400, "0-0:0:9": 9}
    assert {value: time_limit_s(value) for value in forms} == forms
    for none in (None, "UNLIMITED", "infinite", "", "0", 0, "00:00:00", "0-0"):
        assert time_limit_s(none) is None, none  # no limit
    for wrong in ("soon", "1:2:3:4", "-5", -5, "1:-2", True, 1.5):
        with pytest.raises(ValueError, match="is not a Slurm time limit"):
            time_limit_s(wrong)


def test_slurm_array_options_are_checked_and_indices_written_as_ranges():
    from engage.deploy.infrastructure import Infrastructure, InfrastructureError
    from engage.deploy.providers.slurm import SlurmProvider, _ranges

    def provider(**options):
        infra = {"provider": "slurm", "layers": [{"name": "slurm", "hosts": 3}], "options": options}
        return SlurmProvider(Infrastructure.from_dict(infra), "/tmp/engage-test")

    with pytest.raises(InfrastructureError, match=r"infrastructure\.options\.array is 'yes'; give true"):
        provider(array="yes")
    on, off = provider(), provider(array=False)
    on.hosts = off.hosts = ["slot"] * 3  # deployed
    assert (on.array_limit, off.array_limit, off.array_indices([0, 1])) == (3, 0, [])
    on._array_size = 4  # slurmctld's MaxArraySize: task ids 0 to 3
    assert on.array_indices([5, 0, 3, 4]) == [0, 3]
    assert on.array_indices([1005, 1001, 1003, 1004]) == [1001, 1003, 1004]  # task ids from the first
    assert _ranges([0, 1, 2, 5, 7, 8, 10]) == "0-2,5,7-8,10" and _ranges([4]) == "4"


@pytest.mark.parametrize("address", ["0.0.0.0", "127.0.0.1", "not-an-ip"])
def test_a_bind_address_nodes_cannot_reach_is_refused(address):
    from engage.core.config.validate import ConfigError
    from engage.deploy.slurm.executor import bind_address_for

    with pytest.raises(ConfigError, match=r"^data.executor_options.bind_address: "):
        bind_address_for(address, "data.executor_options.bind_address", "data.executor=slurm")


def test_secrets_never_reach_a_jobs_environment():
    from engage.deploy.slurm.executor import job_environment

    env = {"PATH": "/bin", "MLFLOW_TRACKING_PASSWORD": "x", "GITHUB_TOKEN": "t", "DB_PASS": "p", "HOME": "/root"}
    assert job_environment(env) == {"PATH": "/bin", "HOME": "/root"}


def test_a_scancel_that_does_not_answer_is_a_warning_naming_the_jobs(tmp_path, monkeypatch):
    from engage.deploy.slurm import executor

    fake = tmp_path / "bin" / "scancel"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nsleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(executor, "SCANCEL_TIMEOUT_S", 0.3)
    started = time.monotonic()
    with pytest.warns(UserWarning, match=r"no answer within 0.3 s.*may still be queued or running: scancel 17 18$"):
        assert executor.scancel("17", "18") is False
    assert time.monotonic() - started < 5
    fake.write_text("#!/bin/sh\nexit 0\n")
    assert executor.scancel("17") is True
    fake.write_text("#!/bin/sh\necho 'scancel: error: Kill job error: Invalid job id specified' >&2\nexit 1\n")
    assert executor.scancel("17") is True  # it ended meanwhile
    fake.write_text("#!/bin/sh\necho 'scancel: error: Unable to contact slurm controller' >&2\nexit 1\n")
    with pytest.warns(UserWarning, match=r"Unable to contact slurm controller\); these jobs may still"):
        assert executor.scancel("17") is False


def test_the_provider_asks_slurm_about_the_same_job_options_once_a_process(monkeypatch):
    from engage.deploy.infrastructure import Infrastructure
    from engage.deploy.providers import slurm as provider_module
    from engage.deploy.slurm import executor

    asked = []
    monkeypatch.setattr(executor, "check_submission", lambda flags, *_: asked.append(tuple(flags)))
    monkeypatch.setattr(provider_module.SlurmProvider, "planned_launcher_address", lambda self: "10.0.0.1")
    monkeypatch.setattr(provider_module, "_ACCEPTED", set())
    infra = Infrastructure.from_dict(
        {"provider": "slurm", "layers": [{"name": "slurm", "hosts": 1}], "options": {"partition": "p1"}}
    )
    # the sweep callback's check, the launcher's setup, the deployment: one sbatch --test-only
    provider_module.SlurmProvider.check(infra)
    provider_module.SlurmProvider.check(infra)
    provider_module.SlurmProvider(infra, ".").deploy_checks()
    assert len(asked) == 1 and "--partition=p1" in asked[0]
    other = Infrastructure.from_dict(
        {"provider": "slurm", "layers": [{"name": "slurm", "hosts": 1}], "options": {"partition": "p2"}}
    )
    provider_module.SlurmProvider.check(other)  # other options are asked about
    assert len(asked) == 2


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"simulations_per_job": 0}, "data.executor_options.simulations_per_job"),
        ({"simulations_per_job": 1.5}, "data.executor_options.simulations_per_job"),
        ({"simulations_per_job": 2, "mem": "lots"}, "data.executor_options.mem"),
        ({"simulations_per_job": 2}, "data.executor_options.mem"),  # each step needs its own
    ],
)
def test_bad_job_sharing_options_are_one_line_naming_the_field(options, field):
    from engage.core.config.validate import ConfigError
    from engage.deploy.slurm.executor import SlurmExecutor

    with pytest.raises(ConfigError) as refused:
        SlurmExecutor(check_folder=False, **options)  # refused before Slurm is asked anything
    assert str(refused.value).startswith(field) and "\n" not in str(refused.value)


def test_a_simulation_sharing_a_job_ignores_files_an_earlier_run_left_under_its_name(tmp_path):
    from engage.deploy.slurm.group import SlurmTask

    for suffix in ("status", "cancel", "status.part"):  # a resumed run starts attempt 1 again
        (tmp_path / f"sim-3-1.{suffix}").write_text("0")
    task = SlurmTask(tmp_path, "sim-3-1", ["true"], {})
    assert not list(tmp_path.iterdir()) and task.poll() is None


def test_a_job_past_its_time_limit_fails_its_attempt_naming_the_timeout(
    slurm_cluster, job_past_its_time_limit, monkeypatch
):
    """A live TIMEOUT (the job of :func:`job_past_its_time_limit`): the attempt fails (the fault
    policy retries it from its sample index, as a crashed process) and its failure says why,
    though the simulation's own log says nothing."""
    from engage.deploy.slurm.executor import SLURM_FAILURE

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    job = job_past_its_time_limit
    assert _wait_for_exit(job, timeout=150) == SLURM_FAILURE
    assert job.ended == "TIMEOUT (TimeLimit)"
    assert job.stderr_tail().startswith(f"Slurm ended job {job.job_id}: TIMEOUT (TimeLimit)")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"time": "-5"}, "data.executor_options.time is '-5'; give minutes (30), 'HH:MM:SS'"),
        ({"time": "1:2:3:4"}, "data.executor_options.time is '1:2:3:4'"),
        ({"mem": "lots"}, "data.executor_options.mem is 'lots'; give a size with K, M, G or T"),
        ({"mem": "-1G"}, "data.executor_options.mem is '-1G'"),
        ({"cpus_per_task": 0}, "data.executor_options.cpus_per_task is 0; give a whole number from 1"),
        ({"max_pending_s": -1}, "data.executor_options.max_pending_s is -1; give seconds above 0"),
        ({"max_pending_s": "abc"}, "data.executor_options.max_pending_s is 'abc'"),
        ({"probe_timeout_s": 0}, "data.executor_options.probe_timeout_s is 0"),
        ({"check_folder": "maybe"}, "data.executor_options.check_folder is 'maybe'; give true or false"),
        (
            {"partiton": "debug"},
            "data.executor_options.partiton: unknown key; did you mean data.executor_options.partition?",
        ),
    ],
)
def test_slurm_executor_options_are_checked_before_anything_is_submitted(options, message) -> None:
    """Without a cluster: the values sbatch would refuse, or take otherwise than meant (a
    negative time gives jobs an invalid limit), are one line naming the option."""
    from engage.deploy.slurm.executor import SlurmExecutor

    with pytest.raises(ValueError) as error:
        SlurmExecutor.check_options(options)
    assert message in str(error.value) and "\n" not in str(error.value)
    SlurmExecutor.check_options({"time": "1-02:30", "mem": "512M", "cpus_per_task": 2, "max_pending_s": 30})
    SlurmExecutor.check_options({"time": "UNLIMITED", "mem": "0", "check_folder": False})


def test_two_simulations_of_one_number_never_share_a_job_name(slurm_cluster, tmp_path, monkeypatch):
    """A held-out and a training simulation may both be simulation 0, attempt 1: a job is
    cancelled by its name when its sbatch hangs, so each name is the run's only one."""
    from engage.core.executors import LaunchRequest
    from engage.deploy.slurm.executor import SlurmExecutor

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.chdir(tmp_path)
    executor = SlurmExecutor(log_dir=str(tmp_path), check_folder=False)
    try:
        held_out = executor.start(LaunchRequest(["sleep", "60"], 0, log_dir=str(tmp_path / "val")))
        training = executor.start(LaunchRequest(["sleep", "60"], 0, log_dir=str(tmp_path / "train")))
    finally:
        executor.shutdown()
    names = [held_out.job_name, training.job_name]
    assert names[0] != names[1] and all(n.startswith("engage-sim-0-1.") for n in names), names
    assert all(n.endswith(f"-{executor.token}") for n in names), names


def test_a_simulation_job_that_fails_reports_its_own_exit_code(slurm_cluster, tmp_path, monkeypatch):
    """Slurm's FAILED state says only that the script exited non-zero: the code it exited with
    (scontrol's ExitCode) is the attempt's, not the executor's own failure code."""
    from engage.core.executors import LaunchRequest
    from engage.deploy.slurm.executor import SLURM_FAILURE, SlurmExecutor

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.chdir(tmp_path)
    executor = SlurmExecutor(log_dir=str(tmp_path), check_folder=False)
    try:
        failing = executor.start(LaunchRequest(["sh", "-c", "echo broken >&2; exit 3"], 0, log_dir=str(tmp_path)))
        assert _wait_for_exit(failing) == 3 != SLURM_FAILURE
        assert "FAILED" in failing.stderr_tail() and "broken" in failing.stderr_tail()
    finally:
        executor.shutdown()


def test_a_job_no_node_can_hold_is_refused_naming_what_it_asks(slurm_cluster, tmp_path, monkeypatch):
    from engage.core.config.validate import ConfigError
    from engage.deploy.slurm.executor import SlurmExecutor

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"no node of the partition has what a job asks \(--mem=999G\); ask for less"):
        SlurmExecutor(log_dir=str(tmp_path), check_folder=False, mem="999G")
    from engage.deploy.slurm.executor import check_submission

    with pytest.raises(ConfigError, match=r"asks \(--nodes=9\); ask for fewer nodes, less mem"):
        check_submission(["--nodes=9"], "infrastructure.options", "infrastructure.provider=slurm")
    # GPUs no node has, asked through the simulations' extra #SBATCH lines too (they were sent untried)
    with pytest.raises(
        ConfigError, match=r"no node of the partition has the GPUs or resources a job asks \(--gres=gpu:1\)"
    ):
        SlurmExecutor(log_dir=str(tmp_path), check_folder=False, extra=["--gres=gpu:1"])


def test_a_sweep_job_says_how_slurm_ended_it(tmp_path, monkeypatch):
    """The launcher's line for a failed attempt names Slurm's end (TIMEOUT, NODE_FAIL, a
    cancellation), which the batch job stands for; it said "exited with code 75" for all."""
    from engage.deploy.providers.slurm import SlurmJob
    from engage.deploy.slurm.executor import JobStates, SlurmProcess

    states = JobStates(interval_s=3600)
    monkeypatch.setattr(states, "state", lambda job_id: ("TIMEOUT", "TimeLimit"))
    job = SlurmJob(SlurmProcess("12_3", tmp_path / "log", 600.0, states))
    assert job.poll() is not None
    assert job.ended == "TIMEOUT (TimeLimit)"
