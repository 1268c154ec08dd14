"""Simulators written as plain Python functions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from engage.core.simulators.base import Simulator
from engage.core.space import ParameterSpace


def _path_of(function: Callable[..., Any]) -> str | None:
    module, qualname = getattr(function, "__module__", None), getattr(function, "__qualname__", "")
    if not module or "<" in qualname or module == "__main__":
        return None
    return f"{module}:{qualname}"


class FunctionSimulator(Simulator):
    """A simulator from a function ``f(parameters: dict, **kwargs) -> iterable of arrays``.

    ``function`` is a callable or its import path (``package.module:name``); give a module-level
    function so simulation processes can import it. ``parameters`` is a parameter-space config
    (as :meth:`ParameterSpace.from_config` takes).

    Example::

        >>> def ramp(p, steps=3):
        ...     for t in range(steps):
        ...         yield np.full(2, p["slope"] * t, "float32")
        >>> sim = FunctionSimulator(ramp, {"slope": {"low": 0, "high": 1}}, sample_shape=(2,), samples_per_run=3)
        >>> [s[0].item() for s in sim.run([0.5])]
        [0.0, 0.5, 1.0]
    """

    def __init__(
        self,
        function: str | Callable[..., Iterable[np.ndarray]],
        parameters: Mapping[str, Any],
        sample_shape: tuple[int, ...] | list[int],
        dtype: str = "float32",
        samples_per_run: int | None = None,
        value_range: tuple[float, float] | list[float] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        fresh_samples: bool = False,
    ):
        if isinstance(function, str):
            from engage.core.online.client import import_object

            self.function_path: str | None = function
            self.function = import_object(function)
        else:
            self.function_path = _path_of(function)
            self.function = function
        if not callable(self.function):
            raise TypeError(f"function must be callable, got {self.function!r}")
        self.parameters_config = {k: dict(v) for k, v in dict(parameters).items()}
        self.space = ParameterSpace.from_config(self.parameters_config)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.dtype = np.dtype(dtype)
        self.samples_per_run = samples_per_run
        self.value_range = tuple(value_range) if value_range is not None else None  # type: ignore[assignment]
        self.kwargs = dict(kwargs or {})
        self.fresh_samples = bool(fresh_samples)

    def simulate(self, parameters: np.ndarray) -> Iterator[np.ndarray]:
        values = self.space.to_dicts(parameters)[0]
        yield from self.function(values, **self.kwargs)

    def launch_spec(self) -> dict[str, Any] | None:
        """How a simulation process rebuilds this simulator (``None`` for lambdas and locals)."""
        if self.function_path is None:
            return None
        return {
            "target": f"{FunctionSimulator.__module__}.FunctionSimulator",
            "kwargs": {
                "function": self.function_path,
                "parameters": self.parameters_config,
                "sample_shape": list(self.sample_shape),
                "dtype": self.dtype.str,
                "samples_per_run": self.samples_per_run,
                "value_range": list(self.value_range) if self.value_range else None,
                "kwargs": self.kwargs,
                "fresh_samples": self.fresh_samples,
            },
        }
