"""The online sample-efficiency benchmark measures what it says, at a tiny size."""

import math

import pytest

from engage.core.simulators import HeatEquation


@pytest.fixture(scope="module")
def benchmark(load_script):
    return load_script("benchmarks/sample_efficiency.py")


def test_simulations_to_reach_interpolates_in_log_error(benchmark):
    budgets, errors = [8, 16, 32], [0.4, 0.2, 0.1]
    assert benchmark.simulations_to_reach(budgets, errors, 0.5) == 8  # reached at the first budget
    assert benchmark.simulations_to_reach(budgets, errors, 0.1) == 32
    # sqrt(0.4 * 0.2) is halfway between 0.4 and 0.2 in log(error): halfway between 8 and 16
    assert math.isclose(benchmark.simulations_to_reach(budgets, errors, math.sqrt(0.08)), 12.0)
    assert benchmark.simulations_to_reach(budgets, errors, 0.05) is None


def test_targets_judge_the_best_adaptive_sampler_and_every_one_on_smooth_problems(benchmark):
    def problem(varies, fractions):
        return {"varies": varies, "methods": {m: {"fraction_of_sobol_budget": f} for m, f in fractions.items()}}

    out = {
        "problems": {
            "hard": problem(True, {"loss_driven": 0.55, "breed": 0.9, "image_similarity": None}),
            "harder": problem(True, {"loss_driven": 0.7, "breed": 0.61, "image_similarity": None}),
            "smooth": problem(False, {"loss_driven": 0.9, "breed": 1.05, "image_similarity": None}),
        }
    }
    targets = benchmark.online_targets(out)
    assert targets["hard"]["met"] and targets["hard"]["best"] == "loss_driven"
    assert not targets["harder"]["met"] and targets["harder"]["best"] == "breed"
    assert not targets["smooth"]["met"]  # one adaptive sampler never reached the Sobol' sequence's error
    out["problems"]["smooth"]["methods"]["image_similarity"]["fraction_of_sobol_budget"] = 1.1
    assert benchmark.online_targets(out)["smooth"]["met"]


@pytest.mark.timeout(120)
def test_an_online_run_trains_its_steps_and_feeds_the_adaptive_sampler(benchmark):
    problem = benchmark.OnlineProblem("heat", HeatEquation(grid=8, steps=4), varies=False, width=4, steps=24)
    result = benchmark.online_run(problem, "loss_driven", seed=0, simulations=4, steps=problem.steps)
    assert result["finished"] == 4  # every simulation of the budget ran through the online path
    assert result["told"] > 0  # the callback told the sampler the training losses
    assert 0.0 < result["error"] < 1.0
    # the summary of a problem: medians per budget, and the share of the Sobol' sequence's budget
    errors = {"sobol_sequence": [[0.4, 0.2, 0.1]] * 3, "loss_driven": [[0.2, 0.1, 0.05]] * 3}
    summary = benchmark.summarize_online(problem, [8, 16, 32], 32, problem.steps, errors)
    assert summary["sobol_error_at_nominal"] == 0.1 and summary["seeds"] == 3
    assert summary["methods"]["loss_driven"]["fraction_of_sobol_budget"] == 0.5


def test_methods_run_again_replace_only_their_own_figures(benchmark):
    before = {
        "budgets": [8, 16],
        "steps": 600,
        "seeds": 2,
        "methods": {
            "sobol_sequence": {"per_seed": [[0.2, 0.1], [0.3, 0.2]], "mean_run_s": 4.0},
            "loss_density": {"per_seed": [[0.5, 0.4], [0.6, 0.5]], "mean_run_s": 5.0},
        },
    }
    errors, walls = benchmark.kept_results(before, [8, 16], 600, 2, ["loss_density"])
    assert errors == {"sobol_sequence": [[0.2, 0.1], [0.3, 0.2]]} and walls == {"sobol_sequence": [4.0]}
    # figures measured otherwise are not mixed with new ones
    assert benchmark.kept_results(before, [8, 16], 300, 2, ["loss_density"]) == ({}, {})
    assert benchmark.kept_results(before, [8, 16, 32], 600, 2, []) == ({}, {})
    assert benchmark.kept_results(None, [8, 16], 600, 2, []) == ({}, {})


def test_the_informed_design_is_the_sobol_sequence_denser_where_the_problem_is_hard(benchmark):
    import numpy as np

    from engage.core.simulators.burgers import ViscousBurgers

    space = ViscousBurgers(grid=8, steps=2).space
    informed = benchmark.online_sampler("informed_sobol", space, 0, 64, towards_hard=benchmark.denser_at_low_viscosity)
    sequence = space.to_unit(benchmark.online_sampler("sobol_sequence", space, 0, 64).ask(64))
    unit = space.to_unit(informed.ask(64))
    np.testing.assert_allclose(unit[:, 0], sequence[:, 0] ** 2.5)  # viscosity: 52% in its lowest fifth
    np.testing.assert_allclose(unit[:, 1:], sequence[:, 1:])  # amplitude and phase as the sequence
    with pytest.raises(ValueError, match="towards_hard"):
        benchmark.online_sampler("informed_sobol", space, 0, 64)
