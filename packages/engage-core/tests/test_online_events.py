"""Online training's outputs: the samples-arrived hook, the render simulator option, MLflow logging."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engage.core.hookspecs import hookimpl
from engage.core.online.buffer import TrainingBuffer
from engage.core.online.scheduler import SimulationScheduler
from engage.core.plugins import new_plugin_manager
from engage.core.samplers.uniform import UniformSampler
from engage.core.simulators.function import FunctionSimulator

HERE = Path(__file__).parent


class Recorder:
    """Stands for the plugin manager's ``hook`` relay: records the events the scheduler emits."""

    def __init__(self):
        self.arrived: list[tuple[int, int, int]] = []
        self.finished: list[int] = []

    def engage_samples_arrived(self, simulation_id: int, count: int, buffer_size: int) -> None:
        self.arrived.append((simulation_id, count, buffer_size))

    def engage_simulation_started(self, record) -> None:
        pass

    def engage_simulation_finished(self, record) -> None:
        # every sample of a finished simulation has been announced before it counts as finished
        announced = sum(c for sid, c, _ in self.arrived if sid == record.simulation_id)
        assert announced == record.samples_received
        self.finished.append(record.simulation_id)

    def engage_simulation_failed(self, record, error) -> None:
        pass


def test_samples_arrived_is_fired_in_batches_with_every_sample_counted(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    sim = FunctionSimulator(
        "test_online_helpers:ramp",
        {"x": {"low": 1, "high": 2}},
        sample_shape=(8, 8),
        samples_per_run=40,
        kwargs={"steps": 40},
    )
    buffer = TrainingBuffer(capacity=512, policy="fifo")
    hooks = Recorder()
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space, seed=0), buffer, simulations=3, concurrency=3, credit_window=64,
        workdir=str(tmp_path), hooks=hooks,
    )  # fmt: skip
    scheduler.start()
    scheduler.join(120)
    assert scheduler.finished == 3 and len(buffer) == 120
    per_simulation = {sid: sum(c for s, c, _ in hooks.arrived if s == sid) for sid in range(3)}
    assert per_simulation == {0: 40, 1: 40, 2: 40}
    assert sorted(hooks.finished) == [0, 1, 2]
    assert len(hooks.arrived) < 120  # batched: fewer calls than samples
    sizes = [size for _, _, size in hooks.arrived]
    assert sizes == sorted(sizes) and sizes[-1] == 120  # the buffer size after each batch went in


class FailingObserver:
    """A plugin whose observer of finished simulations has a bug."""

    @hookimpl
    def engage_simulation_finished(self, record) -> None:
        raise KeyError("mean_loss")


def test_a_failing_observer_fails_the_run_naming_the_plugin_not_the_simulation(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    sim = FunctionSimulator(
        "test_online_helpers:ramp", {"x": {"low": 1, "high": 2}}, sample_shape=(8, 8), samples_per_run=3,
        kwargs={"steps": 3},
    )  # fmt: skip
    manager = new_plugin_manager([("observer", FailingObserver())], installed=False)
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space, seed=0), TrainingBuffer(capacity=64, policy="fifo"), simulations=2,
        concurrency=1, workdir=str(tmp_path), hooks=manager.hook,
    )  # fmt: skip
    scheduler.start()
    scheduler.join(60)
    assert (
        # registered by code, not installed: nothing to set aside with ENGAGE_DISABLE_PLUGINS
        scheduler.error == "simulation scheduler failed: plugin 'observer' failed in engage_simulation_finished: "
        "KeyError: 'mean_loss'"
    )
    assert scheduler.state.counts.failed == 0  # no simulation is blamed for it


def test_put_many_wakes_readers_once_with_all_samples():
    buffer = TrainingBuffer(capacity=8, policy="fifo", watermark=3)
    samples = [(np.full((2, 2), i, "float32"), np.zeros(1, "float32"), 7, i / 3) for i in range(3)]
    buffer.put_many(samples)
    batch = buffer.get_batch(3, timeout=1)
    assert batch["target"][:, 0, 0].tolist() == [0.0, 1.0, 2.0] and batch["simulation_id"].tolist() == [7, 7, 7]


def test_render_is_a_simulator_option_with_a_structured_config():
    from engage.core.config.validate import ConfigError, compose_config
    from engage.core.plugins import simulators
    from engage.core.simulators.render import ImageRenderer

    assert simulators()["render"] is ImageRenderer
    cfg = compose_config(["simulator=render", "simulator.size=12"])
    from hydra.utils import instantiate

    renderer = instantiate(cfg.simulator)
    assert isinstance(renderer, ImageRenderer) and renderer.sample_shape == (12, 12)
    with pytest.raises(ConfigError, match="size"):
        compose_config(["simulator=render", "simulator.size=2"])


