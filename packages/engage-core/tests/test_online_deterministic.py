"""The deterministic read policy: the same batches whatever the timing of the simulations, and
credit that never lets simulations ahead fill the buffer with samples it cannot serve yet."""

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from engage.core.online.buffer import TrainingBuffer
from engage.core.online.credit import Credit
from engage.core.online.protocol import decode_header


def stream(order, simulations=3, per_run=6, batch=4, capacity=64):
    """Batches of a buffer fed in the arrival ``order`` (simulation ids, one sample each)."""
    buffer = TrainingBuffer(capacity=capacity, policy="deterministic")
    for sim in range(simulations):
        buffer.simulation_started(sim)
    sent = dict.fromkeys(range(simulations), 0)
    batches = []

    def read():
        while (got := buffer.get_batch(batch, timeout=10)) is not None:
            batches.append(list(zip(got["simulation_id"].tolist(), got["time"].reshape(-1).tolist(), strict=True)))

    reader = threading.Thread(target=read)
    reader.start()
    for sim in order:
        index = sent[sim]
        buffer.put(np.full((2,), index, "float32"), parameters=np.zeros(1), simulation_id=sim, time=index / per_run)
        sent[sim] += 1
        if sent[sim] == per_run:
            buffer.simulation_ended(sim)
    buffer.close()
    reader.join(10)
    return batches


def test_batches_do_not_depend_on_the_order_samples_arrive_in():
    rng = np.random.default_rng(0)
    orders = [[s for s in range(3) for _ in range(6)]]  # one simulation after another
    for _ in range(4):  # interleaved at random, as concurrent simulations are
        order = [s for s in range(3) for _ in range(6)]
        rng.shuffle(order)
        orders.append(order)
    runs = [stream(order) for order in orders]
    expected = [(sim, index / 6) for sim in range(3) for index in range(6)]
    for batches in runs:
        assert [sample for b in batches for sample in b] == pytest_approx(expected)
        assert [len(b) for b in batches] == [4, 4, 4, 4, 2]


def pytest_approx(pairs):
    return [(s, pytest.approx(t)) for s, t in pairs]


def running(sim, accepted=0, credits=0):
    return SimpleNamespace(
        record=SimpleNamespace(simulation_id=sim, attempt=1), accepted=accepted, credits=credits, slots=None
    )


def granted(clients, buffer, window=8, per_run=10):
    sent = {}
    Credit(buffer, window=window, samples_per_run=per_run).grant(
        clients, lambda active, frames: sent.__setitem__(active.record.simulation_id, decode_header(frames[0]).index)
    )
    return sent


def test_credit_leaves_room_for_what_earlier_simulations_still_send():
    buffer = TrainingBuffer(capacity=16, policy="deterministic")
    buffer.prepare((2,), "float32", parameters=1)
    for sim in (0, 1, 2):
        buffer.simulation_started(sim)
    # simulation 0 will still send 10 samples: of 16 slots, 6 are left for simulation 1, none for 2
    assert granted([running(2), running(1), running(0)], buffer) == {0: 8, 1: 6}
    # a simulation still sending and not connected: nobody after it gets credit
    assert granted([running(1), running(2)], buffer) == {}
    buffer.simulation_ended(0)
    assert granted([running(1), running(2)], buffer) == {1: 8, 2: 6}


def test_other_policies_grant_as_before():
    buffer = TrainingBuffer(capacity=16, policy="fifo")
    buffer.prepare((2,), "float32", parameters=1)
    assert granted([running(0), running(1)], buffer) == {0: 8, 1: 8}


