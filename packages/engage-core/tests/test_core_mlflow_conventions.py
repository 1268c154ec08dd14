"""``engage run`` and MLflow's conventions: the store and experiment from the command line, then
``MLFLOW_TRACKING_URI`` / ``MLFLOW_EXPERIMENT_NAME``; run names that say what a run is and are
never reused; each config value once; system metrics; checkpoints, the simulation table and the
sampled points as artifacts; a sweep with a failing job leaves every child and a FAILED parent."""

import json
import os

import pytest
from mlflow.tracking import MlflowClient

from engage.core.testing.process import run_engage

#: a few seconds of online training that still writes a checkpoint (fast_dev_run writes none)
TINY = [
    "experiment=heat_quick",
    "simulator.grid=8",
    "simulator.steps=10",
    "data.simulations=2",
    "data.val_simulations=1",
    "data.batches_per_epoch=2",
    "data.batch_size=8",
    "trainer.max_epochs=1",
    "model.width=8",
]


def engage_run(args, cwd, env=None):
    return run_engage("run", *args, cwd=cwd, env=env)


def only_run(uri, experiment):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, [e.name for e in client.search_experiments()]
    (run,) = client.search_runs([found.experiment_id])
    return client, run


def artifacts(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


@pytest.mark.slow
def test_single_runs_follow_mlflow_conventions(tmp_path):
    env_store, cli_store = f"sqlite:///{tmp_path}/env.db", f"sqlite:///{tmp_path}/cli.db"
    env = {"MLFLOW_TRACKING_URI": env_store, "MLFLOW_EXPERIMENT_NAME": "from-env"}
    first = engage_run([*TINY, "logger.system_metrics_interval_s=0.5"], tmp_path, env)
    assert first.returncode == 0, first.stderr[-2000:]
    # the command line wins over the environment; a checkpoint over the size cap is said, not logged
    second = engage_run(
        [*TINY, f"logger.uri={cli_store}", "logger.experiment=from-cli", "logger.checkpoint_max_mb=0.01"], tmp_path, env
    )
    assert second.returncode == 0, second.stderr[-2000:]
    assert not (tmp_path / "mlflow.db").exists()

    client, run = only_run(env_store, "from-env")
    _, other = only_run(cli_store, "from-cli")
    # same seed, different names, each saying what the run is
    assert run.info.run_name.startswith("heat_quick-") and other.info.run_name.startswith("heat_quick-")
    assert run.info.run_name != other.info.run_name
    assert run.data.tags["engage.experiment"] == "heat_quick"  # a tag to filter runs on
    assert f"run {run.info.run_name} ({run.info.run_id}) finished" in first.stderr
    # a quiet console: no tips, no warning from ENGAGE's own dataset, counts as integers
    console = first.stdout + first.stderr
    for noise in ("Tip:", "IterableDataset", "LeafSpec", "Experiment with name"):
        assert noise not in console, noise
    assert "online/done: 2 " in first.stdout and "online/done: 2.0" not in first.stdout

    params = run.data.params
    assert params["model.width"] == "8" and params["simulator.grid"] == "8" and params["seed"] == "0"
    for duplicate in ("width", "grid", "lr", "data.simulator_spec.grid", "data.seed"):
        assert duplicate not in params, duplicate
    assert not [k for k in params if k.startswith("data.simulator_spec")]

    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics

    files = artifacts(client, run.info.run_id)
    assert "checkpoints/last.ckpt" in files, files
    assert {"run/config.yaml", "run/overrides.json", "run/command.json", "run/requirements.txt"} <= set(files)
    assert {"online/sampled_points_by_order.png", "online/sampled_points_by_loss.png"} <= set(files)
    # the simulations' timeline, heard through the event hooks by an observer of the run
    assert "online/simulation_timeline.png" in files
    table = json.loads(
        open(client.download_artifacts(run.info.run_id, "online/simulations.json", str(tmp_path))).read()
    )
    names = ["T_init", "T_top", "T_bottom", "T_left", "T_right"]
    assert table["columns"][:6] == ["simulation_id", *names]
    assert {"status", "samples", "duration_s", "mean_train_loss"} <= set(table["columns"])
    assert len(table["data"]) == 2 and all(row[6] == "finished" for row in table["data"])

    assert not [f for f in artifacts(MlflowClient(cli_store), other.info.run_id) if f.startswith("checkpoints/")]
    assert "larger than logger.checkpoint_max_mb=0.01: not logged to MLflow" in second.stderr


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_with_a_failing_job_keeps_every_child_and_fails_its_parent(tmp_path, launcher):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # the middle job's simulations cannot connect in 1 ms: that job fails, the others run
    sweep = ["-m", f"hydra/launcher={launcher}", *TINY, "trainer.fast_dev_run=true", "data.startup_timeout=60,0.001,60"]
    if launcher == "joblib":
        sweep.append("hydra.launcher.n_jobs=2")
    done = engage_run([*sweep, f"logger.uri={uri}", f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert done.returncode == 4, done.stderr[-3000:]
    assert "did not connect within 0.001s" in done.stderr

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("engage").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert parent.info.status == "FAILED"
    assert parent.info.run_name.startswith("sweep-")
    sweep_name = parent.info.run_name
    assert sorted(children) == [
        f"{sweep_name}#0 data.startup_timeout=60",
        f"{sweep_name}#1 data.startup_timeout=0.001",
        f"{sweep_name}#2 data.startup_timeout=60",
    ]
    statuses = {name.split("#")[1][0]: run.info.status for name, run in children.items()}
    assert statuses == {"0": "FINISHED", "1": "FAILED", "2": "FINISHED"}
    assert parent.data.metrics["jobs_failed"] == 1 and parent.data.metrics["jobs"] == 3


@pytest.mark.slow
def test_a_sweep_named_by_run_name_names_its_jobs_after_it(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = ["-m", *TINY, "trainer.fast_dev_run=true", "logger.run_name=mysweep", "model.lr=0.001,0.003"]
    done = engage_run([*sweep, f"logger.uri={uri}", f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("engage").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "mysweep"
    assert sorted(r.info.run_name for r in runs if r is not parent) == [
        "mysweep#0 model.lr=0.001",
        "mysweep#1 model.lr=0.003",
    ]
    # the sweep's end says how it went, and which job did best, on the console and on its run
    best = min((r for r in runs if r is not parent), key=lambda r: r.data.metrics["val/rel_l2"])
    assert parent.data.metrics["best/val/rel_l2"] == best.data.metrics["val/rel_l2"]
    assert parent.data.tags["engage.best_job"] == best.info.run_name
    summary = f"sweep mysweep ({parent.info.run_id}) FINISHED: 2 jobs, 0 failed; best val/rel_l2="
    assert summary in done.stderr and f"({best.info.run_name})" in done.stderr, done.stderr[-2000:]


@pytest.mark.slow
def test_a_run_in_its_own_folder_logs_to_the_store_of_the_folder_it_started_in(tmp_path):
    """hydra.job.chdir=true makes the run's folder the working directory; the store, and its
    artifacts, stay where a sweep started in the same folder keeps them."""
    done = engage_run([*TINY, "trainer.fast_dev_run=true", "hydra.job.chdir=true", "hydra.run.dir=runs/a"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list((tmp_path / "runs" / "a").glob("mlflow.db")) and not (tmp_path / "runs" / "a" / "mlruns").exists()
    client, run = only_run(f"sqlite:///{tmp_path}/mlflow.db", "engage")
    assert run.info.artifact_uri.startswith(f"{tmp_path}/mlruns/")
    assert artifacts(client, run.info.run_id)


def test_a_requeued_slurm_jobs_next_incarnation_continues_its_mlflow_run(tmp_path, monkeypatch):
    """Inside a Slurm job Lightning resumes a fit from the HPC checkpoint a requeue left in the
    run's folder; ``engage run`` then takes on the MLflow run its earlier incarnation named there
    (set RUNNING again, not recorded twice), instead of opening a second run for the same job.
    Outside Slurm, without that checkpoint, or for another store, a run is a new one."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from engage.core.tracking.mlflow_run import MLflowRun
    from engage.core.training import RUN_FILE, requeued_run

    for name in list(os.environ):
        if name.startswith("SLURM_"):
            monkeypatch.delenv(name)
    store, out = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "run"
    out.mkdir()
    logger = {"experiment": "requeue", "tags": {}, "run_name": None, "system_metrics": False}
    cfg = OmegaConf.create({"logger": {**logger, "system_metrics_interval_s": 1.0}})
    first = MLflowRun.open(cfg, store)
    (out / RUN_FILE).write_text(json.dumps({"run_id": first.run_id, "tracking_uri": store}))
    first.close("SCHEDULED")  # what a requeued incarnation leaves
    MlflowClient(store).set_tag(first.run_id, "engage.error", "job 7 requeued at step 40")  # and why
    trainer = SimpleNamespace(default_root_dir=str(out))
    assert requeued_run(trainer, out, store) is None  # not in Slurm
    for name, value in {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "engage-job", "SLURM_NTASKS": "1"}.items():
        monkeypatch.setenv(name, value)
    assert requeued_run(trainer, out, store) is None  # no HPC checkpoint to resume from
    (out / "hpc_ckpt_1.ckpt").write_bytes(b"")
    assert requeued_run(trainer, out, f"sqlite:///{tmp_path}/other.db") is None  # another store
    continued = requeued_run(trainer, out, store)
    assert continued == first.run_id
    again = MLflowRun.open(cfg, store, continued=continued)
    assert again.continued and again.run_id == first.run_id and again.name == first.name
    client = MlflowClient(store)
    assert client.get_run(first.run_id).info.status == "RUNNING"
    again.close("FINISHED")
    (run,) = client.search_runs([client.get_experiment_by_name("requeue").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["engage.incarnations"] == "2"
    assert "engage.error" not in run.data.tags  # the requeue's line is not the finished run's cause
    # an incarnation that ended otherwise than requeued (FINISHED here) is not taken on again
    fresh = MLflowRun.open(cfg, store, continued=first.run_id)
    assert not fresh.continued and fresh.run_id != first.run_id
    fresh.close("FINISHED")
