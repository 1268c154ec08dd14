"""The Breed sampler against core's sampler contract, and what it promises: generations bred
around high-loss simulations, an adaptive spread, a shrinking uniform share, losses averaged per
simulation (also for the loss-driven sampler)."""

import copy

import numpy as np
import pytest
from omegaconf import OmegaConf

from engage.core import FailureAction, ParameterSpace
from engage.core.config.validate import ConfigError, check_values
from engage.core.online.record import SimulationRecord
from engage.core.testing import SamplerSuite, parameter_spaces
from engage.sampling import BreedSampler, LossDrivenSampler
from engage.sampling import config as sampling_config

SPACES = parameter_spaces()
SQUARE = ParameterSpace.from_config({"a": {"low": 0.0, "high": 1.0}, "b": {"low": -2.0, "high": 2.0}})


class TestBreed(SamplerSuite):
    @pytest.fixture
    def make_sampler(self):
        return lambda space, seed: BreedSampler(space, seed=seed)


class TestBreedShortGenerations(SamplerSuite):
    """Generations of 4 points: the suite's batches cross generation boundaries and breed."""

    @pytest.fixture
    def make_sampler(self):
        return lambda space, seed: BreedSampler(space, seed=seed, generation_size=4, generations=3)


def corner_loss(space: ParameterSpace, points: np.ndarray) -> np.ndarray:
    """High in the corner where both unit coordinates exceed 0.5, low elsewhere."""
    unit = space.to_unit(points)
    return np.where((unit > 0.5).all(axis=1), 1.0 + unit.sum(axis=1), 0.1)


def in_corner(space: ParameterSpace, points: np.ndarray) -> np.ndarray:
    return (space.to_unit(points) > 0.5).all(axis=1)


def test_breed_concentrates_where_the_loss_is_high():
    shares = {}
    for seed in range(3):
        breed = BreedSampler(SQUARE, seed=seed, generation_size=32, generations=5, uniform_end=0.1)
        for _ in range(6):
            points = breed.ask(32)
            breed.tell(points, losses=corner_loss(SQUARE, points))
        shares[seed] = in_corner(SQUARE, points).mean()  # the last generation
        assert breed.generation == 5 and breed.current_uniform_share() == pytest.approx(0.1)
    assert min(shares.values()) > 0.5, shares
    uniform = np.random.default_rng(0).random((10_000, 2))
    assert in_corner(SQUARE, SQUARE.from_unit(uniform)).mean() == pytest.approx(0.25, abs=0.02)


def test_uniform_share_moves_linearly_over_generations():
    breed = BreedSampler(SQUARE, seed=0, generation_size=10, generations=5, uniform_start=1.0, uniform_end=0.2)
    shares = []
    for _ in range(7):
        points = breed.ask(10)  # a generation starts at its first asked point, after the tells before it
        shares.append(breed.current_uniform_share())
        breed.tell(points, losses=corner_loss(SQUARE, points))
    np.testing.assert_allclose(shares, [1.0, 0.8, 0.6, 0.4, 0.2, 0.2, 0.2])
    # generations start by asked points, whatever the batch sizes
    other = BreedSampler(SQUARE, seed=0, generation_size=10, generations=5)
    other.ask(3), other.ask(9)
    assert other.generation == 1


def test_spread_shrinks_when_children_beat_their_parents_and_widens_when_they_do_not():
    def spreads(loss):
        breed = BreedSampler(SQUARE, seed=1, generation_size=16, generations=2, uniform_end=0.0, spread=0.2)
        history = []
        for _ in range(6):
            points = breed.ask(16)
            breed.tell(points, losses=loss(points))
            history.append(breed.spread)
        return breed, history

    # loss growing with a: a child is fitter than its parent about half the time (it moved right)
    climbing, up = spreads(lambda p: SQUARE.to_unit(p)[:, 0])
    assert up[-1] < 0.5 * up[0] and all(r is not None and r >= 0.2 for r in climbing.success_history[1:])
    # a flat loss: children are never fitter, the spread stays at its start
    flat_run, flat = spreads(lambda p: np.zeros(len(p)))
    assert flat[-1] == pytest.approx(0.2) and all(r in (None, 0.0) for r in flat_run.success_history)
    assert climbing.spread >= climbing.spread_min


