"""The simulator contract."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from engage.core.space import ParameterSpace


class SimulatorOutputError(ValueError):
    """A simulator produced a sample that does not match its declared shape or dtype."""


class Simulator(ABC):
    """Base class of every simulator.

    A simulator declares its :attr:`space` (the parameters it takes), the :attr:`sample_shape` and
    :attr:`dtype` of every sample it streams, and, when known in advance, :attr:`samples_per_run`.
    :meth:`run` validates the parameters, calls :meth:`simulate` and checks every sample against
    the declaration, so a consumer can trust what it receives.

    Subclasses implement :meth:`simulate`, a generator of ``numpy`` arrays.

    Example::

        >>> import numpy as np
        >>> from engage.core import ParameterSpace
        >>> class Ramp(Simulator):
        ...     space = ParameterSpace.from_config({"slope": {"low": 0, "high": 2}})
        ...     sample_shape = (3,)
        ...     dtype = np.dtype("float32")
        ...     samples_per_run = 2
        ...     def simulate(self, parameters):
        ...         for t in range(2):
        ...             yield np.full(3, parameters[0] * t, dtype=np.float32)
        >>> [s.tolist() for s in Ramp().run([1.5])]
        [[0.0, 0.0, 0.0], [1.5, 1.5, 1.5]]
    """

    #: the parameters this simulator takes
    space: ParameterSpace
    #: shape of every sample
    sample_shape: tuple[int, ...]
    #: dtype of every sample
    dtype: np.dtype
    #: number of samples one run streams, or ``None`` when it is not known in advance
    samples_per_run: int | None = None
    #: range the sample values lie in, when the physics bounds them (used to normalise targets)
    value_range: tuple[float, float] | None = None
    #: ``True`` when every yielded array is memory the simulator never writes again (a new array
    #: per sample): the client then sends it without waiting for the transport to let go of it,
    #: overlapping the next sample's computation with this one's transfer. Leave ``False`` for a
    #: simulator that updates one array in place and yields it again.
    fresh_samples: bool = False

    @abstractmethod
    def simulate(self, parameters: np.ndarray) -> Iterator[np.ndarray]:
        """Yield the samples of one simulation with these (already validated) parameters."""

    def run(self, parameters: np.ndarray | Mapping[str, Any] | list[float]) -> Iterator[np.ndarray]:
        """Validate ``parameters``, run :meth:`simulate` and check each sample it yields."""
        vector = self.parameter_vector(parameters)
        expected_shape = tuple(self.sample_shape)
        expected_dtype = np.dtype(self.dtype)
        for index, sample in enumerate(self.simulate(vector)):
            sample = np.asarray(sample)
            if sample.shape != expected_shape or sample.dtype != expected_dtype:
                raise SimulatorOutputError(
                    f"{type(self).__name__} sample {index} has shape {sample.shape} and dtype {sample.dtype}; "
                    f"declared shape {expected_shape} and dtype {expected_dtype}"
                )
            yield sample

    def parameter_vector(self, parameters: np.ndarray | Mapping[str, Any] | list[float]) -> np.ndarray:
        """Parameters as a validated ``(d,)`` float vector (a mapping is read by name)."""
        if isinstance(parameters, Mapping):
            missing = [name for name in self.space.names if name not in parameters]
            if missing:
                raise ValueError(f"missing parameter(s) {', '.join(missing)} for {type(self).__name__}")
            values = []
            for p in self.space:
                value = parameters[p.name]
                values.append(
                    p.choices.index(value) if p.distribution == "categorical" and value in p.choices else value
                )
            parameters = values
        return self.space.validate(parameters)

    def describe(self) -> dict[str, Any]:
        """A plain-data description (for journals, MLflow and the wire protocol's hello)."""
        return {
            "simulator": type(self).__name__,
            "parameters": self.space.to_config(),
            "sample_shape": list(self.sample_shape),
            "dtype": np.dtype(self.dtype).str,
            "samples_per_run": self.samples_per_run,
            "value_range": list(self.value_range) if self.value_range else None,
        }
