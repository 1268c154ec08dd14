"""A run trains on what it reports, or fails naming why: sampler and buffer failures end the fit,
no peer can stop the receiver, unmet budgets fail, runs never share state, resume is explicit."""

from __future__ import annotations

import collections
import json
import random
import struct
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import psutil
import pytest
import torch
import zmq

from engage.core.online import OnlineDataModule, protocol
from engage.core.online.buffer import BufferClosed, TrainingBuffer
from engage.core.online.ledger import TrainingLedger
from engage.core.online.outcome import OnlineRunFailed
from engage.core.online.scheduler import SimulationScheduler
from engage.core.online.security import use_client_keys
from engage.core.samplers.uniform import UniformSampler
from engage.core.simulators.function import FunctionSimulator


def ramp(**kwargs) -> FunctionSimulator:
    return FunctionSimulator(
        "test_online_helpers:ramp", {"x": {"low": 1, "high": 2}}, sample_shape=(8, 8), samples_per_run=6, kwargs=kwargs
    )


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(64, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch["target"].reshape(len(batch["target"]), -1)).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.training_step(batch, batch_idx))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def fit(dm: OnlineDataModule, root: Path, **trainer) -> pl.Trainer:
    options = {"max_epochs": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer = pl.Trainer(accelerator="cpu", default_root_dir=str(root), **{**options, **trainer})
    trainer.fit(Tiny(), datamodule=dm)
    return trainer


def datamodule(sim, sampler=None, **kwargs) -> OnlineDataModule:
    options = {
        "simulations": 2, "concurrency": 2, "batch_size": 4, "batches_per_epoch": 3, "capacity": 16,
        "policy": "fifo", "val_simulations": 0, "heartbeat_interval": 0.2, "heartbeat_timeout": 10,
    }  # fmt: skip
    return OnlineDataModule(sim, sampler or UniformSampler(sim.space, seed=0), **{**options, **kwargs})


class FailingTell(UniformSampler):
    def simulation_finished(self, record):
        raise TypeError("unsupported operand type(s) for -: 'dict' and 'float'")


def test_a_sampler_that_raises_ends_the_fit_with_its_cause(tmp_path, helpers_on_path):
    sim = ramp(delay=0.05)
    dm = datamodule(sim, FailingTell(sim.space), simulations=4, batches_per_epoch=50)
    started = time.monotonic()
    failed = r"sampler FailingTell.simulation_finished failed on simulation \d+: TypeError"
    with pytest.raises(BufferClosed, match=failed):
        fit(dm, tmp_path)
    assert time.monotonic() - started < 60
    assert dm.ledger.samples_trained < 24  # it did not go on with what the buffer held


def test_a_simulator_that_yields_more_than_it_declares_fails_its_attempt_naming_why(tmp_path, helpers_on_path):
    """The trainer grants no credit beyond ``samples_per_run``: a simulation with more to send
    would wait for ever; its process fails the attempt at the first sample too many."""
    dm = datamodule(ramp(steps=8), retries=0)  # 6 declared
    started = time.monotonic()
    with pytest.raises(BufferClosed, match=r"yields more samples than its samples_per_run \(6\)"):
        fit(dm, tmp_path)
    assert time.monotonic() - started < 30
    assert not _running_clients()


def test_a_sample_with_nan_fails_the_run_naming_its_simulation(tmp_path, helpers_on_path):
    """Trained on, a NaN makes the loss NaN and the run would still end as if it had succeeded."""
    dm = datamodule(ramp(nan_at=3), simulations=2, batches_per_epoch=3)
    with pytest.raises(OnlineRunFailed, match=r"simulation [01](, 1)? sent samples with NaN or infinite values"):
        fit(dm, tmp_path)
    assert dm.ledger.batches_trained < 3
    assert not _running_clients()
    # the refused batch left the buffer: counted among the samples not trained, none lost
    outcome = dm.outcome()
    assert outcome.samples_untrained > 0
    assert outcome.samples_received == outcome.samples_trained + outcome.samples_unread + outcome.samples_untrained


def test_samples_outside_the_declared_value_range_are_named_by_their_simulations():
    import numpy as np

    from engage.core.online.datamodule import out_of_range

    target = np.zeros((4, 2, 2), dtype=np.float32)
    batch = {"target": target, "simulation_id": np.array([7, 7, 9, 11])}
    assert out_of_range(batch, (-1.0, 1.0)) is None and out_of_range(batch, None) is None
    target[2, 0, 1], target[3, 1, 1] = 100.5, -3.0
    assert out_of_range(batch, (-1.0, 1.0)) == (
        "simulations 9, 11 sent values from -3 to 100.5, outside the simulator's declared value_range [-1, 1], "
        "which scales the targets; declare the range its samples take"
    )
    target[2, 0, 1], target[3, 1, 1] = 1.0000001, -1.0  # the range's ends, rounded
    assert out_of_range(batch, (-1.0, 1.0)) is None


def test_a_held_out_simulation_that_fails_names_the_fixes_that_apply_to_it(tmp_path, helpers_on_path):
    """Every held-out simulation must complete and none is redrawn: data.on_failure and
    data.min_completed, which the training simulations' line suggests, do not apply to them."""
    dm = datamodule(ramp(steps=8), val_simulations=1, retries=0)
    with pytest.raises(OnlineRunFailed) as error:
        fit(dm, tmp_path)
    line = str(error.value)
    assert "held-out simulation 0 failed after 1 attempts" in line and "lower data.val_simulations" in line, line
    assert "on_failure" not in line and "min_completed" not in line, line


def test_training_that_ends_before_its_simulations_fails_naming_the_fix(tmp_path, helpers_on_path):
    dm = datamodule(ramp(delay=0.2), simulations=4, concurrency=1, batches_per_epoch=1, capacity=8)
    with pytest.raises(OnlineRunFailed, match=r"of 4 simulations completed; data.min_completed=1.0 requires 4"):
        fit(dm, tmp_path)
    assert dm.sampler.num_finished == dm.outcome().completed  # told once per simulation
    outcome = dm.outcome()
    assert outcome.completed < 4 and outcome.batches_trained == 1 and outcome.samples_trained == 4
    # read once each (fifo): every sample received is trained, still unread, or in a batch not trained
    assert outcome.samples_received == outcome.samples_trained + outcome.samples_unread + outcome.samples_untrained
    assert outcome.samples_received > 4 and outcome.samples_unread > 0, outcome  # what training never took is said
    # the failed fit stopped its simulations (Lightning calls no teardown when a fit fails)
    assert not dm.scheduler._thread.is_alive()
    assert not _running_clients()


def _running_clients() -> list[psutil.Process]:
    """This process's simulation clients still running (an ended one not yet reaped is not)."""
    running = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "engage.core.online.client" in child.cmdline():
                running.append(child)
        except psutil.Error:  # ended meanwhile
            pass
    return running


def test_simulations_given_up_end_the_run_at_once(tmp_path, helpers_on_path):
    sim = helpers_on_path.Rogue("shape")
    sim.launch_command = lambda address, sid, attempt: [
        sys.executable, "-m", "test_online_helpers", address, str(sid), "1", "shape"
    ]  # fmt: skip
    dm = datamodule(sim, simulations=3, retries=0, batches_per_epoch=100)
    with pytest.raises(BufferClosed, match=r"given up, so min_completed=1.0 cannot be met"):
        fit(dm, tmp_path)
    assert dm.outcome().given_up >= 1 and dm.outcome().samples_received == 0


def test_min_completed_lets_a_run_end_with_failures_it_accepts(tmp_path, helpers_on_path):
    sim = helpers_on_path.Rogue("shape")
    # simulation 0 always sends a wrong shape; the others behave
    sim.launch_command = lambda address, sid, attempt: [
        sys.executable, "-m", "test_online_helpers", address, str(sid), "1" if sid == 0 else str(attempt),
        "shape" if sid == 0 else "good",
    ]  # fmt: skip
    dm = datamodule(sim, simulations=4, retries=0, batches_per_epoch=100, min_completed=0.75)
    fit(dm, tmp_path)
    outcome = dm.outcome()
    assert (outcome.requested, outcome.completed, outcome.given_up) == (4, 3, 1)
    assert outcome.samples_received == outcome.samples_trained == 18


def test_two_runs_in_one_folder_are_independent(tmp_path, helpers_on_path):
    finished = []
    for _ in range(2):
        dm = datamodule(ramp(), simulations=3, batches_per_epoch=100)
        fit(dm, tmp_path)
        finished.append((dm.run_id, dm.outcome().completed, dm.outcome().samples_trained))
        journal = tmp_path / "online" / dm.run_id / "journal.jsonl"
        assert journal.exists()
    assert finished[0][0] != finished[1][0]
    assert finished[0][1:] == finished[1][1:] == (3, 18)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"startup_timeout": -1}, "data.startup_timeout: must be > 0 seconds, got -1"),
        ({"heartbeat_interval": 0}, "data.heartbeat_interval: must be > 0 seconds"),
        ({"min_completed": 1.5}, "data.min_completed: must be between 0 and 1"),
        ({"rate_limit": 0}, "data.rate_limit: must be > 0"),
        ({"max_reads": 0}, "data.max_reads: must be >= 1"),
        ({"policy": "lifo"}, "data.policy: must be one of fifo, firo, reservoir"),
        # the kinds Python callers may get wrong, where Hydra's config would have refused them
        ({"simulations": 2.5}, "data.simulations: must be a whole number or null, got 2.5"),
        ({"batch_size": True}, "data.batch_size: must be a whole number, got True"),
        ({"concurrency": "2"}, "data.concurrency: must be a whole number, got '2'"),
        ({"shared_memory": "no"}, "data.shared_memory: must be true or false, got 'no'"),
        ({"journal": 5}, "data.journal: must be text or null, got 5"),
        ({"seed": "x"}, "data.seed: must be a whole number, got 'x'"),
        ({"simulations": np.float64(3.0)}, "data.simulations: must be a whole number or null"),
    ],
)
def test_every_online_setting_is_range_checked_once(setting, message, helpers_on_path):
    sim = ramp()
    OnlineDataModule(sim, UniformSampler(sim.space), simulations=np.int64(4), rate_limit=np.float32(2))  # numpy's
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        OnlineDataModule(sim, UniformSampler(sim.space), **setting)


