import numpy as np
import pytest

from engage.core import ParameterSpace, ParameterSpaceError


def test_every_distribution_maps_unit_points_inside_bounds():
    space = ParameterSpace.from_config(
        {
            "u": {"low": 2, "high": 4},
            "n": {"distribution": "normal", "mean": 1.0, "std": 0.5},
            "t": {"distribution": "normal", "mean": 0.0, "std": 1.0, "low": -1, "high": 1},
            "log": {"distribution": "loguniform", "low": 1e-3, "high": 1e3},
            "i": {"distribution": "integer", "low": -2, "high": 2},
            "c": {"distribution": "categorical", "choices": ["a", "b"]},
        }
    )
    u = np.random.default_rng(0).random((2000, space.dim))
    x = space.from_unit(u)
    assert space.contains(x)
    assert 2 <= x[:, 0].min() and x[:, 0].max() <= 4
    assert abs(x[:, 1].mean() - 1.0) < 0.05 and abs(x[:, 1].std() - 0.5) < 0.05
    assert -1 <= x[:, 2].min() and x[:, 2].max() <= 1
    assert abs(np.median(np.log10(x[:, 3]))) < 0.15  # log-uniform: median at the geometric centre
    assert set(np.unique(x[:, 4])) == {-2, -1, 0, 1, 2}
    assert set(np.unique(x[:, 5])) == {0, 1}
    np.testing.assert_allclose(space.from_unit(space.to_unit(x)), x, rtol=1e-6, atol=1e-9)
    assert space.to_dicts(x[:1])[0]["c"] in ("a", "b")
    assert isinstance(space.to_dicts(x[:1])[0]["i"], int)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"x": {"low": 1, "high": 1}}, "low (1.0) must be < high (1.0)"),
        ({"x": {"low": 2, "high": 1}}, "'x': low (2.0) must be < high"),
        ({"x": {"distribution": "gamma", "low": 0, "high": 1}}, "unknown distribution 'gamma'; use one of uniform"),
        ({}, "the parameter space is empty"),
        ({"x": {"distribution": "loguniform", "low": 0, "high": 1}}, "loguniform needs low > 0"),
        ({"x": {"distribution": "normal", "mean": 0}}, "normal needs 'mean' and 'std'"),
        ({"x": {"distribution": "categorical", "choices": []}}, "non-empty 'choices'"),
        ({"x": {"low": 0, "high": 1, "hgh": 3}}, "unknown key(s) hgh"),
        ({"x": {"low": "zero", "high": 1}}, "low must be a number"),
    ],
)
def test_invalid_definitions_fail_with_a_clear_message(config, message):
    with pytest.raises(ParameterSpaceError) as info:
        ParameterSpace.from_config(config)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_list_form_and_round_trip():
    space = ParameterSpace.from_config([{"name": "a", "low": 0, "high": 1}, {"name": "b", "low": 5, "high": 6}])
    assert space.names == ["a", "b"]
    assert ParameterSpace.from_config(space.to_config()) == space
    with pytest.raises(ParameterSpaceError, match="unique"):
        ParameterSpace.from_config([{"name": "a", "low": 0, "high": 1}, {"name": "a", "low": 0, "high": 1}])


def test_validate_names_the_parameter():
    space = ParameterSpace.from_config({"a": {"low": 0, "high": 1}, "b": {"low": 0, "high": 1}})
    with pytest.raises(ValueError, match=r"parameter 'b' = 3\.0 is outside"):
        space.validate([0.5, 3.0])
