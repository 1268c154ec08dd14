"""Every sampler of engage-sampling against core's sampler contract, plus what each one promises."""

import copy

import numpy as np
import pytest
from omegaconf import OmegaConf

from engage.core import FailureAction, ParameterSpace
from engage.core.config.validate import ConfigError, check_values
from engage.core.testing import SamplerSuite, parameter_spaces
from engage.sampling import (
    ImageSimilaritySampler,
    LatinHypercubeSampler,
    LossDrivenSampler,
    MorrisSampler,
    SALibSobolSampler,
    SensitivityWeightedSampler,
    SobolSequenceSampler,
)
from engage.sampling import config as sampling_config

SPACES = parameter_spaces()


class TestLatinHypercube(SamplerSuite):
    @pytest.fixture
    def make_sampler(self):
        return lambda space, seed: LatinHypercubeSampler(space, seed=seed)


class TestLatinHypercubeDesignSize(SamplerSuite):
    @pytest.fixture
    def make_sampler(self):
        return lambda space, seed: LatinHypercubeSampler(space, seed=seed, design_size=8)


class TestSobolSequence(SamplerSuite):
    @pytest.fixture
    def make_sampler(self):
        return lambda space, seed: SobolSequenceSampler(space, seed=seed)


class TestSALibSobol(SamplerSuite):
    @pytest.fixture
    def make_sampler(self):
        return lambda space, seed: SALibSobolSampler(space, seed=seed, base_samples=4)


class TestMorris(SamplerSuite):
    @pytest.fixture
    def make_sampler(self):
        return lambda space, seed: MorrisSampler(space, seed=seed, trajectories=4)


class TestLossDriven(SamplerSuite):
    @pytest.fixture
    def make_sampler(self):
        return lambda space, seed: LossDrivenSampler(space, seed=seed, exploration=0.2)


class TestSensitivityWeighted(SamplerSuite):
    @pytest.fixture
    def make_sampler(self):
        return lambda space, seed: SensitivityWeightedSampler(space, seed=seed, candidates=10)


class TestImageSimilarity(SamplerSuite):
    @pytest.fixture
    def make_sampler(self):
        return lambda space, seed: ImageSimilaritySampler(space, seed=seed, metric="nrmse")


def test_lhs_design_size_stratifies_consecutive_points():
    space = SPACES["continuous"]
    sampler = LatinHypercubeSampler(space, seed=0, design_size=10)
    points = np.concatenate([sampler.ask(3), sampler.ask(3), sampler.ask(4)])
    strata = np.floor(space.to_unit(points) * 10).astype(int)
    for column in strata.T:
        assert sorted(column.tolist()) == list(range(10))


def test_sobol_sequence_is_one_sequence_across_batches_and_resume():
    space = SPACES["continuous"]
    whole = SobolSequenceSampler(space, seed=4).ask(32)
    sampler = SobolSequenceSampler(space, seed=4)
    head = sampler.ask(5)
    resumed = SobolSequenceSampler(space, seed=0)
    resumed.load_state_dict(copy.deepcopy(sampler.state_dict()))
    np.testing.assert_allclose(np.concatenate([head, resumed.ask(27)]), whole)


def _ishigami(values: np.ndarray, a: float = 7.0, b: float = 0.1) -> np.ndarray:
    x1, x2, x3 = values.T
    return np.sin(x1) + a * np.sin(x2) ** 2 + b * x3**4 * np.sin(x1)


ISHIGAMI = ParameterSpace.from_config({f"x{i}": {"low": -np.pi, "high": np.pi} for i in (1, 2, 3)})