def test_datamodule_defaults_are_those_of_engage_run(helpers_on_path):
    from engage.core.online.config import OnlineDataConfig

    sim = ramp()
    dm = OnlineDataModule(sim, UniformSampler(sim.space))
    config = OnlineDataConfig()
    settings = dm.settings
    assert (settings.simulations, settings.capacity, settings.policy, dm.batch_size) == (
        config.simulations, config.capacity, config.policy, config.batch_size,
    ) == (96, 8192, "reservoir", 64)  # fmt: skip


def test_no_validation_simulations_turns_validation_off(tmp_path, helpers_on_path):
    dm = datamodule(ramp(), simulations=1, val_simulations=0, batches_per_epoch=100)
    trainer = fit(dm, tmp_path)
    assert dm.val_dataloader() == [] and trainer.state.finished


def test_held_out_simulations_run_as_processes_and_their_failure_fails_the_run(tmp_path, helpers_on_path):
    good = datamodule(ramp(), simulations=1, val_simulations=2, batches_per_epoch=100)
    trainer = fit(good, tmp_path / "good")
    assert trainer.state.finished and len(good.val_dataset) == 12
    (journal,) = (tmp_path / "good" / "online" / good.run_id / "validation").glob("journal.jsonl")
    assert journal.read_text().count('"finished"') == 2  # two held-out simulation processes
    sim = helpers_on_path.Rogue("shape")  # its processes send samples of the wrong shape
    sim.launch_command = lambda address, sid, attempt: [
        sys.executable, "-m", "test_online_helpers", address, str(sid), "1", "shape"
    ]  # fmt: skip
    bad = datamodule(sim, simulations=1, val_simulations=1, retries=0)
    with pytest.raises(OnlineRunFailed, match=r"held-out validation simulations failed: .*has shape \(4, 4\)"):
        fit(bad, tmp_path / "bad")