def test_training_is_paced_to_the_samples_the_simulations_will_send():
    from engage.core.online.config import OnlineDataConfig
    from engage.core.online.wiring import paced_rate
    from engage.core.simulators import HeatEquation

    simulator = HeatEquation(grid=8, steps=4)
    settings = OnlineDataConfig(simulations=2, batch_size=4, batches_per_epoch=25, capacity=16)
    plan = SimpleNamespace(fast_dev_run=False, max_epochs=4, max_steps=-1, accumulate_grad_batches=1)
    # 4 epochs of 25 batches of 4 = 400 reads over 2 simulations' samples
    assert paced_rate(settings, simulator, plan, 1) == pytest.approx(400 / (2 * simulator.samples_per_run))
    assert paced_rate(settings, simulator, SimpleNamespace(**{**vars(plan), "max_steps": 1}), 1) == 1.0  # at least once
    assert paced_rate(settings, simulator, SimpleNamespace(**{**vars(plan), "fast_dev_run": 1}), 1) is None
    # the program decides how many samples: nothing to pace to
    assert paced_rate(settings, SimpleNamespace(samples_per_run=None), plan, 1) is None
    # a policy that reads each sample once bounds the reads itself: no pace, and no claim of more
    assert paced_rate(settings, simulator, plan, 1, max_reads=1) is None


def test_a_plan_the_samples_cannot_fill_is_said_before_training_and_counted_at_its_end():
    from engage.core.online.config import OnlineDataConfig
    from engage.core.online.outcome import OnlineOutcome
    from engage.core.online.wiring import unfed_plan
    from engage.core.simulators import HeatEquation

    simulator = HeatEquation(grid=8, steps=4)  # 4 samples a simulation
    settings = OnlineDataConfig(simulations=6, batch_size=4, batches_per_epoch=20, capacity=16, policy="deterministic")
    plan = SimpleNamespace(fast_dev_run=False, max_epochs=2, max_steps=-1, accumulate_grad_batches=1)
    said = unfed_plan(settings, simulator, plan, 1, max_reads=1)
    assert said == (
        "data.policy=deterministic reads each sample once: the 6 simulations' 24 samples fill 6 batches of up to 4 of "
        "the 40 the trainer plans (trainer.max_epochs=2 x data.batches_per_epoch=20), and training stops when they "
        "run out; to train them all, raise data.simulations to 40 or use data.policy=reservoir, which reads samples "
        "again"
    )
    assert "on each of 2 ranks" in unfed_plan(settings, simulator, plan, 2, max_reads=1)
    # the fix names the bound that binds: the samples kept, or the reads a sample may have
    bounded = OnlineDataConfig(simulations=6, max_samples=10, batch_size=4, batches_per_epoch=20, policy="fifo")
    assert unfed_plan(bounded, simulator, plan, 1, max_reads=1).endswith(
        "raise data.max_samples to 160 or use data.policy=reservoir, which reads samples again"
    )
    capped = OnlineDataConfig(simulations=6, batch_size=4, batches_per_epoch=20, policy="reservoir", max_reads=3)
    assert unfed_plan(capped, simulator, plan, 1, max_reads=3).endswith(
        "raise data.simulations to 14 or raise data.max_reads"
    )
    # Lightning's limit on an epoch's batches is part of the plan
    limited = SimpleNamespace(**{**vars(plan), "limit_train_batches": 3})
    assert unfed_plan(settings, simulator, limited, 1, max_reads=1) is None
    limited.limit_train_batches = 0.5
    assert (
        "of the 20 the trainer plans (trainer.max_epochs=2 x data.batches_per_epoch=20 x "
        "trainer.limit_train_batches=0.5)" in unfed_plan(settings, simulator, limited, 1, max_reads=1)
    )
    # samples read again (reservoir), read often enough, or a plan with no end: nothing to say
    assert unfed_plan(settings, simulator, plan, 1, max_reads=None) is None
    assert unfed_plan(settings, simulator, plan, 1, max_reads=7) is None
    assert unfed_plan(settings, simulator, SimpleNamespace(**{**vars(plan), "max_epochs": -1}), 1, 1) is None
    line = OnlineOutcome(6, 6, 0, 0, 24, 24, 6, batches_planned=40).line()
    assert line.endswith("samples: 24 received, 24 trained; batches: 6 trained of 40 planned")
    assert "planned" not in OnlineOutcome(6, 6, 0, 0, 24, 24, 6, batches_planned=6).line()


def test_the_deterministic_policy_reads_each_sample_once():
    from engage.core.config.schema import ConfigValueError
    from engage.core.online.config import OnlineDataConfig

    with pytest.raises(ConfigValueError, match="max_reads"):
        OnlineDataConfig(policy="deterministic", max_reads=2)
