"""Parameter spaces the conformance suites run samplers on."""

from __future__ import annotations

from engage.core.space import ParameterSpace


def parameter_spaces() -> dict[str, ParameterSpace]:
    """A continuous space, a mixed one (every distribution) and a one-dimensional one."""
    return {
        "continuous": ParameterSpace.from_config(
            {"a": {"low": -1.0, "high": 1.0}, "b": {"low": 0.0, "high": 10.0}, "c": {"low": 100.0, "high": 500.0}}
        ),
        "mixed": ParameterSpace.from_config(
            {
                "u": {"low": 0.0, "high": 1.0},
                "n": {"distribution": "normal", "mean": 0.0, "std": 2.0, "low": -5.0, "high": 5.0},
                "log": {"distribution": "loguniform", "low": 1e-4, "high": 1e-1},
                "i": {"distribution": "integer", "low": 1, "high": 8},
                "cat": {"distribution": "categorical", "choices": ["x", "y", "z"]},
            }
        ),
        "one": ParameterSpace.from_config({"x": {"low": 0.0, "high": 1.0}}),
    }