def test_fitness_is_the_running_mean_of_a_simulations_losses():
    breed = BreedSampler(SQUARE, seed=0, generation_size=4)
    points = breed.ask(2)
    for noisy in ([5.0, 0.0], [0.0, 1.0], [1.0, 1.0]):  # one noisy batch each
        breed.tell(points, losses=noisy)
    np.testing.assert_allclose(breed.loss_table()[1], [2.0, 2.0 / 3.0])
    assert breed.fitness.count(breed.fitness.key(SQUARE.to_unit(points)[0])) == 3


def test_loss_driven_averages_noisy_losses_unless_told_not_to():
    averaged = LossDrivenSampler(SQUARE, seed=0)
    latest = LossDrivenSampler(SQUARE, seed=0, average_losses=False)
    points = SQUARE.from_unit([[0.2, 0.2], [0.8, 0.8]])
    for sampler in (averaged, latest):
        sampler.tell(points, losses=[4.0, 1.0])
        sampler.tell(points, losses=[0.0, 1.0])
    np.testing.assert_allclose(averaged.loss_table()[1], [2.0, 1.0])
    np.testing.assert_allclose(latest.loss_table()[1], [0.0, 1.0])
    resumed = LossDrivenSampler(SQUARE, seed=5)
    resumed.load_state_dict(copy.deepcopy(averaged.state_dict()))
    resumed.tell(points[:1], losses=[2.0])  # the counts travel with the state: (4 + 0 + 2) / 3
    np.testing.assert_allclose(resumed.loss_table()[1], [1.0, 2.0])  # last told comes last


def test_failed_simulation_leaves_the_fitness_table_and_is_substituted():
    breed = BreedSampler(SQUARE, seed=0, generation_size=4)
    points = breed.ask(4)
    breed.tell(points, losses=[1.0, 2.0, 3.0, 4.0], simulation_ids=[0, 1, 2, 3])
    records = [SimulationRecord.create(SQUARE, i, p, ask_index=i) for i, p in enumerate(points)]
    assert breed.simulation_failed(records[3]) is FailureAction.SUBSTITUTE
    for record in records[:3]:
        breed.simulation_finished(record)
    assert breed.num_finished == 3 and len(breed.failed) == 1
    np.testing.assert_allclose(breed.loss_table()[1], [1.0, 2.0, 3.0])
    children = breed.ask(4)  # generation 1 breeds from the three left
    assert breed.generation == 1 and SQUARE.contains(children)


@pytest.mark.parametrize("space_name", ["mixed", "continuous"])
def test_resume_in_the_middle_of_a_generation_continues_exactly(space_name):
    space = SPACES[space_name]
    original = BreedSampler(space, seed=3, generation_size=8, generations=3, uniform_end=0.0)
    for _ in range(2):
        points = original.ask(8)
        original.tell(points, losses=corner_loss(space, points) if space.dim == 3 else np.arange(8.0))
    original.ask(3)
    state = copy.deepcopy(original.state_dict())
    expected = [original.ask(n) for n in (2, 9, 8)]
    resumed = BreedSampler(space, seed=0, generation_size=8, generations=3, uniform_end=0.0)
    resumed.load_state_dict(state)
    for n, want in zip((2, 9, 8), expected):
        np.testing.assert_array_equal(resumed.ask(n), want)
    assert resumed.spread == original.spread and resumed.generation == original.generation
    assert space.contains(np.concatenate(expected))


