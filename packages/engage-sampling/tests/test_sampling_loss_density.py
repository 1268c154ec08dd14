"""The loss-density sampler against core's sampler contract, and what it promises: the Sobol'
sequence where losses do not vary, denser along a parameter where they do, a bounded density, the
losses kept per simulation and an exact resume."""

import copy

import numpy as np
import pytest
from omegaconf import OmegaConf

from engage.core import FailureAction, ParameterSpace
from engage.core.config.validate import ConfigError, check_values
from engage.core.online.record import SimulationRecord
from engage.core.testing import SamplerSuite
from engage.sampling import LossDensitySampler, SobolSequenceSampler
from engage.sampling import config as sampling_config

SQUARE = ParameterSpace.from_config({"a": {"low": 0.0, "high": 1.0}, "b": {"low": -2.0, "high": 2.0}})


class TestLossDensity(SamplerSuite):
    @pytest.fixture
    def make_sampler(self):
        return lambda space, seed: LossDensitySampler(space, seed=seed)


class TestLossDensityWarping(SamplerSuite):
    """Losses told before every batch of the suite: its points are warped ones."""

    @pytest.fixture
    def make_sampler(self):
        def make(space, seed):
            sampler = LossDensitySampler(space, seed=seed, bins=2, alpha=None)
            points = sampler.ask(8)
            sampler.tell(points, losses=1.0 + 3.0 * (space.to_unit(points)[:, 0] < 0.5))
            return sampler

        return make


