"""Parameter spaces: named simulation parameters with bounds and distributions.

Samplers work in the unit hypercube ``[0, 1)^d`` and map points to parameter values with
:meth:`ParameterSpace.from_unit` (the inverse CDF of each parameter's distribution), so any
design (random, Latin hypercube, Sobol, Morris) works for any mix of distributions.

Example::

    >>> space = ParameterSpace.from_config({
    ...     "T_init": {"low": 100, "high": 500},
    ...     "k": {"distribution": "loguniform", "low": 1e-3, "high": 1e-1},
    ...     "mesh": {"distribution": "categorical", "choices": ["coarse", "fine"]},
    ... })
    >>> space.names
    ['T_init', 'k', 'mesh']
    >>> space.from_unit([[0.5, 0.5, 0.9]]).round(6).tolist()
    [[300.0, 0.01, 1.0]]
    >>> space.to_dicts(space.from_unit([[0.5, 0.5, 0.9]]))[0]["mesh"]
    'fine'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DISTRIBUTIONS = ("uniform", "normal", "loguniform", "integer", "categorical")


class ParameterSpaceError(ValueError):
    """An invalid parameter definition; the message names the parameter and the fix."""


@dataclass(frozen=True)
class Parameter:
    """One named parameter.

    ``uniform``/``loguniform``/``integer`` use ``low`` and ``high`` (integer bounds inclusive);
    ``normal`` uses ``mean`` and ``std`` and, optionally, ``low``/``high`` to truncate it;
    ``categorical`` uses ``choices`` and is represented by the index of the choice. ``unit``
    (``"K"``, ``"m/s"``; empty when dimensionless) names what the values measure, for plots.
    """

    name: str
    distribution: str = "uniform"
    low: float | None = None
    high: float | None = None
    mean: float | None = None
    std: float | None = None
    choices: tuple[Any, ...] = field(default_factory=tuple)
    unit: str = ""

    @property
    def label(self) -> str:
        """The name with its unit, for an axis: ``T_top [K]`` (the name alone without a unit)."""
        return f"{self.name} [{self.unit}]" if self.unit else self.name

    def describe(self) -> str:
        """The parameter in words, for records: ``T_top [K]: uniform in [300, 500]``."""
        if self.distribution == "categorical":
            return f"{self.label}: one of {', '.join(map(str, self.choices))}"
        if self.distribution == "normal":
            bounds = ""
            if self.low is not None or self.high is not None:
                low = "-inf" if self.low is None else f"{self.low:g}"
                high = "inf" if self.high is None else f"{self.high:g}"
                bounds = f", within [{low}, {high}]"
            return f"{self.label}: normal with mean {self.mean:g} and std {self.std:g}{bounds}"
        return f"{self.label}: {self.distribution} in [{self.low:g}, {self.high:g}]"

    def __post_init__(self) -> None:
        where = f"parameter {self.name!r}"
        if self.distribution not in DISTRIBUTIONS:
            raise ParameterSpaceError(
                f"{where}: unknown distribution {self.distribution!r}; use one of {', '.join(DISTRIBUTIONS)}"
            )
        if self.distribution == "categorical":
            if len(self.choices) < 1:
                raise ParameterSpaceError(f"{where}: categorical needs a non-empty 'choices' list")
            return
        if self.distribution == "normal":
            if self.mean is None or self.std is None:
                raise ParameterSpaceError(f"{where}: normal needs 'mean' and 'std'")
            if not self.std > 0:
                raise ParameterSpaceError(f"{where}: std must be > 0, got {self.std}")
            if self.low is not None and self.high is not None and not self.low < self.high:
                raise ParameterSpaceError(f"{where}: low ({self.low}) must be < high ({self.high})")
            return
        if self.low is None or self.high is None:
            raise ParameterSpaceError(f"{where}: {self.distribution} needs 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ParameterSpaceError(f"{where}: low and high must be finite numbers")
        if not self.low < self.high:
            raise ParameterSpaceError(f"{where}: low ({self.low}) must be < high ({self.high})")
        if self.distribution == "loguniform" and self.low <= 0:
            raise ParameterSpaceError(f"{where}: loguniform needs low > 0, got {self.low}")
        if self.distribution == "integer" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ParameterSpaceError(f"{where}: integer bounds must be whole numbers")

    @property
    def bounds(self) -> tuple[float, float]:
        """The range of values ``from_unit`` can produce (categoricals: index range)."""
        if self.distribution == "categorical":
            return 0.0, float(len(self.choices) - 1)
        if self.distribution == "normal":
            low = self.low if self.low is not None else -math.inf
            high = self.high if self.high is not None else math.inf
            return float(low), float(high)
        return float(self.low), float(self.high)  # type: ignore[arg-type]

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """Map unit values ``u`` in [0, 1] to this parameter's values (inverse CDF)."""
        u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
        if self.distribution == "uniform":
            return self.low + u * (self.high - self.low)
        if self.distribution == "loguniform":
            return np.exp(np.log(self.low) + u * (np.log(self.high) - np.log(self.low)))
        if self.distribution == "integer":
            n = int(self.high) - int(self.low) + 1
            return int(self.low) + np.minimum(np.floor(u * n), n - 1)
        if self.distribution == "categorical":
            n = len(self.choices)
            return np.minimum(np.floor(u * n), n - 1)
        # normal, optionally truncated: map u into the CDF range of [low, high]
        from scipy import stats  # deferred: importing scipy.stats costs ~1 s in every simulator process

        dist = stats.norm(self.mean, self.std)
        lo = dist.cdf(self.low) if self.low is not None else 0.0
        hi = dist.cdf(self.high) if self.high is not None else 1.0
        eps = 1e-12
        return dist.ppf(np.clip(lo + u * (hi - lo), eps, 1 - eps))

    def to_unit(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`from_unit` (cell centres for discrete parameters)."""
        x = np.asarray(x, dtype=np.float64)
        if self.distribution == "uniform":
            return (x - self.low) / (self.high - self.low)
        if self.distribution == "loguniform":
            return (np.log(x) - np.log(self.low)) / (np.log(self.high) - np.log(self.low))
        if self.distribution == "integer":
            n = int(self.high) - int(self.low) + 1
            return (x - int(self.low) + 0.5) / n
        if self.distribution == "categorical":
            return (x + 0.5) / len(self.choices)
        from scipy import stats

        dist = stats.norm(self.mean, self.std)
        lo = dist.cdf(self.low) if self.low is not None else 0.0
        hi = dist.cdf(self.high) if self.high is not None else 1.0
        return (dist.cdf(x) - lo) / (hi - lo)

    def value(self, x: float) -> Any:
        """The user-facing value of one coordinate (a choice for categoricals, an int for integers)."""
        if self.distribution == "categorical":
            return self.choices[int(x)]
        if self.distribution == "integer":
            return int(x)
        return float(x)

    def contains(self, x: float) -> bool:
        low, high = self.bounds
        if self.distribution in ("integer", "categorical") and x != int(x):
            return False
        return low <= x <= high


class ParameterSpace(Sequence[Parameter]):
    """An ordered set of named :class:`Parameter` objects; points are ``(n, d)`` float arrays."""

    def __init__(self, parameters: Iterable[Parameter]):
        self._parameters = tuple(parameters)
        if not self._parameters:
            raise ParameterSpaceError("the parameter space is empty; define at least one parameter")
        names = [p.name for p in self._parameters]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ParameterSpaceError(f"parameter names must be unique; repeated: {', '.join(duplicates)}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> ParameterSpace:
        """Build from ``{name: {distribution: ..., low: ..., high: ...}}`` or a list of dicts with
        a ``name`` key (as written in YAML)."""
        if config is None or len(config) == 0:
            raise ParameterSpaceError("the parameter space is empty; define at least one parameter")
        if isinstance(config, Mapping):
            items = [(str(name), spec) for name, spec in config.items()]
        else:
            items = [(str(spec.get("name", "")), {k: v for k, v in spec.items() if k != "name"}) for spec in config]
        allowed = {"distribution", "low", "high", "mean", "std", "choices", "unit"}
        parameters = []
        for name, spec in items:
            if not name:
                raise ParameterSpaceError("every parameter needs a 'name'")
            spec = dict(spec or {})
            unknown = sorted(set(spec) - allowed)
            if unknown:
                raise ParameterSpaceError(
                    f"parameter {name!r}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
                )
            if "choices" in spec:
                spec["choices"] = tuple(spec["choices"])
            for key in ("low", "high", "mean", "std"):
                if spec.get(key) is not None:
                    try:
                        spec[key] = float(spec[key])
                    except (TypeError, ValueError):
                        raise ParameterSpaceError(
                            f"parameter {name!r}: {key} must be a number, got {spec[key]!r}"
                        ) from None
            parameters.append(Parameter(name=name, **spec))
        return cls(parameters)

    def to_config(self) -> dict[str, dict[str, Any]]:
        """The inverse of :meth:`from_config` (plain data, for checkpoints and MLflow)."""
        out = {}
        for p in self._parameters:
            spec: dict[str, Any] = {"distribution": p.distribution}
            for key in ("low", "high", "mean", "std"):
                if getattr(p, key) is not None:
                    spec[key] = getattr(p, key)
            if p.choices:
                spec["choices"] = list(p.choices)
            if p.unit:
                spec["unit"] = p.unit
            out[p.name] = spec
        return out

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, str):
            for p in self._parameters:
                if p.name == index:
                    return p
            raise KeyError(f"no parameter {index!r}; known: {', '.join(self.names)}")
        return self._parameters[index]

    def __len__(self) -> int:
        return len(self._parameters)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParameterSpace) and self._parameters == other._parameters

    def __hash__(self) -> int:
        return hash(self._parameters)

    def __repr__(self) -> str:
        return f"ParameterSpace({', '.join(f'{p.name}~{p.distribution}' for p in self._parameters)})"

    @property
    def names(self) -> list[str]:
        return [p.name for p in self._parameters]

    def describe(self) -> str:
        """Every parameter in words, for records (an MLflow param of each run).

        Example::

            >>> space = {"T": {"low": 300, "high": 500, "unit": "K"},
            ...          "n": {"distribution": "categorical", "choices": [1, 2]}}
            >>> ParameterSpace.from_config(space).describe()
            'T [K]: uniform in [300, 500]; n: one of 1, 2'
        """
        return "; ".join(p.describe() for p in self._parameters)

    @property
    def dim(self) -> int:
        return len(self._parameters)

    @property
    def bounds(self) -> np.ndarray:
        """``(d, 2)`` array of each parameter's value range."""
        return np.array([p.bounds for p in self._parameters], dtype=np.float64)

    def from_unit(self, u: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Map unit-hypercube points ``(n, d)`` to parameter values ``(n, d)``."""
        u = np.atleast_2d(np.asarray(u, dtype=np.float64))
        if u.shape[1] != self.dim:
            raise ValueError(
                f"points have {u.shape[1]} coordinates; this space has {self.dim} ({', '.join(self.names)})"
            )
        return np.stack([p.from_unit(u[:, i]) for i, p in enumerate(self._parameters)], axis=1)

    def to_unit(self, x: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Map parameter values ``(n, d)`` back to the unit hypercube."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return np.stack([p.to_unit(x[:, i]) for i, p in enumerate(self._parameters)], axis=1)

    def contains(self, x: np.ndarray | Sequence[float]) -> bool:
        """Whether every point of ``x`` (one point or ``(n, d)``) lies in the space."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return bool(x.shape[1] == self.dim and all(p.contains(v) for row in x for p, v in zip(self._parameters, row)))

    def validate(self, x: np.ndarray | Sequence[float]) -> np.ndarray:
        """Return ``x`` as a ``(d,)`` float array, or raise naming the offending parameter."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.shape[0] != self.dim:
            raise ValueError(f"expected {self.dim} parameters ({', '.join(self.names)}), got {x.shape[0]}")
        for p, v in zip(self._parameters, x):
            if not p.contains(v):
                low, high = p.bounds
                raise ValueError(f"parameter {p.name!r} = {v} is outside [{low}, {high}]")
        return x

    def to_dicts(self, x: np.ndarray) -> list[dict[str, Any]]:
        """Points as ``[{name: value}]``, categoricals as their choice."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return [{p.name: p.value(v) for p, v in zip(self._parameters, row)} for row in x]

    def salib_problem(self) -> dict[str, Any]:
        """A SALib problem on the unit hypercube (map designs back with :meth:`from_unit`)."""
        return {"num_vars": self.dim, "names": self.names, "bounds": [[0.0, 1.0]] * self.dim}