def test_children_keep_integer_and_categorical_values_valid():
    space = SPACES["mixed"]
    breed = BreedSampler(space, seed=0, generation_size=16, generations=2, uniform_end=0.0, spread=0.3)
    points = breed.ask(16)
    breed.tell(points, losses=np.linspace(0.0, 1.0, 16))
    children = breed.ask(64)
    assert space.contains(children)
    for column in (3, 4):  # integer and categorical: whole numbers
        np.testing.assert_array_equal(children[:, column], np.round(children[:, column]))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("uniform_end", 1.5, "sampler.uniform_end: must be between 0 and 1"),
        ("generation_size", 0, "sampler.generation_size: must be >= 1"),
        ("shrink", 1.0, "sampler.shrink: must be between 0 and 1"),
        ("spread_min", 0.5, "sampler.spread_min: must be > 0 and <= spread"),
        ("significance", -2.0, "sampler.significance: must be a z score >= 0"),
    ],
)
def test_bad_breed_config_fails_with_one_clear_line(key, value, message):
    cfg = OmegaConf.create({"seed": 0, "sampler": OmegaConf.structured(sampling_config.BreedConfig)})
    cfg.sampler[key] = value
    with pytest.raises(ConfigError) as info:
        check_values(cfg)
    assert str(info.value).startswith(message)


def test_breed_is_selectable_by_name():
    from engage.core.config.store import config_options
    from engage.core.plugins import new_plugin_manager, samplers
    from engage.sampling import plugin

    manager = new_plugin_manager([("sampling", plugin)], installed=False)
    assert samplers(manager)["breed"] is BreedSampler
    node = {(o.group, o.name): o.node for _, o in config_options(manager)}[("sampler", "breed")]
    cfg = OmegaConf.create({"seed": 7, "sampler": OmegaConf.structured(node)})
    built = OmegaConf.to_object(cfg.sampler)
    assert built._target_ == "engage.sampling.samplers.breed.BreedSampler" and built.seed == 7


def test_children_are_judged_from_losses_told_by_the_training_callback():
    import torch

    from engage.sampling.callbacks import LossDrivenSampling

    space = SPACES["mixed"]
    breed = BreedSampler(space, seed=2, generation_size=8, generations=2, uniform_end=0.0)
    callback = LossDrivenSampling(sampler=breed)
    for generation in range(3):
        points = breed.ask(8)
        # as the engine does: simulation ids that are not ask positions, one record a simulation
        records = [
            SimulationRecord.create(space, 100 + 8 * generation + i, p, ask_index=8 * generation + i)
            for i, p in enumerate(points)
        ]
        # as in training: single-precision unit parameters, several samples of each simulation
        unit = torch.tensor(space.to_unit(np.repeat(points, 3, axis=0)), dtype=torch.float32)
        simulation_id = torch.tensor(np.repeat([r.simulation_id for r in records], 3))
        losses = torch.tensor(np.repeat(np.arange(8.0), 3))
        callback.tell(breed, {"parameters": unit, "simulation_id": simulation_id}, losses)
        for record in records:
            breed.simulation_finished(record)
    breed.ask(1)  # starts generation 3, judging generation 2's children
    assert len(breed.loss_table()[1]) == 24
    assert breed.success_history[-1] is not None
    assert len(breed._children) == 1  # every earlier child was found; only the one just bred waits
    # each simulation's fitness sits at its record's exact point, not the batch's single-precision one
    assert {tuple(r.unit) for r in records} <= set(map(tuple, breed.loss_table()[0].tolist()))


