"""``engage run`` end to end, in real processes, with MLflow on SQLite."""

import json
import os
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from engage.core.testing.process import TINY_RUN as TINY
from engage.core.testing.process import run_engage as engage


def _runs(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("engage")
    assert experiment is not None, "no 'engage' experiment was created"
    return client, client.search_runs([experiment.experiment_id])


@pytest.mark.slow
def test_run_trains_and_records_everything(tmp_path):
    result = engage("run", *TINY, "seed=7", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # Lightning's messages once each, on standard error, though it is imported after Hydra's logging
    assert result.stderr.count("GPU available: False") == 1 and "GPU available" not in result.stdout
    client, runs = _runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["seed"] == "7"
    assert run.data.params["simulator.grid"] == "16"
    assert "; T_top [K]: uniform in [" in run.data.params["engage.simulator_space"]  # what the simulator declares
    assert "trainer.max_epochs=1" in run.data.params["overrides"]
    assert {"train/loss", "val/loss", "val/rel_l2"} <= set(run.data.metrics)
    # the epoch's validation saw the final weights: the one after the fit is not run a second time
    assert len(client.get_metric_history(run.info.run_id, "val/rel_l2")) == 1
    assert run.data.tags["version.engage-core"] == "0.1.0"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "run")}
    assert {"run/config.yaml", "run/overrides.json", "run/environment.json", "run/requirements.txt"} <= artifacts
    config = client.download_artifacts(run.info.run_id, "run/config.yaml", str(tmp_path))
    assert "grid: 16" in open(config).read()
    env = json.load(open(client.download_artifacts(run.info.run_id, "run/environment.json", str(tmp_path))))
    assert env["packages"]["torch"].startswith("2.")
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stderr
    # the end-of-run line says what MLflow holds
    m = run.data.metrics
    line = (
        f"simulations: {m['online/simulations_requested']:.0f} requested, {m['online/simulations_completed']:.0f} "
        f"completed, {m['online/simulations_failed']:.0f} failed, {m['online/simulations_given_up']:.0f} given up; "
        f"samples: {m['online/samples_received']:.0f} received, {m['online/samples_trained']:.0f} trained"
    )
    unread = m["online/samples_unread"]  # received, left in the buffer as training ended
    line += f", {unread:.0f} never read\n" if unread else "\n"
    assert line in result.stderr, result.stderr[-1500:]


@pytest.mark.slow
def test_multirun_is_one_parent_with_a_child_per_job(tmp_path):
    result = engage("run", "-m", *TINY, "model.lr=0.001,0.002", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _, runs = _runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("engage.kind") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["model.lr"] for r in children) == ["0.001", "0.002"]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["jobs"] == 2 and parent.data.metrics["jobs_failed"] == 0