def test_an_untrained_batch_in_a_checkpoint_is_given_back_on_resume():
    buffer = TrainingBuffer(capacity=8, policy="fifo")
    for i in range(6):
        buffer.put(np.full((2,), i, "float32"), parameters=np.zeros(1), simulation_id=0, time=i / 6)
    ledger = TrainingLedger()
    ledger.handed_out(buffer.get_batch(2))  # trained
    ledger.handed_out(buffer.get_batch(2))  # fetched ahead, not trained when the checkpoint is taken
    ledger.step_started(global_step=0)
    ledger2 = TrainingLedger()
    assert [b["target"][:, 0].tolist() for b in ledger2.load_state_dict(ledger.state_dict(global_step=1))] == [
        [2.0, 3.0]
    ]
    assert (ledger2.batches_trained, ledger2.samples_trained) == (1, 2)
    # written mid-step (a requeue signal): the optimizer has not stepped on the first batch yet
    ledger3 = TrainingLedger()
    untrained = ledger3.load_state_dict(ledger.state_dict(global_step=0))
    assert [b["target"][:, 0].tolist() for b in untrained] == [[0.0, 1.0], [2.0, 3.0]]
    assert (ledger3.batches_trained, ledger3.samples_trained) == (0, 0)
    # the next step started after the optimizer stepped: the first batch is in the weights for good
    ledger.handed_out(buffer.get_batch(2))
    ledger.step_started(global_step=1)
    assert [b["target"][:, 0].tolist() for b in ledger.state_dict(global_step=1)["untrained"]] == [
        [2.0, 3.0],
        [4.0, 5.0],
    ]
    # batches given back by an earlier checkpoint and not handed out yet are held after those
    replay = [{k: v[:1] for k, v in untrained[0].items()}]
    held = ledger.state_dict(global_step=1, replay=replay)["untrained"]
    assert [b["target"][:, 0].tolist() for b in held] == [[2.0, 3.0], [4.0, 5.0], [0.0]]


