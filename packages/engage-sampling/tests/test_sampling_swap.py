"""The swap experiment's core functions (``benchmarks/swap_experiment.py``) at a tiny size.

Sobol' indices of the image renderer must find that lighting and material have no effect on the
object's coverage, and the similarity landscape of the Burgers equation must be more dissimilar
at low viscosity (shocks) than at high viscosity.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest


@pytest.fixture(scope="module")
def swap(load_script) -> ModuleType:
    """The benchmark script, imported from its path (``benchmarks/`` is not a package)."""
    return load_script("benchmarks/swap_experiment.py")


def test_renderer_indices_find_the_parameters_without_effect_on_coverage(swap: ModuleType) -> None:
    result = swap.renderer_sensitivity(size=16, base_samples=32, num_resamples=10)
    names = result["names"]
    coverage = result["quantities"]["coverage"]
    without_effect = ["light_azimuth", "light_elevation", "albedo", "shininess"]
    for name in without_effect:
        i = names.index(name)
        assert coverage["ST"][i] == 0.0 and coverage["verdict"][i] == "negligible", name
    assert names[int(np.argmax(coverage["ST"]))] == "shape_size"
    assert coverage["verdict"][names.index("shape_size")] == "matters"
    # the image's aggregated indices: every parameter changes some pixels, azimuth among the largest
    image = result["quantities"]["image"]
    assert np.all(image["ST"] > 0) and image["ST"][names.index("light_azimuth")] > 0.2
    assert result["maps"]["ST"].shape == (len(names), 16, 16)


def test_burgers_dissimilarity_is_higher_at_low_viscosity(swap: ModuleType) -> None:
    result = swap.similarity_study("burgers", points=128)
    nu = result["views"]["final_row_nrmse"]["parameters"]["nu"]
    assert nu["spearman"] < -0.2
    assert nu["bin_means"][0] > 1.3 * nu["bin_means"][-1]
    assert len(result["pairs_nu"]) == result["views"]["final_row_nrmse"]["pairs"]