def hard_where_a_is_low(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy losses (sd 0.2), three times higher where ``a < 0.25``, whatever ``b``."""
    unit = SQUARE.to_unit(points)
    return np.where(unit[:, 0] < 0.25, 3.0, 1.0) + rng.normal(0.0, 0.2, size=len(points))


def test_new_points_gather_along_the_parameter_whose_losses_are_high():
    rng = np.random.default_rng(0)
    sampler = LossDensitySampler(SQUARE, seed=0, bins=4)
    first = sampler.ask(32)
    sampler.tell(first, losses=hard_where_a_is_low(first, rng))
    density = sampler.densities()
    assert density[0, 0] > 1.5 > 0.8 > density[0, 1:].max()  # a's first bin is denser, its others sparser
    assert (density[1] == 1.0).all()  # b does not change the loss: not warped
    unit = SQUARE.to_unit(sampler.ask(256))
    share = density[0, 0] / density[0].sum()  # 0.45 here, against 0.25 for the sequence
    assert share > 0.4 and abs((unit[:, 0] < 0.25).mean() - share) < 0.02
    assert abs((unit[:, 1] < 0.5).mean() - 0.5) < 0.05  # b keeps the sequence's uniform coverage


def test_where_losses_differ_by_noise_alone_it_is_the_sobol_sequence():
    rng = np.random.default_rng(1)
    warped = 0
    for seed in range(40):
        sampler = LossDensitySampler(SQUARE, seed=seed)
        points = sampler.ask(32)
        np.testing.assert_array_equal(points, SobolSequenceSampler(SQUARE, seed=seed).ask(32))
        sampler.tell(points, losses=rng.normal(1.0, 0.2, size=32))
        if (sampler.densities() == 1.0).all():
            np.testing.assert_array_equal(sampler.ask(16), SobolSequenceSampler(SQUARE, seed=seed).ask(48)[32:])
        else:
            warped += 1  # a false positive of the test, at alpha = 0.05: 2 of 40 expected
    assert warped <= 5
    # without the test, the same noise warps the sequence
    plain = LossDensitySampler(SQUARE, seed=0, alpha=None)
    unit, losses = sampler.loss_table()
    plain.tell(SQUARE.from_unit(unit), losses=losses)
    assert not (plain.densities() == 1.0).all()


def test_the_density_stays_within_its_bounds():
    sampler = LossDensitySampler(SQUARE, seed=0, bins=4, max_ratio=2.0, alpha=None)
    points = sampler.ask(64)
    sampler.tell(points, losses=np.where(SQUARE.to_unit(points)[:, 0] < 0.25, 1000.0, 1e-3))
    density = sampler.densities()
    assert density.max() == 2.0 and density.min() == 0.5
    unit = SQUARE.to_unit(sampler.ask(512))
    # the most one bin of four can get with max_ratio 2, however high its losses: 2 / (2 + 3 * 0.5)
    assert abs((unit[:, 0] < 0.25).mean() - 2 / 3.5) < 0.02


def test_losses_are_kept_per_simulation_and_a_failed_one_forgets_its_own():
    sampler = LossDensitySampler(SQUARE, seed=0, bins=2)
    points = sampler.ask(4)
    same = np.repeat(points[:1], 4, axis=0)  # every loss told at one point, as four simulations
    sampler.tell(same, losses=[1.0, 2.0, 3.0, 4.0], simulation_ids=[10, 11, 12, 13])
    for i, point in enumerate(points):
        sampler.simulation_finished(SimulationRecord.create(SQUARE, 10 + i, point, ask_index=i))
    located, losses = sampler.loss_table()
    np.testing.assert_allclose(located, SQUARE.to_unit(points))  # placed by record, not by value
    assert losses.tolist() == [1.0, 2.0, 3.0, 4.0]
    failed = SimulationRecord.create(SQUARE, 11, points[1], ask_index=1)
    assert sampler.simulation_failed(failed) is FailureAction.SUBSTITUTE
    assert sampler.loss_table()[1].tolist() == [1.0, 3.0, 4.0]
    # its samples read after the failure (still in the buffer) tell nothing about it
    sampler.tell(points[1:2], losses=[9.0], simulation_ids=[11])
    assert sampler.loss_table()[1].tolist() == [1.0, 3.0, 4.0]
    resumed = LossDensitySampler(SQUARE, seed=0, bins=2)
    resumed.load_state_dict(copy.deepcopy(sampler.state_dict()))
    resumed.tell(points[1:2], losses=[9.0], simulation_ids=[11])
    assert resumed.loss_table()[1].tolist() == [1.0, 3.0, 4.0]


def test_a_simulation_located_before_its_losses_are_told_is_placed_the_same_after_a_restore():
    # online, a simulation often finishes before training reads its samples: its exact point
    # (the record's) must survive a checkpoint taken in between
    original = LossDensitySampler(SQUARE, seed=0, bins=2, alpha=None)
    points = original.ask(8)
    for i, point in enumerate(points):
        original.simulation_finished(SimulationRecord.create(SQUARE, i, point, ask_index=i))
    resumed = LossDensitySampler(SQUARE, seed=0, bins=2, alpha=None)
    resumed.load_state_dict(copy.deepcopy(original.state_dict()))
    told = np.round(points, 1)  # the batch's coarse parameters: not where the simulations are
    for sampler in (original, resumed):
        sampler.tell(told, losses=np.arange(1.0, 9.0), simulation_ids=np.arange(8))
    np.testing.assert_array_equal(resumed.loss_table()[0], SQUARE.to_unit(points))
    np.testing.assert_array_equal(resumed.densities(), original.densities())
    np.testing.assert_array_equal(resumed.ask(5), original.ask(5))


def test_the_test_is_corrected_for_the_number_of_parameters():
    space = ParameterSpace.from_config({f"x{i}": {"low": 0.0, "high": 1.0} for i in range(10)})
    rng = np.random.default_rng(4)
    warped = 0
    for seed in range(100):
        sampler = LossDensitySampler(space, seed=seed)
        sampler.tell(space.from_unit(rng.random((60, 10))), losses=rng.lognormal(0.0, 1.0, size=60))
        warped += not (sampler.densities() == 1.0).all()
    # any of ten parameters at alpha = 0.05 each would warp 40% of these samplers
    assert warped <= 10


def test_negative_losses_count_as_zero():
    sampler = LossDensitySampler(SQUARE, seed=0, bins=2, alpha=None, prior=1e-9, max_ratio=10.0)
    unit = np.array([[0.1, 0.5], [0.2, 0.5], [0.7, 0.5], [0.8, 0.5]])
    sampler.tell(SQUARE.from_unit(unit), losses=[-1.0, -1.0, 3.0, 3.0])
    # relative to the mean of the counted losses (1.5): 0 and 2, not 0 and 3
    np.testing.assert_allclose(sampler.densities()[0], [0.1, 2.0])


def test_a_restored_sampler_continues_exactly():
    rng = np.random.default_rng(2)
    sampler = LossDensitySampler(SQUARE, seed=5, bins=3)
    for _ in range(3):
        points = sampler.ask(12)
        sampler.tell(points, losses=hard_where_a_is_low(points, rng))
    assert not (sampler.densities() == 1.0).all()
    resumed = LossDensitySampler(SQUARE, seed=0, bins=3)
    resumed.load_state_dict(copy.deepcopy(sampler.state_dict()))
    np.testing.assert_array_equal(resumed.ask(9), sampler.ask(9))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("bins", 1, "sampler.bins: must be >= 2"),
        ("max_ratio", 0.5, "sampler.max_ratio: must be finite and >= 1"),
        ("prior", 0.0, "sampler.prior: must be finite and > 0"),
        ("prior", float("inf"), "sampler.prior: must be finite and > 0"),
        ("max_ratio", float("inf"), "sampler.max_ratio: must be finite and >= 1"),
        ("alpha", 1.5, "sampler.alpha: must be in (0, 1]"),
    ],
)
def test_bad_loss_density_config_fails_with_one_clear_line(key, value, message):
    cfg = OmegaConf.create({"seed": 0, "sampler": OmegaConf.structured(sampling_config.LossDensityConfig)})
    cfg.sampler[key] = value
    with pytest.raises(ConfigError) as info:
        check_values(cfg)
    assert str(info.value).startswith(message)
    with pytest.raises(ValueError):
        LossDensitySampler(SQUARE, **{key: value})


def test_loss_density_is_selectable_by_name():
    from engage.core.config.store import config_options
    from engage.core.plugins import new_plugin_manager, samplers
    from engage.sampling import plugin

    manager = new_plugin_manager([("sampling", plugin)], installed=False)
    assert samplers(manager)["loss_density"] is LossDensitySampler
    node = {(o.group, o.name): o.node for _, o in config_options(manager)}[("sampler", "loss_density")]
    cfg = OmegaConf.create({"seed": 7, "sampler": OmegaConf.structured(node)})
    built = OmegaConf.to_object(cfg.sampler)
    assert built._target_ == "engage.sampling.samplers.loss_density.LossDensitySampler" and built.seed == 7