@pytest.mark.slow
def test_a_sweep_whose_job_fails_leaves_no_parent_running(tmp_path):
    """A job that fails (its simulations cannot connect in 1 ms: exit code 4) ends the sweep,
    and its parent run ends FAILED instead of staying RUNNING."""
    result = engage("run", "-m", *TINY, "data.retries=0", "data.startup_timeout=60,0.001", cwd=tmp_path)
    assert result.returncode == 4, result.stderr[-3000:]
    _, runs = _runs(tmp_path)
    (parent,) = [r for r in runs if r.data.tags.get("engage.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FAILED"
    assert sorted(r.info.status for r in children) == ["FAILED", "FINISHED"]
    # the sweep says how it went, as at a normal end: counts, and the best of the jobs that finished
    assert parent.data.metrics["jobs"] == 2 and parent.data.metrics["jobs_failed"] == 1
    (finished,) = [r for r in children if r.info.status == "FINISHED"]
    assert parent.data.tags["engage.best_job"] == finished.info.run_name
    assert f"sweep {parent.info.run_name} ({parent.info.run_id}) FAILED: 2 jobs, 1 failed; best " in result.stderr


def test_a_sweep_whose_sweeper_went_on_past_a_failed_job_ends_with_its_code_and_line(tmp_path, capsys):
    """Optuna's ``max_failure_rate`` returns from the sweep as if all went well: the sweep still
    ends FAILED, with the first failed job's exit code and its line last."""
    from hydra.core.utils import JobReturn, JobStatus

    from engage.core.run import RunFailed
    from engage.core.tracking.sweep import MLflowSweepCallback

    client, experiment, parent, callback = _sweep_callback(tmp_path)
    uri = callback.tracking_uri
    for status, value in (
        (JobStatus.FAILED, RunFailed("online run failed: simulation 3 failed after 1 attempts", 4)),
        (JobStatus.COMPLETED, 0.1),
        (JobStatus.FAILED, RunFailed("another", 3)),
    ):
        job = JobReturn(status=status)
        job._return_value = value
        client.set_terminated(
            client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id,
            "FAILED" if status == JobStatus.FAILED else "FINISHED",
        )
        callback.on_job_end(None, job)
    with pytest.raises(SystemExit) as ended:
        callback.on_multirun_end(None)
    assert ended.value.code == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "engage run: online run failed: simulation 3 failed after 1 attempts"
    assert f"sweep s ({parent}) FAILED: 3 jobs, 2 failed" in err[-3]
    assert client.get_run(parent).info.status == "FAILED"
    # jobs of other processes (the engage launcher's): the first failed job's run says why
    parent = client.create_run(experiment, run_name="t", tags={"engage.kind": "sweep"}).info.run_id
    job = client.create_run(experiment, run_name="t#0", tags={"mlflow.parentRunId": parent}).info.run_id
    client.set_tag(job, "engage.error", "online run failed: simulation 1 failed")
    client.set_terminated(job, "FAILED")
    callback = MLflowSweepCallback()
    callback.run_id, callback.tracking_uri = parent, uri
    with pytest.raises(SystemExit) as ended:
        callback.on_multirun_end(None)
    assert ended.value.code == 4
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "engage run: 1 of the sweep's jobs failed; the first, t#0: online run failed: simulation 1 failed"


def test_a_stopped_sweep_of_local_processes_ends_its_jobs_runs_left_running(tmp_path, capsys):
    """Ctrl-C under joblib's launcher: its workers die with the sweep before their runs end."""
    from mlflow import MlflowClient

    from engage.core.tracking.sweep import close_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("sweeps")

    def sweep(launcher):
        parent = client.create_run(experiment, run_name="s", tags={"engage.kind": "sweep", "engage.launcher": launcher})
        tags = {"mlflow.parentRunId": parent.info.run_id}
        running, done = (client.create_run(experiment, run_name=f"s#{i}", tags=tags) for i in range(2))
        client.set_terminated(done.info.run_id, "FINISHED")
        return parent.info.run_id, running.info.run_id

    parent, running = sweep("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher")
    close_sweep(client, parent, uri, status="KILLED")
    assert client.get_run(running).info.status == "KILLED" and client.get_run(parent).info.status == "KILLED"
    metrics = client.get_run(parent).data.metrics
    assert (metrics["jobs"], metrics["jobs_failed"], metrics["jobs_stopped"]) == (2, 0, 1)
    assert f"sweep s ({parent}) KILLED: 2 jobs, 0 failed, 1 stopped" in capsys.readouterr().err
    # a launcher whose jobs may outlive the sweep (on a cluster) leaves their runs to them
    parent, running = sweep("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher")
    close_sweep(client, parent, uri, status="KILLED")
    assert client.get_run(running).info.status == "RUNNING"
    metrics = client.get_run(parent).data.metrics
    assert (metrics["jobs"], metrics["jobs_failed"], metrics["jobs_running"]) == (2, 0, 1)
    assert f"sweep s ({parent}) KILLED: 2 jobs, 0 failed, 1 still running" in capsys.readouterr().err
    # a parent the stopped launcher ended KILLED itself is left as it is, with no second summary
    from engage.core.tracking.store import PARENT_RUN_ENV, TRACKING_URI_ENV
    from engage.core.tracking.sweep import end_open_sweep

    parent, _ = sweep("hydra_plugins.engage_launcher.engage_launcher.EngageLauncher")
    client.set_terminated(parent, "KILLED")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(PARENT_RUN_ENV, parent)
        env.setenv(TRACKING_URI_ENV, uri)
        end_open_sweep(None, "FAILED")  # as after the launcher's exit code 130
        assert client.get_run(parent).info.status == "KILLED" and "sweep s" not in capsys.readouterr().err
        env.setenv(TRACKING_URI_ENV, f"sqlite:///{tmp_path / 'no' / 'such' / 'store.db'}")
        end_open_sweep(None, "FAILED")  # a store that fails: one line, nothing raised
        assert "could not be ended FAILED" in capsys.readouterr().err


@pytest.mark.slow
def test_lightning_options_pass_through_engage_run(tmp_path):
    """fast_dev_run, profiler and num_sanity_val_steps, which the trainer group lacked, on an
    online run: a batch or two, checked but not judged against the simulation budget."""
    result = engage(
        "run", *TINY, "trainer.fast_dev_run=2", "trainer.profiler=simple", "trainer.num_sanity_val_steps=0",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FIT Profiler Report" in result.stdout + result.stderr  # the simple profiler's report


def test_unreachable_tracking_server_fails_fast_with_one_line(tmp_path):
    result = engage("run", *TINY, "logger.uri=http://127.0.0.1:9", "logger.timeout_s=2", cwd=tmp_path)
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.startswith("engage run:")]
    assert len(lines) == 1
    assert "MLflow server http://127.0.0.1:9 is unreachable" in lines[0]
    assert "logger.fallback_local=true" in lines[0]
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_unreachable_tracking_server_falls_back_to_local_when_allowed(tmp_path):
    result = engage(
        "run", *TINY, "logger.uri=http://127.0.0.1:9", "logger.timeout_s=2", "logger.fallback_local=true", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "logging locally to sqlite:///" in result.stderr
    local_dbs = list((tmp_path / "outputs").rglob("mlflow.db"))
    assert len(local_dbs) == 1
    client = MlflowClient(tracking_uri=f"sqlite:///{local_dbs[0]}")
    runs = client.search_runs([client.get_experiment_by_name("engage").experiment_id])
    assert len(runs) == 1 and "val/rel_l2" in runs[0].data.metrics


def test_sweep_with_unreachable_tracking_stops_before_any_job(tmp_path):
    result = engage(
        "run", "-m", *TINY, "model.lr=0.001,0.002", "logger.uri=http://127.0.0.1:9", "logger.timeout_s=2", cwd=tmp_path
    )
    assert result.returncode == 3
    assert (
        result.stderr.strip().splitlines()[-1].startswith("engage run: MLflow server http://127.0.0.1:9 is unreachable")
    )
    assert not (tmp_path / "multirun").exists()


def _stderr_lines(result, prefix: str = "engage run:") -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(prefix)]


@pytest.mark.slow
def test_two_runs_in_one_folder_are_two_independent_runs(tmp_path):
    for _ in range(2):
        result = engage("run", *TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "simulations: 2 requested, 2 completed, 0 failed, 0 given up" in result.stderr
    _, runs = _runs(tmp_path)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert [r.data.metrics["online/simulations_completed"] for r in runs] == [2, 2]
    online_ids = {r.data.tags["engage.online_run_id"] for r in runs}
    assert len(online_ids) == 2
    assert {p.name for p in (tmp_path / "run" / "online").iterdir()} == online_ids


@pytest.mark.slow
def test_a_run_that_falls_short_exits_4_with_one_line_and_a_failed_mlflow_run(tmp_path):
    failing = ("data.startup_timeout=0.001", "data.retries=0")
    result = engage("run", *TINY, *failing, "data.val_simulations=0", cwd=tmp_path)
    assert result.returncode == 4, result.stderr[-3000:]
    (line,) = _stderr_lines(result)
    assert "did not connect within" in line and "cannot be met" in line, line
    _, runs = _runs(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.metrics["online/simulations_given_up"] >= 1
    # the failed run's simulations, beside its failure
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    table = json.loads(
        Path(client.download_artifacts(runs[0].info.run_id, "online/simulations.json", str(tmp_path))).read_text()
    )
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    failed = [row for row in rows if row["status"] == "failed"]  # as they stood when the fit failed
    assert failed and all(row["error"] == "did not connect within 0.001s" for row in failed), rows


def test_a_fit_whose_training_loop_never_ran_fails_and_records_its_online_run(tmp_path):
    """``limit_train_batches=0``: Lightning skips the training loop (no on_train_end); the run
    trained no batch and must not finish."""
    result = engage("run", *TINY, "trainer.limit_train_batches=0", cwd=tmp_path)
    assert result.returncode == 4, result.stderr[-3000:]
    (line,) = _stderr_lines(result)
    assert "online run failed: no batch was trained" in line, line
    _, runs = _runs(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.metrics["online/batches_trained"] == 0
    assert len(runs[0].data.tags["engage.online_run_id"]) == 32  # failed runs name their online state too


def test_sigterm_outside_a_fit_raises_terminated_and_inside_one_is_left_to_lightning():
    import os
    import signal

    from engage.core.run import Terminated, sigterm_raises_terminated

    put_back = sigterm_raises_terminated()
    try:
        with pytest.raises(Terminated, match=r"^terminated \(SIGTERM\)$"):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000):  # where the signal lands
                pass
        ours, called = signal.getsignal(signal.SIGTERM), []

        def lightnings(signum, frame):  # Lightning's handler during a fit calls the one before it
            called.append(signum)
            ours(signum, frame)

        signal.signal(signal.SIGTERM, lightnings)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):
            pass
        assert called == [signal.SIGTERM]  # and nothing raised: Lightning stops at its next step
    finally:
        put_back()


def _stopped_midway(tmp_path, signum):
    """``engage run`` sent ``signum`` once training has taken a step: its exit status, its
    stderr and the statuses of its MLflow runs."""
    import os
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "run"
    # 40 paced steps: a signal sent at the first checkpoint, however late on a loaded machine,
    # lands while training still has steps to take (Lightning acts on SIGTERM at the next one)
    args = [*TINY, "simulator.steps=40", "data.policy=fifo", "trainer.limit_train_batches=null",
            "checkpoint_every_n_steps=1", f"hydra.run.dir={run_dir}",
            "+callbacks.pace._target_=engage_test_pace.Pace"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "fixtures")}
    env.pop("MLFLOW_TRACKING_URI", None)
    run = subprocess.Popen(
        [sys.executable, "-m", "engage.core.cli", "run", *args], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while not list(run_dir.rglob("*.ckpt")) and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # training has taken a step
    run.send_signal(signum)
    _, err = run.communicate(timeout=60)
    _, runs = _runs(tmp_path)
    return run.returncode, err, [r.info.status for r in runs]


@pytest.mark.slow
def test_ctrl_c_during_training_ends_the_run_killed(tmp_path):
    """Lightning turns Ctrl-C into its own shutdown and exit(1): the MLflow run is KILLED, not FAILED,
    and the program says so in one line and ends by the signal."""
    import signal

    code, err, statuses = _stopped_midway(tmp_path, signal.SIGINT)
    assert code == -signal.SIGINT, err[-2000:]  # ended by the signal, as a shell expects
    assert err.rstrip().splitlines()[-1] == "engage run: interrupted (Ctrl-C)", err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert statuses == ["KILLED"], err[-2000:]


@pytest.mark.slow
def test_sigterm_during_training_ends_the_run_killed_and_says_so(tmp_path):
    """``scancel`` or a supervisor's SIGTERM: Lightning stops the fit at the next step; the run is
    KILLED, the line names SIGTERM (not Ctrl-C) and the program ends by SIGTERM."""
    import signal

    code, err, statuses = _stopped_midway(tmp_path, signal.SIGTERM)
    assert code == -signal.SIGTERM, err[-2000:]
    assert err.rstrip().splitlines()[-1] == "engage run: terminated (SIGTERM)", err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert statuses == ["KILLED"], err[-2000:]


@pytest.mark.slow
def test_ddp_fits_of_a_sweep_start_their_other_rank_through_engage_run(tmp_path):
    """Lightning starts the other ranks with this process's command line: ``engage run`` and the
    job's overrides, not Hydra's view of it (which lacks the program and its command); the second
    job of a sweep in the same process starts ranks of its own, not joining the first's group."""
    result = engage(
        "run", "-m", *TINY, "data.train_simulations=4", "strategy=ddp", "trainer.devices=2", "seed=1,2", cwd=tmp_path,
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2  # each job's rank 1
    # each job is judged and reported on all it was asked for, both ranks' shares added up
    ended = _stderr_lines(result, prefix="simulations: ")
    assert len(ended) == 2 and all(line.startswith("simulations: 4 requested, 4 completed") for line in ended), ended
    _, runs = _runs(tmp_path)
    # the sweep's parent run and one run per job (rank 0's), every one finished
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3
    assert sorted(r.data.params.get("seed") for r in runs if "seed" in r.data.params) == ["1", "2"]
    # each job's table of simulations holds both ranks' (rank 0 records what every rank ran)
    client, job = (
        MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
        next(r for r in runs if "seed" in r.data.params),
    )
    table = json.loads(
        Path(client.download_artifacts(job.info.run_id, "online/simulations.json", str(tmp_path))).read_text()
    )
    assert sorted(row[table["columns"].index("simulation_id")] for row in table["data"]) == [0, 1, 2, 3]
    assert "online/rank0/done" in job.data.metrics and "online/done" not in job.data.metrics  # rank 0's own count
    # the held-out simulation of each job ran once, on rank 0, and both ranks validated on it
    validations = sorted(p.parent.parent.name for p in tmp_path.rglob("validation/journal.jsonl"))
    assert validations == ["rank0", "rank0"], validations
    assert all("val/loss" in r.data.metrics for r in runs if "seed" in r.data.params)


def _failing_simulator(tmp_path: Path, fails: str) -> list[str]:
    """Overrides of a command simulator (the travelling-wave example) whose script first runs the
    shell line ``fails`` (``$2``: the simulation's id; ``LOCAL_RANK``: the rank)."""
    import stat

    example = Path(__file__).parents[1] / "src" / "engage" / "core" / "simulators" / "examples" / "travelling_wave.py"
    script = tmp_path / "sim.sh"
    script.write_text(f'#!/bin/sh\n{fails}\nexec "{sys.executable}" "{example}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [
        "simulator=command",
        f'simulator.argv=[{script},"{{address}}","{{simulation_id}}","{{attempt}}","20"]',
        "++simulator.parameters={frequency: {low: 0.5, high: 2}, damping: {low: 0, high: 0.5}}",
    ]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("rank", "first"), [(1, 3), (0, 2)])
def test_a_ddp_rank_that_fails_is_reported_by_rank_zero_in_one_line_and_its_counts_as_its_own(rank, first, tmp_path):
    """A rank's simulations fail for good: rank 0 ends the run FAILED with exit code 4 and one line
    naming that rank and its cause (not the connection it lost, nor Lightning's kill of every
    rank, nor counts that are only that rank's share), and records its own counts as its own,
    since the other rank's cannot be added up any more."""
    fails = f'if [ "${{LOCAL_RANK:-0}}" = {rank} ] && [ "$2" -ge {first} ]; then echo "no such file" >&2; exit 1; fi'
    result = engage(
        "run", *_failing_simulator(tmp_path, fails), "data.simulations=8", "data.val_simulations=1",
        "data.batches_per_epoch=10", "trainer.max_epochs=2", "model.width=4", "strategy=ddp", "trainer.devices=2",
        "data.retries=0", "trainer.enable_progress_bar=false", cwd=tmp_path, timeout=280,
    )  # fmt: skip
    assert result.returncode == 4, result.stderr[-3000:]
    last = result.stderr.rstrip().splitlines()[-1]
    assert last.startswith(
        f"engage run: online run failed: rank {rank} of 2 failed: simulation scheduler failed: "
        f"simulation {first} failed"
    ), result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len(_stderr_lines(result)) == 1, result.stderr[-3000:]
    _, (run,) = _runs(tmp_path)
    assert run.info.status == "FAILED"
    assert run.data.tags["engage.error"].startswith(f"online run failed: rank {rank} of 2 failed")
    assert "online/simulations_completed" not in run.data.metrics  # no false total
    assert run.data.metrics["online/rank0/simulations_requested"] == 4  # rank 0's share, as its own
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    logs = {a.path for a in client.list_artifacts(run.info.run_id, "run")}
    assert {"run/run.log", "run/train_ddp_process_1.log"} <= logs  # the failing rank's own log too
    assert {a.path for a in client.list_artifacts(run.info.run_id, "online")} >= {"online/simulations_rank0.json"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_held_out_simulations_run_on_rank_zero_alone_whose_failure_ends_every_rank(tmp_path):
    """Under DDP the held-out simulations run once, on rank 0, and reach the other ranks; when one
    of them fails, rank 0 says why in one line and the other rank ends with it, quietly."""
    # the first simulation of each rank fails: on rank 0 that is the held-out one (held-out
    # simulations run before training streams); a rank 1 that ran held-out simulations would fail too
    marker = f'marker="{tmp_path}/started-rank${{LOCAL_RANK:-0}}"'
    fails = f'{marker}; if [ ! -e "$marker" ]; then touch "$marker"; echo "bad mesh" >&2; exit 1; fi'
    result = engage(
        "run", *_failing_simulator(tmp_path, fails), "data.simulations=4", "data.val_simulations=1",
        "data.batches_per_epoch=4", "trainer.max_epochs=1", "model.width=4", "strategy=ddp", "trainer.devices=2",
        "data.retries=0", "trainer.enable_progress_bar=false", cwd=tmp_path, timeout=280,
    )  # fmt: skip
    assert result.returncode == 4, result.stderr[-3000:]
    lines = _stderr_lines(result)
    assert len(lines) == 1 and "held-out simulation 0 failed" in lines[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "started-rank1").exists()  # rank 1 started no simulation of its own
    _, (run,) = _runs(tmp_path)
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_a_ddp_rank_ends_with_the_rank_that_started_it(tmp_path):
    import os
    import subprocess
    import sys
    import time

    import psutil

    rank0 = subprocess.Popen(
        [sys.executable, "-m", "engage.core.cli", "run", *TINY, "strategy=ddp",
         "trainer.devices=2", "trainer.limit_train_batches=null", "+callbacks.pace._target_=engage_test_pace.Pace"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent / "fixtures")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    rank1, deadline = None, time.monotonic() + 120
    try:
        while rank1 is None and rank0.poll() is None and time.monotonic() < deadline:
            for child in psutil.Process(rank0.pid).children():
                try:
                    if child.environ().get("LOCAL_RANK") == "1" and child.cpu_times().user > 2:
                        rank1 = child  # started, and well into its run
                except psutil.Error:
                    continue
            time.sleep(0.1)
        assert rank1 is not None, "rank 1 was never seen"
    finally:
        rank0.kill()
        rank0.wait(30)
    _, alive = psutil.wait_procs([rank1], timeout=15)
    assert not alive, "rank 1 outlived the rank that started it"


def test_resuming_without_a_checkpoint_is_refused_before_anything_starts(tmp_path):
    result = engage("run", *TINY, "ckpt_path=last", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = _stderr_lines(result)
    assert "ckpt_path=last: no checkpoint in the run folder" in line
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "run").exists()  # refused before Hydra makes the run's folder
    result = engage("run", *TINY, "ckpt_path=gone.ckpt", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = _stderr_lines(result)
    assert "ckpt_path=gone.ckpt: no such checkpoint file" in line
    assert not (tmp_path / "outputs").exists()


def test_an_unknown_executor_or_its_options_are_refused_before_anything_starts(tmp_path):
    result = engage("run", *TINY, "data.executor=nosuch", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = _stderr_lines(result)
    assert "data.executor 'nosuch' is unknown; installed:" in line and "slurm" in line, line
    result = engage("run", *TINY, "+data.executor_options.colour=red", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = _stderr_lines(result)
    assert "data.executor_options.colour: unknown key; allowed: log_dir" in line, line
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "outputs").exists()  # refused before Hydra makes the run's folder
    result = engage("run", *TINY, "data.executor_options={log_dir: x}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = _stderr_lines(result)
    assert "write ++data.executor_options={log_dir: x} to add data.executor_options.log_dir" in line, line


@pytest.mark.slow
def test_a_killed_run_resumes_with_ckpt_path_last_and_loses_no_sample(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "run"
    args = [
        *TINY, "simulator.steps=8", "data.train_simulations=3", "data.batch_size=2", "data.capacity=4",
        "data.policy=fifo", "data.max_reads=1", "trainer.limit_train_batches=null", "checkpoint_every_n_steps=1",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-m", "engage.core.cli", "run", *args, "+callbacks.pace._target_=engage_test_pace.Pace"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent / "fixtures")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not list(run_dir.rglob("*.ckpt")) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL
    # the run SIGKILL could not end is ended FAILED by its guard, saying why
    deadline = time.time() + 30
    while (before := _runs(tmp_path)[1])[0].info.status == "RUNNING":
        assert time.time() < deadline, "the killed run stayed RUNNING"
        time.sleep(0.2)
    assert before[0].info.status == "FAILED" and before[0].info.end_time is not None
    assert f"its process (pid {first.pid} on " in before[0].data.tags["engage.error"]
    assert (
        "ended without ending the run: killed by a signal Python cannot handle" in before[0].data.tags["engage.error"]
    )
    # and names its online run (journal, folder), tagged as training began
    assert [len(r.data.tags.get("engage.online_run_id", "")) for r in before] == [32]
    # the checkpoint of another simulator is refused before anything starts, naming what differs
    other = [a.replace("simulator.steps=8", "simulator.steps=9") for a in args]
    refused = engage("run", *other, "ckpt_path=last", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-3000:]
    (line,) = _stderr_lines(refused)
    assert "another simulator" in line and "samples_per_run: 8 -> 9" in line, line
    # and one of other physics, which the simulator's description does not show
    hotter = engage("run", *args, "simulator.alpha=0.5", "ckpt_path=last", cwd=tmp_path)
    assert hotter.returncode == 2, hotter.stderr[-3000:]
    (line,) = _stderr_lines(hotter)
    assert "other simulator settings" in line and "kwargs.alpha: " in line and " -> 0.5" in line, line
    # and so is one whose weights do not fit the model (another width), naming the first weight
    wider = engage("run", *[a.replace("model.width=4", "model.width=6") for a in args], "ckpt_path=last", cwd=tmp_path)
    assert wider.returncode == 2, wider.stderr[-3000:]
    (line,) = _stderr_lines(wider)
    assert "the checkpoint's weights do not fit this model (time_net.0.weight: saved (16, 1), now (24, 1)" in line, line
    assert len(_runs(tmp_path)[1]) == len(before)
    result = engage("run", *args, "ckpt_path=last", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "simulations: 3 requested, 3 completed, 0 failed, 0 given up; samples: 24 received, 24 trained" in (
        result.stderr
    )
    # the run is over, and its newest checkpoint is its last step's, written at its epoch's end:
    # resuming it again is refused before anything starts
    again = engage("run", *args, "ckpt_path=last", cwd=tmp_path)
    assert again.returncode == 2, again.stderr[-3000:]
    (line,) = _stderr_lines(again)
    assert "nothing left to train, the checkpoint reached trainer.max_epochs=1 (1 epochs trained)" in line, line


@pytest.mark.slow
def test_a_tracking_server_that_dies_during_the_run_ends_it_in_one_line(tmp_path):
    """MLflow retries each request for minutes by default, and a run logs hundreds: the run ends
    within about a minute, with exit code 3 and one line saying what to do, and sends the dead
    server nothing more."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--workers", "1", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url, run_dir = f"http://127.0.0.1:{port}", tmp_path / "run"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.3)
        args = [*TINY, "simulator.steps=40", "data.policy=fifo", "trainer.limit_train_batches=null",
                f"logger.uri={url}", f"hydra.run.dir={run_dir}",
                "+callbacks.pace._target_=engage_test_pace.Pace"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "fixtures")}
        env = {k: v for k, v in env.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"  # the user's own setting wins over the run's bound
        run = subprocess.Popen([sys.executable, "-m", "engage.core.cli", "run", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while not (run_dir / "engage-mlflow-run.json").exists() and run.poll() is None:
            assert time.monotonic() < deadline, "the run did not open its MLflow run"
            time.sleep(0.1)
        time.sleep(2)  # training has begun, and logged to the server
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    killed = time.monotonic()
    _, err = run.communicate(timeout=180)
    assert run.returncode == 3, err[-3000:]
    assert time.monotonic() - killed < 60  # MLflow's own retries would take many minutes
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"engage run: MLflow server {url} stopped answering during the run ("), last
    assert f"resume with hydra.run.dir={run_dir} ckpt_path=last" in last, last
    assert "Traceback" not in err, err[-3000:]


def test_mlflow_http_retries_are_bounded_for_a_server_unless_the_user_set_them(monkeypatch):
    import os

    from engage.core.tracking.store import bound_http_requests

    for name in ("MAX_RETRIES", "BACKOFF_FACTOR", "TIMEOUT"):
        monkeypatch.delenv(f"MLFLOW_HTTP_REQUEST_{name}", raising=False)
    bound_http_requests("sqlite:///x.db")
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # a file store has no requests
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "3")
    bound_http_requests("http://127.0.0.1:5000")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "4"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "3"  # the user's own
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ  # MLflow's: an upload may take a while


def test_a_failed_jobs_line_is_printed_again_only_where_its_process_wrote_it_elsewhere(tmp_path):
    """joblib's workers share the console; submitit's write to their own logs."""
    import pickle
    import subprocess
    import sys

    from engage.core.run import RunFailed

    assert pickle.loads(pickle.dumps(RunFailed("x", 4))).printed_here  # a job of this process
    assert not RunFailed("x", 4, printed=False).printed_here
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):  # a stream without a file: this process's own
        assert pickle.loads(pickle.dumps(RunFailed("x", 4))).printed_here
    code = (
        "import pickle, sys; from engage.core.run import RunFailed; "
        "sys.stdout.buffer.write(pickle.dumps(RunFailed('x', 4)))"
    )
    with open(tmp_path / "job.err", "w") as log:  # the job's standard error is a log file
        done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=log, check=True)
    assert not pickle.loads(done.stdout).printed_here


def test_a_run_whose_training_diverged_fails(tmp_path):
    """A learning rate far too high: the metrics are nan, which a sweeper optimising them or a
    reader of the end line would take for a result: the run fails, in one line, FAILED."""
    result = engage("run", *TINY, "model.lr=1e30", cwd=tmp_path)
    assert result.returncode == 4, result.stderr[-3000:]
    (line,) = _stderr_lines(result)
    assert line.startswith("engage run: training diverged: ") and "val/rel_l2" in line, line
    assert "lower model.lr" in line, line
    _, runs = _runs(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["engage.error"].startswith("training diverged: ")


@pytest.mark.slow
def test_a_resumed_fit_with_no_sample_left_writes_no_checkpoint_and_says_what_to_raise(tmp_path):
    """Resumed where its simulations were all trained, a fit trains nothing and fails; it wrote
    a checkpoint of its empty epoch before, from which the next resume skipped that epoch."""
    run_dir = tmp_path / "run"
    args = [
        *TINY, "data.policy=fifo", "data.max_reads=1", "data.batch_size=2", "data.capacity=10",
        "data.val_simulations=0", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    first = engage("run", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    written = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    # settings the checkpoint cannot be resumed with: one line, exit 2, no run
    for change, said in (
        ("data.train_simulations=1", "data.simulations: the checkpoint's run completed 2 simulations already"),
        (
            "data.policy=reservoir",
            "data.policy: the checkpoint's buffer is of policy 'fifo', this run's of 'reservoir'",
        ),
    ):
        refused = engage("run", *args, "trainer.max_epochs=2", change, "ckpt_path=last", cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr[-3000:]
        (line,) = _stderr_lines(refused)
        assert said in line, line
    assert len(_runs(tmp_path)[1]) == 1
    empty = engage("run", *args, "trainer.max_epochs=2", "ckpt_path=last", cwd=tmp_path)
    assert empty.returncode == 4, empty.stderr[-3000:]
    line = _stderr_lines(empty)[-1]
    assert "no batch was trained in this fit" in line and "no sample left to train" in line, line
    assert "raise data.simulations, or data.train_simulations" in line, line
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == written
    # with more simulations, the second epoch is trained, not skipped
    more = engage("run", *args, "trainer.max_epochs=2", "data.train_simulations=4", "ckpt_path=last", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert (run_dir / "checkpoints" / "epoch=1-step=10.ckpt").is_file(), sorted(os.listdir(run_dir / "checkpoints"))


def test_a_requeued_job_neither_fails_nor_ends_its_sweep(tmp_path):
    """Slurm requeued a job (exit 75): it goes on in its next incarnation; the sweep's run stays
    RUNNING (it was FAILED for minutes, until the sweep's end put it right)."""
    from hydra.core.utils import JobReturn, JobStatus

    from engage.core.run import EXIT_REQUEUED, RunFailed

    client, _, parent, callback = _sweep_callback(tmp_path)
    job = JobReturn(status=JobStatus.FAILED)
    job._return_value = RunFailed("job 22_0 requeued at step 4022", EXIT_REQUEUED)
    callback.on_job_end(None, job)
    assert client.get_run(parent).info.status == "RUNNING" and callback.counts == {"completed": 0, "failed": 0}


def _sweep_callback(tmp_path):
    """An MLflow store with a sweep's run, and the sweep callback holding it:
    ``(client, experiment id, sweep run id, callback)``."""
    from mlflow import MlflowClient

    from engage.core.tracking.sweep import MLflowSweepCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("sweeps")
    parent = client.create_run(experiment, run_name="s", tags={"engage.kind": "sweep"}).info.run_id
    callback = MLflowSweepCallback()
    callback.run_id, callback.tracking_uri = parent, uri
    return client, experiment, parent, callback