# ---------------------------------------------------------------- whatever a peer sends
def _garbage(rng: random.Random, simulation_id: int) -> list[bytes]:
    """A message a broken or hostile peer might send: random frames, or headers with random
    fields around the simulation's own id."""
    choice = rng.randrange(8)
    if choice == 0:
        return [rng.randbytes(rng.randrange(0, 80)) for _ in range(rng.randrange(1, 4))]
    if choice >= 6:  # almost right: the simulation's own shape and dtype, odd counts and sizes
        kind = rng.choice([protocol.Kind.SAMPLE, protocol.Kind.SAMPLES, protocol.Kind.DONE, protocol.Kind.HELLO])
        fields = [
            b"ENGM", 1, int(kind), 1, 2, simulation_id, rng.choice([1, 2]), rng.choice([0, 1]),
            rng.choice([-3, -1, 0, 1, 5, 6, 7, 2**40]), 8, 8, 0, 0, rng.choice([0, 255, 256, 512, 1024, 2**40]),
        ]  # fmt: skip
        payload = rng.choice([b"", b"\0" * 256, b"\0" * 512, b"\0" * 100, b"\0" * 1536])
        return [struct.pack("<4sBBBBqIIq4IQ", *fields), payload]
    kind = rng.choice([int(k) for k in protocol.Kind] + [0, 7, 99, 255])
    fields = [
        b"ENGM", 1, kind, rng.choice([0, 1, 2, 11, 12, 200]), rng.choice([0, 1, 2, 4, 5]),
        rng.choice([simulation_id, -1, 2**62]), rng.choice([0, 1, 2, 2**32 - 1]), rng.choice([0, 1, 2**31]),
        rng.choice([-5, 0, 1, 6, 2**62]), *[rng.choice([0, 8, 2**31]) for _ in range(4)],
        rng.choice([0, 7, 256, 2**63]),
    ]  # fmt: skip
    header = struct.pack("<4sBBBBqIIq4IQ", *fields)
    payloads = [b"", b"{", b'{"pid": [1], "shared_memory": 5}', b"\xff" * 256, b"{}", b"line\nforged line"]
    frames = [header, rng.choice(payloads)]
    if choice == 1:
        frames.append(b"extra")
    elif choice == 2:
        frames = frames[:1]
    return frames


