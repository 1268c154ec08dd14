"""How many requests a serving workflow sends, and when: each source layer's rate per served model,
constant or changing at given times.

``hydra.launcher.serving.sources`` maps a layer to what each of its hosts sends:

* a number: requests per second for the model being trained (``model``), all along;
* a schedule ``[[from_s, rate], ...]``: that rate from ``from_s`` seconds after requests begin
  (the first entry at 0, times increasing, rates >= 0, at least one > 0);
* a mapping ``{MODEL: number or schedule}`` for several served models (``model``, the one being
  trained, and those of ``hydra.launcher.serving.models``).

Only the standard library here: the launcher's options are checked with it.

Example::

    >>> demand = parse_sources({"edge": {"model": [[0, 2], [10, 20]], "production": 5}}, ["model", "production"])
    >>> demand["edge", "model"].rate_at(3.0), demand["edge", "model"].rate_at(12.0), demand["edge", "production"].steps
    (2.0, 20.0, ((0.0, 5.0),))
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: the served model being trained: its name in the sources, the placement problem and the plans
TRAINED = "model"
#: what a served model's name may hold (it names replicas, routes, streams and MLflow metrics)
MODEL_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class RateSchedule:
    """Requests per second from ``steps[i][0]`` seconds on (piecewise constant), ``steps[0][0] == 0``."""

    steps: tuple[tuple[float, float], ...]

    def rate_at(self, t: float) -> float:
        rate = self.steps[0][1]
        for start, value in self.steps:
            if start > t:
                break
            rate = value
        return rate

    @property
    def peak(self) -> float:
        return max(rate for _, rate in self.steps)

    def to_list(self) -> list[list[float]]:
        return [[start, rate] for start, rate in self.steps]

    @classmethod
    def parse(cls, value: Any, where: str) -> RateSchedule:
        """A number or a list of ``[from_s, rate]`` pairs; :class:`ValueError` naming ``where`` and the fix."""
        if _number(value):
            if value <= 0:
                raise ValueError(f"{where} is {value!r}; give requests per second > 0")
            return cls(((0.0, float(value)),))
        fix = "give requests per second, or a schedule [[from_s, rate], ...] starting at 0"
        if not isinstance(value, Sequence) or isinstance(value, str) or not value:
            raise ValueError(f"{where} is {value!r}; {fix}")
        steps: list[tuple[float, float]] = []
        for i, step in enumerate(value):
            if isinstance(step, str) or not isinstance(step, Sequence) or len(step) != 2:
                raise ValueError(f"{where}[{i}] is {step!r}; each step is [from_s, rate]")
            start, rate = step
            if not (_number(start) and _number(rate)) or rate < 0 or start < 0:
                raise ValueError(f"{where}[{i}] is {list(step)!r}; give seconds >= 0 and requests per second >= 0")
            if steps and start <= steps[-1][0]:
                raise ValueError(f"{where}[{i}] starts at {start} s, not after the step before; give increasing times")
            steps.append((float(start), float(rate)))
        if steps[0][0] != 0:
            raise ValueError(f"{where}[0] starts at {steps[0][0]} s; the first step starts at 0")
        if not any(rate > 0 for _, rate in steps):
            raise ValueError(f"{where} never sends (every rate is 0); give a rate > 0 somewhere")
        return cls(tuple(steps))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_sources(
    sources: Mapping[str, Any], models: Iterable[str], where: str = "hydra.launcher.serving.sources"
) -> dict[tuple[str, str], RateSchedule]:
    """``(layer, model) -> RateSchedule`` of ``sources`` (see the module); :class:`ValueError`,
    one line naming the key and the fix, for anything else or a model not in ``models``."""
    known = list(models)
    demand: dict[tuple[str, str], RateSchedule] = {}
    for layer, value in sources.items():
        if isinstance(value, Mapping):
            if not value:
                raise ValueError(f"{where}.{layer} is empty; give each served model's requests per second")
            for model, schedule in value.items():
                if model not in known:
                    raise ValueError(
                        f"{where}.{layer}.{model}: no served model of that name; models are {', '.join(known)}"
                    )
                demand[layer, str(model)] = RateSchedule.parse(schedule, f"{where}.{layer}.{model}")
        else:
            demand[layer, TRAINED] = RateSchedule.parse(value, f"{where}.{layer}")
    return demand
