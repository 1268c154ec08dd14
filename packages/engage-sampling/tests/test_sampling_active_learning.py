"""The samplers drive a plain simulate function, failures included."""

import numpy as np

from engage.core import ParameterSpace
from engage.sampling import LossDrivenSampler, SALibSobolSampler, active_learning

ISHIGAMI = ParameterSpace.from_config({f"x{i}": {"low": -np.pi, "high": np.pi} for i in (1, 2, 3)})


def ishigami(p):
    return float(np.sin(p[0]) + 7 * np.sin(p[1]) ** 2 + 0.1 * p[2] ** 4 * np.sin(p[0]))


def test_sobol_design_with_failing_simulations_still_gives_valid_indices():
    sampler = SALibSobolSampler(ISHIGAMI, seed=0, base_samples=512)
    rng = np.random.default_rng(0)

    def flaky(p):
        if rng.random() < 0.02:
            raise RuntimeError("solver diverged")
        return ishigami(p)

    result = active_learning(flaky, sampler, budget=sampler.block_rows, batch_size=256)
    assert result.simulations == sampler.block_rows and len(result.failed) > 0
    analysis = sampler.analyze()
    assert analysis.groups_dropped > 0 and analysis.groups + analysis.groups_dropped == 512
    np.testing.assert_allclose(analysis.ST, [0.5576, 0.4424, 0.2437], atol=0.1)


def test_resimulate_retries_then_gives_up_within_budget():
    sampler = SALibSobolSampler(ISHIGAMI, seed=0, base_samples=2, on_failure="resimulate")
    attempts = []

    def always_fails_first_point(p):
        attempts.append(p.copy())
        if np.allclose(p, attempts[0]):
            raise RuntimeError("boom")
        return ishigami(p)

    result = active_learning(always_fails_first_point, sampler, budget=12, batch_size=4, max_retries=2)
    assert result.simulations == 12
    assert sum(np.allclose(a, attempts[0]) for a in attempts) == 3  # first run + 2 retries
    assert len(result.failed) == 1 and len(result.points) == 12 - 3


def test_loss_driven_loop_concentrates_where_the_loss_is():
    space = ParameterSpace.from_config({"x": {"low": 0, "high": 1}, "y": {"low": 0, "high": 1}})
    sampler = LossDrivenSampler(space, seed=0, exploration=0.2, sigma=0.03)
    result = active_learning(
        lambda p: float(np.exp(-np.sum((p - 0.7) ** 2) / 0.005)),
        sampler,
        budget=200,
        batch_size=20,
        loss=lambda points, outputs: np.asarray(outputs),
        named=False,
    )
    late = result.points[100:]
    assert np.mean(np.linalg.norm(late - 0.7, axis=1) < 0.15) > 0.4  # uniform would put ~7% there
    assert len(result.rounds) == 10 and np.isfinite(result.rounds[-1]["mean_loss"])


def test_named_points_reach_simulate_as_dicts():
    seen = []
    active_learning(lambda p: seen.append(p) or 0.0, LossDrivenSampler(ISHIGAMI), budget=3, batch_size=2, named=True)
    assert len(seen) == 3 and set(seen[0]) == {"x1", "x2", "x3"}