@pytest.mark.parametrize("calc_second_order", [False, True])
def test_salib_sobol_design_size_and_indices(calc_second_order):
    sampler = SALibSobolSampler(ISHIGAMI, seed=0, base_samples=1024, calc_second_order=calc_second_order)
    assert sampler.block_rows == 1024 * (8 if calc_second_order else 5)
    points = sampler.ask(sampler.block_rows)
    sampler.tell(points, losses=_ishigami(points))
    result = sampler.analyze()
    np.testing.assert_allclose(result.S1, [0.3139, 0.4424, 0.0], atol=0.06)
    np.testing.assert_allclose(result.ST, [0.5576, 0.4424, 0.2437], atol=0.06)


def test_salib_sobol_failed_point_drops_its_group_and_analysis_stays_valid():
    sampler = SALibSobolSampler(ISHIGAMI, seed=1, base_samples=1024)
    points = sampler.ask(sampler.block_rows)
    rng = np.random.default_rng(0)
    failed = rng.choice(len(points), size=40, replace=False)
    assert sampler.report_failure(points[failed]) is FailureAction.DROP
    ok = np.setdiff1d(np.arange(len(points)), failed)
    order = rng.permutation(ok)  # results arrive in any order
    sampler.tell(points[order], losses=_ishigami(points[order]))
    complete, dropped = sampler.complete_groups()
    groups_hit = len({int(i) // sampler.group_size for i in failed})
    assert dropped == groups_hit and len(complete) == 1024 - groups_hit
    result = sampler.analyze()
    assert result.groups_dropped == groups_hit
    np.testing.assert_allclose(result.ST, [0.5576, 0.4424, 0.2437], atol=0.07)


def test_structured_resimulate_keeps_the_row_waiting():
    sampler = SALibSobolSampler(SPACES["one"], seed=0, base_samples=2, on_failure="resimulate")
    points = sampler.ask(sampler.block_rows)
    assert sampler.report_failure(points[:1]) is FailureAction.RESIMULATE
    sampler.tell(points[1:], losses=points[1:, 0])
    assert len(sampler.complete_groups()[0]) == 1  # group 0 still waits for its first row
    sampler.tell(points[:1], losses=points[:1, 0])  # the re-simulated result
    assert len(sampler.complete_groups()[0]) == 2


def test_structured_analysis_before_results_says_what_to_do():
    sampler = MorrisSampler(SPACES["continuous"], seed=0)
    with pytest.raises(ValueError, match="no complete design group yet"):
        sampler.analyze()


def test_morris_ranks_ishigami_inputs_and_survives_failures():
    sampler = MorrisSampler(ISHIGAMI, seed=0, trajectories=40)
    points = sampler.ask(sampler.block_rows)
    sampler.report_failure(points[5:6])
    sampler.tell(np.delete(points, 5, axis=0), losses=_ishigami(np.delete(points, 5, axis=0)))
    result = sampler.analyze()
    assert result.groups == 39 and result.groups_dropped == 1
    assert result.mu_star[0] > result.mu_star[2] and result.mu_star[1] > result.mu_star[2]


def test_structured_resume_keeps_results():
    sampler = SALibSobolSampler(ISHIGAMI, seed=3, base_samples=64)
    points = sampler.ask(sampler.block_rows)
    sampler.tell(points, losses=_ishigami(points))
    restored = SALibSobolSampler(ISHIGAMI, seed=0, base_samples=64)
    restored.load_state_dict(copy.deepcopy(sampler.state_dict()))
    np.testing.assert_allclose(restored.analyze().ST, sampler.analyze().ST)
    np.testing.assert_array_equal(restored.ask(7), sampler.ask(7))


def test_loss_driven_concentrates_on_high_loss_and_follows_schedule():
    space = SPACES["continuous"]
    sampler = LossDrivenSampler(space, seed=0, exploration=1.0, exploration_final=0.0, schedule="linear", horizon=100)
    assert sampler.current_exploration() == 1.0
    target = space.from_unit([[0.9, 0.1, 0.5]])
    sampler.tell(np.concatenate([target, space.from_unit([[0.1, 0.9, 0.5]])]), losses=[5.0, 0.0])
    sampler.ask(100)
    assert sampler.current_exploration() == 0.0
    near = np.linalg.norm(space.to_unit(sampler.ask(200)) - [0.9, 0.1, 0.5], axis=1) < 0.2
    assert near.mean() > 0.95


def test_loss_driven_keys_losses_by_simulation_and_forgets_a_failed_one_alone():
    from engage.core.online.record import SimulationRecord

    space = SPACES["continuous"]
    sampler = LossDrivenSampler(space, seed=0, significance=None)
    point = space.from_unit([[0.25, 0.5, 0.75]])
    # two simulations at one point (a resimulated or repeated point) and their losses by batch
    sampler.tell(np.repeat(point, 4, axis=0), losses=[1.0, 3.0, 8.0, 8.0], simulation_ids=[4, 4, 9, 9])
    assert sorted(sampler.loss_table()[1].tolist()) == [2.0, 8.0]
    exact = SimulationRecord.create(space, 4, point[0] + 1e-7, ask_index=0)  # a batch's rounding
    sampler.simulation_finished(exact)
    assert exact.unit in sampler.loss_table()[0].tolist()  # placed at its record's point
    sampler.simulation_failed(SimulationRecord.create(space, 9, point[0], ask_index=1))
    assert sampler.loss_table()[1].tolist() == [2.0]  # the failed one alone, found by id
    # finished before its losses are told (batches trained after the stream ended): still exact
    early = SimulationRecord.create(space, 12, space.from_unit([[0.1, 0.2, 0.3]])[0], ask_index=2)
    sampler.simulation_finished(early)
    rounded = space.from_unit(np.asarray([early.unit], dtype=np.float32).astype(np.float64))
    sampler.tell(rounded, losses=[1.0], simulation_ids=[12])
    assert early.unit in sampler.loss_table()[0].tolist()
    restored = LossDrivenSampler(space, seed=3, significance=None)
    restored.load_state_dict(copy.deepcopy(sampler.state_dict()))
    restored.tell(point, losses=[6.0], simulation_ids=[4])
    assert restored.loss_table()[1].tolist() == [1.0, 10.0 / 3]  # ids and counts travel with the state


def test_loss_driven_radius_shrinks_where_points_crowd():
    space = SPACES["continuous"]
    parent = np.array([[0.5, 0.5, 0.5]])
    crowd = 0.5 + np.random.default_rng(0).uniform(-0.02, 0.02, size=(60, 3))
    spreads = {}
    for name, adaptive in (("fixed", False), ("adaptive", True)):
        sampler = LossDrivenSampler(
            space, seed=0, exploration=0.0, sigma=0.1, top_k=1, candidates=1, adaptive_radius=adaptive
        )
        sampler.tell(space.from_unit(np.vstack([parent, crowd])), losses=[1.0] + [0.0] * len(crowd))
        spreads[name] = space.to_unit(sampler.ask(300)).std(axis=0).mean()
    assert spreads["adaptive"] < 0.5 * spreads["fixed"]  # (1 + 60)^(-1/3) ≈ 0.25


def test_loss_driven_explores_along_a_sobol_sequence_and_spreads_candidates():
    space = SPACES["continuous"]
    explorer = LossDrivenSampler(space, seed=4, exploration=1.0)
    np.testing.assert_allclose(explorer.ask(16), SobolSequenceSampler(space, seed=4).ask(16))
    gaps = {}
    for candidates in (1, 8):
        sampler = LossDrivenSampler(space, seed=0, exploration=0.0, sigma=0.1, candidates=candidates)
        sampler.tell(space.from_unit([[0.5, 0.5, 0.5]]), losses=[1.0])
        unit = space.to_unit(sampler.ask(32))
        distances = np.linalg.norm(unit[:, None] - unit[None], axis=2) + np.eye(32)
        gaps[candidates] = distances.min(axis=1).mean()
    assert gaps[8] > 1.3 * gaps[1]  # the farthest of 8 proposals keeps the batch from piling up
    with pytest.raises(ValueError, match="exploration_sequence"):
        LossDrivenSampler(space, exploration_sequence="halton")


def test_loss_driven_weights_stretch_perturbations():
    space = SPACES["continuous"]
    sampler = LossDrivenSampler(space, seed=0, exploration=0.0, sigma=0.05)
    sampler.set_parameter_weights([1.0, 0.0, 0.0])
    sampler.tell(space.from_unit([[0.5, 0.5, 0.5]]), losses=[1.0])
    spread = space.to_unit(sampler.ask(200)).std(axis=0)
    assert spread[0] > 0.05 and spread[1] < 1e-9
    with pytest.raises(ValueError, match="3 parameters"):
        sampler.set_parameter_weights([1.0])


def test_sensitivity_weighted_resolves_important_parameter():
    space = SPACES["continuous"]
    weighted = SensitivityWeightedSampler(space, seed=0, weights=[1.0, 0.01, 0.01])
    plain = SensitivityWeightedSampler(space, seed=0)
    gap = {}
    for name, sampler in (("weighted", weighted), ("plain", plain)):
        first = np.sort(space.to_unit(sampler.ask(32))[:, 0])
        gap[name] = np.diff(np.r_[0.0, first, 1.0]).max()
    assert gap["weighted"] < gap["plain"]


@pytest.mark.parametrize(
    ("node", "key", "value", "message"),
    [
        (sampling_config.SALibSobolConfig, "base_samples", 100, "sampler.base_samples: must be a power of 2"),
        (sampling_config.MorrisConfig, "on_failure", "ignore", "sampler.on_failure: must be one of drop, resimulate"),
        (sampling_config.LossDrivenConfig, "exploration", 1.5, "sampler.exploration: must be between 0 and 1"),
        (sampling_config.LossDrivenConfig, "candidates", 0, "sampler.candidates: must be >= 1"),
        (
            sampling_config.LossDrivenConfig,
            "exploration_sequence",
            "halton",
            "sampler.exploration_sequence: must be one of sobol, uniform",
        ),
        (sampling_config.ImageSimilarityConfig, "metric", "mse", "sampler.metric: must be one of ssim, psnr, nrmse"),
        (sampling_config.LatinHypercubeConfig, "design_size", 0, "sampler.design_size: must be >= 1"),
    ],
)
def test_bad_sampler_config_fails_with_one_clear_line(node, key, value, message):
    cfg = OmegaConf.create({"seed": 0, "sampler": OmegaConf.structured(node)})
    cfg.sampler[key] = value
    with pytest.raises(ConfigError) as info:
        check_values(cfg)
    assert str(info.value).startswith(message)
    assert len(str(info.value).splitlines()) == 1


def test_plugin_registers_samplers_and_options():
    from engage.core.config.store import config_options
    from engage.core.plugins import new_plugin_manager, samplers
    from engage.sampling import plugin

    manager = new_plugin_manager([("sampling", plugin)], installed=False)
    names = set(samplers(manager))
    assert {"lhs", "sobol_sequence", "salib_sobol", "morris", "loss_driven"} <= names
    options = {(o.group, o.name) for _, o in config_options(manager)}
    assert ("sampler", "salib_sobol") in options and ("sampler", "lhs") in options
    callbacks = {name for group, name in options if group == "callbacks"}
    assert callbacks == {"sensitivity", "loss_driven", "image_similarity"}
    for _, option in config_options(manager):
        if option.group == "callbacks":
            continue  # composed into engage run's config in test_sampling_run.py
        cfg = OmegaConf.create({"seed": 0, "sampler": OmegaConf.structured(option.node)})
        built = OmegaConf.to_object(cfg.sampler)
        assert built._target_.rsplit(".", 1)[1] == samplers(manager)[option.name].__name__
