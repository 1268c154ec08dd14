"""Adaptive design of experiments without a DataModule: a sampler drives a plain function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engage.core.samplers.base import FailureAction, Sampler


@dataclass
class ActiveLearningResult:
    """What an :func:`active_learning` loop produced: the points that succeeded (values), their
    outputs and losses (when a ``loss`` function was given), the failed points, and per-round
    records ``{"round", "simulations", "succeeded", "failed", "mean_loss"}``."""

    points: np.ndarray
    outputs: list[Any]
    losses: np.ndarray | None
    failed: np.ndarray
    rounds: list[dict[str, float]] = field(default_factory=list)

    @property
    def simulations(self) -> int:
        """Simulations run, failed ones and re-runs included (what the budget counts)."""
        return int(sum(r["simulations"] for r in self.rounds))


def active_learning(
    simulate: Callable[[Any], Any],
    sampler: Sampler,
    budget: int,
    batch_size: int = 8,
    loss: Callable[[np.ndarray, list[Any]], Sequence[float]] | None = None,
    named: bool = False,
    max_retries: int = 1,
    on_round: Callable[[ActiveLearningResult], None] | None = None,
) -> ActiveLearningResult:
    """Run ``simulate`` on points asked from ``sampler`` in rounds of ``batch_size`` until
    ``budget`` simulations have been run, telling the sampler every result.

    ``simulate(point)`` gets a ``(d,)`` value array (or a ``{name: value}`` dict with ``named``)
    and returns an output (a number, an array, an image). An exception marks the point failed:
    the sampler's :meth:`~engage.core.Sampler.report_failure` decides whether it is re-run (up to
    ``max_retries`` times), replaced by later points, or dropped with its design group.

    ``loss(points, outputs) -> (n,)`` scores new results, typically the error of the current
    surrogate at the new points before it is refitted on them; the scores are told to the
    sampler so a loss-driven sampler concentrates where the surrogate is worst. ``on_round`` is
    called after every round with the result so far (refit a surrogate there).

    Example::

        >>> from engage.core import ParameterSpace
        >>> from engage.sampling import LossDrivenSampler
        >>> space = ParameterSpace.from_config({"x": {"low": -1, "high": 1}})
        >>> result = active_learning(
        ...     lambda p: float(p[0] ** 2), LossDrivenSampler(space, seed=0), budget=20, batch_size=5,
        ...     loss=lambda points, outputs: outputs,  # spend more simulations where the output is large
        ... )
        >>> result.points.shape, len(result.outputs), result.simulations
        ((20, 1), 20, 20)
    """
    if int(budget) < 1 or int(batch_size) < 1 or int(max_retries) < 0:
        raise ValueError("active_learning needs budget >= 1, batch_size >= 1 and max_retries >= 0")
    space = sampler.space
    points: list[np.ndarray] = []
    outputs: list[Any] = []
    losses: list[float] = []
    failed: list[np.ndarray] = []
    result = ActiveLearningResult(np.empty((0, space.dim)), outputs, None, np.empty((0, space.dim)))
    used = 0
    round_index = 0
    while used < budget:
        batch = sampler.ask(min(int(batch_size), budget - used))
        ok_points, ok_outputs, round_failed, runs = [], [], 0, 0
        for point in batch:
            attempts = 0
            while used + runs < budget:
                runs += 1
                try:
                    output = simulate(space.to_dicts(point[None, :])[0] if named else point)
                except Exception:  # a failed simulation is data for the sampler, not the end of the loop
                    action = sampler.report_failure(point[None, :])
                    attempts += 1
                    if action is FailureAction.RESIMULATE and attempts <= max_retries:
                        continue
                    failed.append(point)
                    round_failed += 1
                    break
                ok_points.append(point)
                ok_outputs.append(output)
                break
        used += runs
        if ok_points:
            new_points = np.asarray(ok_points)
            new_losses = None
            if loss is not None:
                new_losses = np.asarray(loss(new_points, ok_outputs), dtype=np.float64).reshape(-1)
                losses.extend(new_losses.tolist())
            sampler.tell(new_points, losses=new_losses, outputs=ok_outputs)
            points.extend(new_points)
            outputs.extend(ok_outputs)
        result.points = np.asarray(points).reshape(-1, space.dim)
        result.losses = np.asarray(losses) if loss is not None else None
        result.failed = np.asarray(failed).reshape(-1, space.dim)
        result.rounds.append(
            {
                "round": round_index,
                "simulations": runs,
                "succeeded": len(ok_points),
                "failed": round_failed,
                "mean_loss": float(np.mean(losses[-len(ok_points) :])) if loss is not None and ok_points else np.nan,
            }
        )
        round_index += 1
        if on_round is not None:
            on_round(result)
        if runs == 0:
            break
    return result