def test_a_child_is_its_simulation_whatever_the_values_its_losses_come_with():
    # two simulations at the very same point stay two; a child is judged by its record, and a
    # failed simulation leaves alone the other simulation at its point
    breed = BreedSampler(SQUARE, seed=1, generation_size=4, uniform_start=0.0, uniform_end=0.0, significance=None)
    first = breed.ask(4)
    same = np.repeat(first[:1], 4, axis=0)  # every loss told at one point, as four simulations
    breed.tell(same, losses=[1.0, 1.0, 1.0, 9.0], simulation_ids=[10, 11, 12, 13])
    assert len(breed.loss_table()[1]) == 4
    for i, point in enumerate(first):
        breed.simulation_finished(SimulationRecord.create(SQUARE, 10 + i, point, ask_index=i))
    assert breed.loss_table()[0].tolist() == SQUARE.to_unit(first).tolist()  # placed by record
    children = breed.ask(4)  # generation 1: children only
    records = [SimulationRecord.create(SQUARE, 20 + i, p, ask_index=4 + i) for i, p in enumerate(children)]
    for record in records:
        breed.simulation_finished(record)
    # the children's losses come with points far from where they are: found by id all the same
    breed.tell(np.zeros((4, 2)), losses=[20.0, 20.0, 0.0, 0.0], simulation_ids=[20, 21, 22, 23])
    breed.ask(4)  # generation 2 judges generation 1's children: two of four beat their parent
    assert breed.success_history[-1] == 0.5 and not breed._children[:-4]
    breed.simulation_failed(SimulationRecord.create(SQUARE, 11, first[0], ask_index=1))
    assert breed.fitness.count(10) == 1 and breed.fitness.count(11) == 0
    resumed = BreedSampler(SQUARE, seed=9, generation_size=4, uniform_start=0.0, uniform_end=0.0, significance=None)
    resumed.load_state_dict(copy.deepcopy(breed.state_dict()))
    np.testing.assert_array_equal(resumed.ask(8), breed.ask(8))
    # a state saved before children were named by their records still loads
    old = copy.deepcopy(breed.state_dict())
    del old["pool_keys"], old["child_simulations"]
    old["children"] = [
        [child, parent if isinstance(parent, list) else [0.5, 0.5]] for _, child, parent in old["children"]
    ]
    BreedSampler(SQUARE, seed=9, generation_size=4).load_state_dict(old)


def noisy_tells(sampler, hard: float, rng: np.random.Generator, points: int = 24, tells: int = 8) -> np.ndarray:
    """``tells`` noisy losses (mean 1, sd 0.2) for each of ``points`` points, the first one's mean
    raised by ``hard``; returns the points."""
    unit = rng.random((points, sampler.space.dim))
    values = sampler.space.from_unit(unit)
    for _ in range(tells):
        losses = rng.normal(1.0, 0.2, size=points)
        losses[0] += hard
        sampler.tell(values, losses=losses)
    return values


@pytest.mark.parametrize("make", [LossDrivenSampler, BreedSampler], ids=["loss_driven", "breed"])
def test_adaptive_samplers_refine_only_where_the_loss_is_significantly_high(make):
    rng = np.random.default_rng(0)
    # every point equally hard, losses differing by noise: nothing to refine
    flat = make(SQUARE, seed=0)
    noisy_tells(flat, hard=0.0, rng=rng)
    assert not table(flat).significant(2.0).any()
    # one point twice as hard as the rest: it, and only it, is refined
    steep = make(SQUARE, seed=0)
    values = noisy_tells(steep, hard=1.0, rng=rng)
    assert table(steep).significant(2.0).tolist() == [True] + [False] * (len(values) - 1)
    if make is LossDrivenSampler:
        assert steep.parent_candidates().tolist() == [0]
        assert not len(flat.parent_candidates())
        # without the test, noise alone picks parents
        plain = make(SQUARE, seed=0, significance=None)
        noisy_tells(plain, hard=0.0, rng=rng)
        assert len(plain.parent_candidates()) == len(values)


def table(sampler):
    return sampler.fitness if isinstance(sampler, BreedSampler) else sampler._losses


def test_a_breed_generation_without_significant_parents_is_uniform():
    rng = np.random.default_rng(1)
    breed = BreedSampler(SQUARE, seed=0, generation_size=8, generations=2, uniform_end=0.0)
    noisy_tells(breed, hard=0.0, rng=rng, points=8)
    breed.ask(8)
    breed.ask(8)  # generation 1: uniform share 0, but no parent passes the test
    assert breed.generation == 1 and len(breed._pool) == 0
    with pytest.raises(ValueError, match="significance must be >= 0"):
        BreedSampler(SQUARE, significance=-1.0)
