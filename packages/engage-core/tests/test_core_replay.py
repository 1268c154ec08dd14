"""``engage replay RUN_ID``: any run of ``engage run`` replays from its MLflow record; a deterministic
CPU run, offline or online with ``data.policy=deterministic``, replays with identical curves."""

import socket
import time

import pytest
from mlflow.tracking import MlflowClient

from engage.core.replay import NOT_COMPARED, compare_curves, config_flags, is_timing
from engage.core.testing.process import run_engage as engage

SMALL = ["simulator.grid=8", "simulator.steps=20", "model.width=8", "trainer.log_every_n_steps=1", "seed=5"]
OFFLINE = ["data=simulated", "data.train_simulations=4", "data.val_simulations=1", "trainer.max_epochs=2"]
ONLINE = [
    "experiment=heat_quick",
    "data.simulations=4",
    "data.val_simulations=1",
    "data.batches_per_epoch=3",
    "data.batch_size=8",
    "data.capacity=32",
    "data.policy=deterministic",
    "trainer.max_epochs=2",
]


def replay_of(args, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = engage("run", *args, *SMALL, f"logger.uri={uri}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("engage").experiment_id])
    again = engage("replay", run.info.run_id, "--tracking-uri", uri, cwd=tmp_path)
    copies = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`engage.replay_of` = '{run.info.run_id}'"
    )
    return again, run, copies


@pytest.mark.slow
def test_a_plain_run_replays_with_identical_curves(tmp_path):
    again, run, copies = replay_of(OFFLINE, tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "train/loss:" in again.stdout and "points match (largest difference 0)" in again.stdout
    assert f"replay of {run.info.run_id}: run {copies[0].info.run_id} in " in again.stdout
    assert again.stdout.rstrip().endswith(", metrics identical")
    assert len(copies) == 1 and copies[0].info.status == "FINISHED"
    # the verdict is the replay run's own record
    assert copies[0].data.tags["engage.replay_verdict"] == "identical"


@pytest.mark.slow
def test_a_deterministic_online_run_replays_with_identical_curves(tmp_path):
    again, _, copies = replay_of(ONLINE, tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    out = again.stdout
    assert "metrics identical" in out
    # the loss curve is compared point by point; the stream's timing is reported apart
    compared, timing = out.split("compared within")[-1].split(NOT_COMPARED)
    assert "train/loss: 6 points match" in compared
    assert "online/smp/s:" in timing and "online/smp/s" not in compared
    # what training took from the stream does not depend on its timing under this policy
    assert "online/samples_trained: 1 points match" in compared and "online/samples_trained" not in timing
    assert len(copies) == 1


def test_a_run_that_is_not_there_is_one_line_and_exit_code_2(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"

    def replay_missing():
        return engage("replay", "0" * 32, "--tracking-uri", uri, cwd=tmp_path, timeout=120)

    done = replay_missing()
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"engage replay: there is no MLflow store at {uri}; pass --tracking-uri"
    ]
    # a path is an SQLite store, as the default ./mlflow.db is (MLflow's file store is retired)
    as_path = engage("replay", "0" * 32, "--tracking-uri", str(tmp_path / "m.db"), cwd=tmp_path, timeout=120)
    assert as_path.returncode == 2 and as_path.stderr.strip().splitlines()[-1].startswith(
        f"engage replay: there is no MLflow store at {uri}"
    )
    MlflowClient(uri).search_experiments()  # the store now exists, without that run
    done = replay_missing()
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"engage replay: run {'0' * 32} is not in the tracking store {uri}; pass --tracking-uri"
    )
    # a prefix of an id, as MLflow's UI shows them, is no id
    short = engage("replay", "0" * 8, "--tracking-uri", uri, cwd=tmp_path, timeout=120)
    assert short.returncode == 2 and short.stderr.strip().splitlines()[-1] == (
        "engage replay: '00000000' is no MLflow run id (32 hexadecimal digits); copy the whole id of the run"
    )
    # a server that does not answer is said at once (MLflow's client would retry for minutes)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    down = engage("replay", "0" * 32, "--tracking-uri", f"http://127.0.0.1:{port}", cwd=tmp_path, timeout=120)
    assert down.returncode == 2 and time.monotonic() - started < 60
    assert down.stderr.strip().splitlines()[-1].startswith(f"engage replay: MLflow server http://127.0.0.1:{port} is ")


def test_curves_compare_within_the_declared_tolerance():
    assert compare_curves("loss", [(0, 1.0), (1, 0.5)], [(0, 1.0), (1, 0.5 + 1e-9)], rtol=1e-6, atol=0).matches
    assert not compare_curves("loss", [(0, 1.0), (1, 0.5)], [(0, 1.0), (1, 0.51)], rtol=1e-6, atol=0).matches
    assert not compare_curves("loss", [(0, 1.0), (1, 0.5)], [(0, 1.0)], rtol=1, atol=1).matches  # a step missing
    assert compare_curves("loss", [(0, 1.0)], [(0, 1.05)], rtol=0, atol=0.1).matches


def test_timing_metrics_and_config_flags_are_told_apart():
    assert all(map(is_timing, ["system/cpu_utilization_percentage", "online/smp/s", "run/wall_time_s", "x/wait"]))
    assert not any(map(is_timing, ["train/loss", "val/rel_l2", "epoch", "sampling/exploration"]))
    assert is_timing("online/samples_trained") and not is_timing("online/samples_trained", "deterministic")
    assert is_timing("online/samples_received", "deterministic")  # what arrived depends on when training ended
    argv = ["-m", "-cd", "conf", "-cn", "train", "--config-path=p", "model.lr=0.1"]
    assert config_flags(argv) == ["-cd", "conf", "-cn", "train", "--config-path=p"]


def test_a_replay_that_differs_says_when_the_read_order_is_why(monkeypatch, capsys):
    import argparse

    from engage.core import replay as module

    different = compare_curves("train/loss", [(0, 1.0)], [(0, 0.9)], rtol=1e-6, atol=0)
    result = module.ReplayResult("a" * 32, "b" * 32, 0, [different], output_dir="/out", policy="reservoir")
    monkeypatch.setattr(module, "replay", lambda *args: result)
    namespace = argparse.Namespace(run_id="a" * 32, tracking_uri=None, output_dir=None, rtol=1e-6, atol=0.0)
    assert module.run_command(namespace) == 1
    out = capsys.readouterr().out
    assert "data.policy=reservoir, in an order that depends on when they arrive" in out
    assert out.rstrip().endswith(f"replay of {'a' * 32}: run {'b' * 32} in /out, metrics DIFFERENT")


def test_a_replay_of_a_failed_run_says_whether_it_failed_again(monkeypatch, capsys):
    import argparse

    from engage.core import replay as module

    namespace = argparse.Namespace(run_id="a" * 32, tracking_uri=None, output_dir=None, rtol=1e-6, atol=0.0)
    why = "online run failed: 1 of 4 simulations completed"
    failed_again = module.ReplayResult(
        "a" * 32, "b" * 32, 4, output_dir="/out", policy="reservoir", original_status="FAILED",
        original_error=why, replay_error=why,
    )  # fmt: skip
    monkeypatch.setattr(module, "replay", lambda *args: failed_again)
    assert failed_again.verdict == "failure reproduced" and module.run_command(namespace) == 0
    out = capsys.readouterr().out
    assert f"the original run failed: {why}" in out and f"the replay exited with code 4: {why}" in out
    assert "data.policy" not in out  # no curve was compared: the read order is not why
    assert out.rstrip().endswith(f"replay of {'a' * 32}: run {'b' * 32} in /out, failure reproduced")
    # a failed run whose replay finished, or failed for another cause, is a different outcome
    finished = module.ReplayResult("a" * 32, "b" * 32, 0, output_dir="/out", original_status="FAILED")
    elsewhere = module.ReplayResult(
        "a" * 32, "b" * 32, 2, output_dir="/out", original_status="FAILED", original_error=why,
        replay_error="simulator.argv: program './wave' not found",
    )  # fmt: skip
    for outcome in (finished, elsewhere):
        monkeypatch.setattr(module, "replay", lambda *args, outcome=outcome: outcome)
        assert outcome.verdict == "different" and module.run_command(namespace) == 1
        assert capsys.readouterr().out.rstrip().endswith(", DIFFERENT")


def test_a_resumed_run_replays_from_the_checkpoint_it_resumed_from(tmp_path):
    """Its ``ckpt_path=last`` would name the replay's own new folder, which holds none."""
    from types import SimpleNamespace

    from engage.core.replay import ReplayError, _from_the_same_checkpoint

    def run(**tags):
        return SimpleNamespace(info=SimpleNamespace(run_id="a" * 32), data=SimpleNamespace(tags=tags))

    checkpoint = tmp_path / "epoch=4-step=25.ckpt"
    checkpoint.write_bytes(b"")
    overrides = ["seed=1", "ckpt_path=last"]
    resumed = run(**{"engage.resumed_from": str(checkpoint)})
    assert _from_the_same_checkpoint(resumed, overrides) == (["seed=1", f"ckpt_path='{checkpoint}'"], None)
    assert _from_the_same_checkpoint(run(), ["seed=1", "ckpt_path=null"]) == (["seed=1", "ckpt_path=null"], None)
    link = tmp_path / "last.ckpt"  # a run recorded before the tag named the file itself
    link.symlink_to(checkpoint.name)
    _, warning = _from_the_same_checkpoint(run(**{"engage.resumed_from": str(link)}), overrides)
    assert warning is not None and f"now points at {checkpoint}" in warning
    link.unlink()
    checkpoint.unlink()
    with pytest.raises(ReplayError, match=r"resumed from .*epoch=4-step=25.ckpt, which no longer exists"):
        _from_the_same_checkpoint(resumed, overrides)
    with pytest.raises(ReplayError, match=r"resumed from a checkpoint \(ckpt_path=last\) it did not record"):
        _from_the_same_checkpoint(run(), overrides)


def test_a_replay_says_which_config_values_differ_from_the_runs():
    """A config file edited since the run: the replay runs the new values, and says so."""
    from engage.core.replay import config_drift

    run = {"model.width": "16", "seed": "1", "ckpt_path": "last"}
    assert config_drift(run, {**run, "ckpt_path": "'/x/epoch=0-step=2.ckpt'"}) == ""
    assert config_drift(run, {**run, "model.width": "24", "model.lr": "0.1"}) == (
        "model.lr: (none) -> 0.1; model.width: 16 -> 24"
    )