def test_a_scheduler_that_cannot_listen_fails_the_run_with_one_line(tmp_path, helpers_on_path):
    """The trainer's socket cannot be bound (an address of no interface here): ``start`` raises
    the run's failure, which ``engage run`` prints as one line with exit code 4."""
    from engage.core.executors import LocalExecutor

    class Elsewhere(LocalExecutor):
        def bind_host(self) -> str:
            return "192.0.2.1"  # TEST-NET-1: no interface of this machine has it

    sim = ramp()
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space), TrainingBuffer(capacity=16, policy="fifo"), simulations=1,
        workdir=str(tmp_path), executor=Elsewhere(),
    )  # fmt: skip
    with pytest.raises(OnlineRunFailed, match=r"^simulation scheduler failed: ZMQError: .*address") as failed:
        scheduler.start()
    assert "\n" not in str(failed.value)
    scheduler.join(5)
    assert not scheduler._thread.is_alive()  # nothing it started holds it
    assert scheduler.buffer.closed


def test_no_message_from_any_peer_stops_the_receiver(tmp_path, helpers_on_path):
    # simulations that never connect keep the scheduler waiting while peers send it garbage:
    # peers without keys (the handshake refuses them), peers holding the running simulation's key
    # (stolen: they are that simulation, and fail it), peers holding another attempt's key
    sim = ramp()
    sim.launch_command = lambda address, sid, attempt: [sys.executable, "-c", "import time; time.sleep(60)"]
    buffer = TrainingBuffer(capacity=16, policy="fifo")
    scheduler = SimulationScheduler(
        sim, UniformSampler(sim.space), buffer, simulations=1, retries=50, startup_timeout=60, workdir=str(tmp_path)
    )
    scheduler.start()
    context = zmq.Context()
    rng = random.Random(20)
    keys = scheduler.fleet.keys
    other = keys.issue(999, 1, to_file=False)
    sid, attempt = 0, 1
    refused = 0
    try:
        for peer in range(42):
            running = list(scheduler.fleet.active.values())  # between attempts, the last one's
            if running:
                sid, attempt = running[0].record.simulation_id, running[0].record.attempt
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if peer % 3:
                held = keys.issue(sid, attempt, to_file=False) if peer % 3 == 1 else other
                use_client_keys(sock, json.loads(keys.describe(held.public_key, held.secret_key)))
            sock.setsockopt(zmq.IDENTITY, f"sim-{sid}-{attempt}-{peer}".encode())
            sock.connect(scheduler.address)
            hello = protocol.encode_json(protocol.Kind.HELLO, sid, attempt, {"pid": 1, "host": "x", "protocol": 1})
            if peer % 4 == 3:  # a HELLO that is no JSON a decoder survives
                hello[1] = rng.choice([b'{"pid": ' + b"1" * 5000 + b"}", b'{"a": ' + b"[" * 100_000, b"\xff{}"])
            # a peer the trainer refused or dropped has no connection left to send on: its sends
            # time out instead of waiting for one
            sock.setsockopt(zmq.SNDTIMEO, 1000)
            try:
                sock.send_multipart(hello)
                for _ in range(25):
                    sock.send_multipart(_garbage(rng, sid))
            except zmq.Again:
                refused += 1
            time.sleep(0.05)
            sock.close(0)
        time.sleep(0.5)
        assert scheduler._thread.is_alive() and scheduler.error is None
        assert scheduler.dropped_messages > 0 and refused < 42
    finally:
        scheduler.stop()
        context.destroy(linger=0)
    assert scheduler.error is None and buffer.inserted == 0