@pytest.mark.slow
def test_online_run_logs_simulation_table_and_progress_to_mlflow(tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    from engage.core.models import HeatSurrogate
    from engage.core.online import OnlineDataModule
    from engage.core.simulators import HeatEquation

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sim = HeatEquation(grid=8, steps=4)
    dm = OnlineDataModule(
        sim, UniformSampler(sim.space, seed=0), simulations=3, concurrency=2, batch_size=4, batches_per_epoch=3,
        capacity=32, val_simulations=1, workdir=str(tmp_path / "online"),
    )  # fmt: skip
    model = HeatSurrogate(5, (8, 8), sim.value_range, width=4, samples_per_run=4)
    logger = MLFlowLogger(experiment_name="online", tracking_uri=uri, save_dir=None)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=logger, log_every_n_steps=1, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(logger.run_id)
    for metric in ("online/buf", "online/run", "online/done", "online/smp/s", "online/data_wait_frac", "val/rel_l2"):
        assert metric in run.data.metrics, metric
    assert 0.0 <= run.data.metrics["online/data_wait_frac"] <= 1.0
    artifacts = [a.path for a in client.list_artifacts(logger.run_id, "online")]
    assert "online/simulations.json" in artifacts
    table_path = client.download_artifacts(logger.run_id, "online/simulations.json", str(tmp_path / "dl"))
    import json

    table = json.loads(Path(table_path).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    finished = {r["simulation_id"] for r in rows if r["status"] == "finished"}
    assert finished == {0, 1, 2}


def test_the_timeline_credits_samples_to_the_live_attempt_whatever_the_run_has_had():
    """Samples go to the simulation's latest attempt still running; finding it is a lookup among
    the live simulations, not a scan of every attempt the run ever had (a run of 100,000
    simulations hears about 100,000 flushes)."""
    import time
    from types import SimpleNamespace

    from engage.core.online.timeline import SimulationTimeline

    def flushes(timeline: SimulationTimeline, n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            timeline.engage_samples_arrived(simulation_id=1, count=1, buffer_size=1)
        return time.perf_counter() - started

    timeline = SimulationTimeline(log_figure=None, run_id="r")
    first, retry = SimpleNamespace(simulation_id=1, attempt=0), SimpleNamespace(simulation_id=1, attempt=1)
    timeline.engage_simulation_started(record=first)
    timeline.engage_simulation_started(record=retry)
    fresh = flushes(timeline, 2000)
    for sim in range(2, 40_002):  # a long run: 40,000 simulations heard of and ended
        record = SimpleNamespace(simulation_id=sim, attempt=0)
        timeline.engage_simulation_started(record=record)
        timeline.engage_simulation_finished(record=record)
    late = flushes(timeline, 2000)
    spans = {(s.simulation_id, s.attempt): s for s in timeline.spans()}
    assert (spans[(1, 0)].samples, spans[(1, 1)].samples) == (0, 4000)  # the latest attempt running
    timeline.engage_simulation_failed(record=retry, error="x")
    timeline.engage_samples_arrived(simulation_id=1, count=7, buffer_size=1)
    assert timeline.spans()[0].samples == 7  # the earlier attempt, still running, takes them now
    # scanning 40,000 spans a flush would take hundreds of times longer
    assert late < 10 * fresh + 0.05, (fresh, late)


def test_the_timeline_figure_reads_whole_ids_and_a_buffer_from_empty():
    from types import SimpleNamespace

    from engage.core.online.timeline import SimulationTimeline

    ticks = iter(range(100))
    timeline = SimulationTimeline(log_figure=None, run_id="r", title="simulations of sweep-1207-0715-e1e7#1 x=1",
                                  clock=lambda: float(next(ticks)))  # fmt: skip
    for sim in (0, 1):
        record = SimpleNamespace(simulation_id=sim, attempt=1)
        timeline.engage_simulation_started(record=record)
        timeline.engage_samples_arrived(simulation_id=sim, count=5, buffer_size=60 + sim)
        timeline.engage_simulation_finished(record=record)
    bars, buffer = timeline.figure().axes
    assert all(float(t).is_integer() for t in bars.get_yticks())  # no tick at simulation id 0.5
    assert buffer.get_ylim()[0] == 0
    assert bars.get_title().splitlines()[1] == "attempts: 2 finished, 0 failed, 0 running at the end"