def test_reservoir_resume_restores_the_buffer_and_reproduces_what_arrived_after_the_checkpoint(
    tmp_path, helpers_on_path, monkeypatch
):
    """With the reservoir policy a checkpoint holds the buffer as it was, and the simulations still
    running from the sample index each had reached: a run resumed from it starts from that buffer,
    and its simulations send again exactly the samples that arrived after the checkpoint (those
    the killed run received and lost), and none of those before it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    steps = 16
    received: dict[int, list[tuple[int, int]]] = {}  # id(buffer) -> (simulation id, sample index)

    def log(buffer, ids, times) -> None:
        pairs = zip(np.asarray(ids).tolist(), np.asarray(times).tolist())
        received.setdefault(id(buffer), []).extend((s, round(t * steps) - 1) for s, t in pairs)

    commit, put_many = TrainingBuffer.commit_arrays, TrainingBuffer.put_many

    def logged_commit(self, slots, parameters, simulation_ids, times):
        commit(self, slots, parameters, simulation_ids, times)
        log(self, simulation_ids, times)

    def logged_put_many(self, samples, owned=False):
        put_many(self, samples, owned)
        log(self, [s[2] for s in samples], [s[3] for s in samples])

    monkeypatch.setattr(TrainingBuffer, "commit_arrays", logged_commit)
    monkeypatch.setattr(TrainingBuffer, "put_many", logged_put_many)
    sim = FunctionSimulator(
        "test_online_helpers:ramp", {"x": {"low": 1, "high": 2}}, sample_shape=(8, 8), samples_per_run=steps,
        kwargs={"steps": steps, "delay": 0.03},
    )  # fmt: skip

    def make() -> OnlineDataModule:
        return datamodule(
            # a sample is read at most twice: the stream ends once the simulations did and their
            # samples were read, whatever the pace of training
            sim, simulations=4, concurrency=2, policy="reservoir", max_reads=2, capacity=16, batches_per_epoch=60,
            seed=5, workdir=str(tmp_path / "work"),
        )  # fmt: skip

    first = make()
    saved = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    with pytest.raises(OnlineRunFailed, match=r"[0-3] of 4 simulations completed"):  # stopped early, as a kill would
        fit(first, tmp_path, max_steps=8, callbacks=[saved], enable_checkpointing=True, limit_val_batches=0,
            num_sanity_val_steps=0)  # fmt: skip
    before = received[id(first.buffer)]
    # the first checkpoint taken while a simulation was half-way, after which the killed run went
    # on receiving (which step that is depends on the machine's pace)
    for path in sorted((tmp_path / "ckpt").glob("*.ckpt"), key=lambda p: int(p.stem.split("step=")[1])):
        rank = torch.load(path, weights_only=False)["OnlineDataModule"]["ranks"][0]
        resume = {p["simulation_id"]: p["resume_from"] for p in rank["scheduler"]["pending"]}
        lost = [(s, i) for s, i in before if i >= resume.get(s, steps)]
        if any(0 < r < steps for r in resume.values()) and lost:
            checkpoint = path
            break
    else:
        pytest.fail(f"no checkpoint came half-way through a simulation: {sorted((tmp_path / 'ckpt').iterdir())}")
    started = rank["scheduler"]["next_index"]  # simulations 0 .. started - 1 had been asked for

    second = make()
    restored: list[list[tuple[int, float]]] = []

    class Restored(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            b = trainer.datamodule.buffer.state_dict()
            restored.append(sorted(zip(b["simulation_id"].tolist(), b["time"].tolist())))

    trainer = pl.Trainer(
        accelerator="cpu", default_root_dir=str(tmp_path), max_steps=60, callbacks=[Restored()], logger=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(Tiny(), datamodule=second, ckpt_path=str(checkpoint), weights_only=False)
    saved_buffer = rank["buffer"]
    assert restored == [sorted(zip(saved_buffer["simulation_id"].tolist(), saved_buffer["time"].tolist()))]
    assert len(restored[0]) > 0
    after = collections.Counter(received[id(second.buffer)])
    # each simulation sends again from where the checkpoint left it: once each, nothing before
    expected = collections.Counter(
        (s, i) for s in range(4) for i in range(resume.get(s, steps if s < started else 0), steps)
    )
    assert after == expected, (sorted((expected - after).elements())[:8], sorted((after - expected).elements())[:8])
    assert set(lost) <= set(after)
    assert second.outcome().completed == 4


class FailsInSecondStep(Tiny):
    def training_step(self, batch, batch_idx):
        if batch_idx == 1:
            raise RuntimeError("out of memory in the second step")
        return super().training_step(batch, batch_idx)


def test_a_batch_whose_step_failed_before_the_optimizer_stepped_is_not_counted_trained(tmp_path, helpers_on_path):
    dm = datamodule(ramp(), simulations=2, policy="fifo", max_reads=1)
    trainer = pl.Trainer(
        accelerator="cpu", default_root_dir=str(tmp_path), max_epochs=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="second step"):
        trainer.fit(FailsInSecondStep(), datamodule=dm)
    assert trainer.global_step == 1
    outcome = dm.outcome()
    # the first batch is in the weights; the second left the buffer and its step never finished
    assert (outcome.batches_trained, outcome.samples_trained) == (1, 4), outcome
    assert outcome.samples_untrained >= 4, outcome
    assert outcome.samples_received == outcome.samples_trained + outcome.samples_unread + outcome.samples_untrained
    assert "4 trained" in outcome.line()


def test_training_bounded_by_max_steps_alone_stops_when_the_stream_ends(tmp_path, helpers_on_path):
    """``max_steps`` without ``max_epochs`` (Lightning then sets no bound on epochs): once the
    simulations ended and their samples were read, the fit ends instead of starting empty
    epochs forever."""
    import threading

    dm = datamodule(ramp(), simulations=2, policy="fifo", max_reads=1, batches_per_epoch=2)
    trainers: list[pl.Trainer] = []
    worker = threading.Thread(
        target=lambda: trainers.append(fit(dm, tmp_path, max_epochs=None, max_steps=1000, limit_val_batches=0)),
        daemon=True,
    )
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the fit went on after the stream ended"
    assert trainers[0].global_step == 3  # 2 simulations x 6 samples, batches of 4
    outcome = dm.outcome()
    assert (outcome.samples_trained, outcome.samples_unread, outcome.samples_untrained) == (12, 0, 0)
    # the run's shared memory was named after it
    assert dm.scheduler.segment.name.startswith(f"engage-{dm.run_id}-"), dm.scheduler.segment.name


def test_a_simulator_class_of_the_script_being_run_is_refused_before_any_process_starts(
    tmp_path, monkeypatch, helpers_on_path
):
    """A simulator class defined in the user's script (``__main__``) cannot be rebuilt in its
    processes, each a fresh interpreter: one line says so and how to fix it, before any attempt."""
    import __main__
    from engage.core.online.fleet import pickled_simulator

    class Ramp(FunctionSimulator):
        pass

    Ramp.__module__, Ramp.__qualname__ = "__main__", "Ramp"
    monkeypatch.setattr(__main__, "Ramp", Ramp, raising=False)
    sim = Ramp("test_online_helpers:ramp", {"x": {"low": 1, "high": 2}}, sample_shape=(8, 8), samples_per_run=6)
    with pytest.raises(ValueError, match=r"Ramp uses what the script being run defines \(__main__\).*PYTHONPATH"):
        pickled_simulator(sim, str(tmp_path))
    assert not (tmp_path / "simulator.pkl").exists()
    assert pickled_simulator(ramp(), str(tmp_path)) == {"pickle": str(tmp_path / "simulator.pkl")}


@pytest.mark.parametrize("setting", ["workdir", "cache_dir"])
def test_a_folder_the_run_cannot_write_is_one_line_naming_the_setting(setting, tmp_path, helpers_on_path):
    from engage.core.config.validate import ConfigError

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    dm = datamodule(ramp(), val_simulations=1, **{setting: str(blocked / "sub")})
    with pytest.raises(ConfigError, match=rf"^data.{setting}: cannot .*a-file/sub.*\((Not a directory|No such file)"):
        fit(dm, tmp_path)
    assert not _running_clients()


def test_the_fix_a_short_run_suggests_depends_on_its_rate_limit():
    from engage.core.online.outcome import OnlineOutcome

    short = OnlineOutcome(requested=8, completed=3, failed=0, given_up=0, samples_received=30, samples_trained=8,
                          batches_trained=2)  # fmt: skip
    assert "or lower data.rate_limit" in short.problem(1.0, rate_limit=8.0)
    unpaced = short.problem(1.0, rate_limit=None)
    assert "raise trainer.max_epochs or data.batches_per_epoch)" in unpaced and "rate_limit" not in unpaced
